import numpy as np
import pytest

from hifusion.config import ValConfig
from hifusion.data.splits import Split, make_splits, spatial_block_split, split_2d, with_validation_sections
from hifusion.errors import ConfigError

PATIENTS = {"A1": "A", "B4": "B", "C2": "C", "C3": "C", "C4": "C", "D1": "D"}


def test_3d_trains_on_first_section_of_each_patient():
    splits = make_splits("3d", PATIENTS)
    assert [(s.train, s.test) for s in splits] == [(["C2"], ["C3", "C4"])]


def test_2d_never_splits_a_patient():
    for split in make_splits("2d", PATIENTS, k=3):
        train_p = {PATIENTS[s] for s in split.train}
        test_p = {PATIENTS[s] for s in split.test}
        assert not train_p & test_p
    folds = split_2d(PATIENTS, folds=[["A1"], ["B"], ["C", "D"]])
    assert folds[2].test == ["C2", "C3", "C4", "D1"] and folds[2].train == ["A1", "B4"]
    # every section is tested exactly once
    tested = sorted(s for f in folds for s in f.test)
    assert tested == sorted(PATIENTS)


def test_2d_unknown_fold_item_is_an_error():
    with pytest.raises(ConfigError, match="neither a patient nor a section"):
        split_2d(PATIENTS, folds=[["Z"]])


def test_loso_and_fixed():
    loso = make_splits("loso", PATIENTS)
    assert len(loso) == len(PATIENTS) and all(len(s.test) == 1 and s.test[0] not in s.train for s in loso)
    fixed = make_splits("fixed", PATIENTS, train=["C2"], test=["C3"])
    assert fixed[0].train == ["C2"] and fixed[0].test == ["C3"]
    with pytest.raises(ConfigError, match="not in the cache"):
        make_splits("fixed", PATIENTS, train=["X9"], test=["C3"])


def test_spatial_block_is_contiguous_and_disjoint():
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 1000, size=(200, 2)) * np.array([3.0, 1.0])  # wider than tall: band along x
    train, val = spatial_block_split(coords, 0.2, seed=3)
    assert len(val) == 40 and len(train) == 160 and not set(train) & set(val)
    x = coords[:, 0]
    assert x[val].max() <= x[train].min() or x[val].min() >= x[train].max() or (
        # a middle band: no training spot lies inside the band's x range
        not np.any((x[train] > x[val].min()) & (x[train] < x[val].max()))
    )


def test_validation_sections_never_test_sections():
    split = Split("s", ["A1", "B4"], ["C2"])
    moved = with_validation_sections(split, ValConfig(mode="sections", sections=["B4"]))
    assert moved.train == ["A1"] and moved.val == ["B4"] and moved.test == ["C2"]
    with pytest.raises(ConfigError, match="test sections"):
        with_validation_sections(split, ValConfig(mode="sections", sections=["C2"]))


def test_automatic_validation_sections_per_training_patient() -> None:
    patients = {"A1": "A", "B1": "B", "B2": "B", "B3": "B", "C1": "C"}
    split = Split("f", ["A1", "B1", "B2", "B3"], ["C1"])
    auto = with_validation_sections(split, ValConfig(mode="sections"), patients)
    assert auto.val == ["B3"] and auto.train == ["A1", "B1", "B2"] and auto.test == ["C1"]
    lone = with_validation_sections(Split("g", ["A1", "B1"], ["C1"]), ValConfig(mode="sections"), patients)
    assert lone.val == [] and lone.train == ["A1", "B1"]  # no patient with several: spatial bands instead

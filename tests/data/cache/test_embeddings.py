"""The embedding cache's file format: one file per key, the key checked on read, written atomically."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from hifusion import constants as C
from hifusion.data.cache.embeddings import embeddings_path, key_hash, read_embeddings, write_embeddings

KEY = {"section": "P1", "encoder": {"encoder": "resnet10", "weights": "sha256:ab"}, "view": 0,
       "meta": {"patch": {"spot_px": 16, "pixel_size": 5.0}, "normalisation": {"mode": "patch"}}}


def _with(path: tuple[str, ...], value: object) -> dict:
    """KEY with one nested entry replaced."""
    import copy

    key = copy.deepcopy(KEY)
    node = key
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return key


def test_key_covers_weights_scale_view_and_section(tmp_path: Path) -> None:
    variants = [_with(("encoder", "weights"), "sha256:cd"), _with(("meta", "patch", "pixel_size"), 2.5),
                _with(("meta", "patch", "spot_px"), 32), _with(("view", ), 3), _with(("section", ), "P2"),
                _with(("meta", "normalisation"), {"mode": "dataset", "mean": [0.5] * 3, "std": [0.2] * 3})]
    hashes = {key_hash(k) for k in [KEY, *variants]}
    assert len(hashes) == len(variants) + 1
    assert key_hash(dict(reversed(list(KEY.items())))) == key_hash(KEY)  # order of the mapping does not matter
    path = embeddings_path(tmp_path, "P1", KEY)
    assert path.parent == tmp_path / C.EMBEDDINGS_DIR and path.name == f"P1.{key_hash(KEY)}{C.EMBEDDINGS_SUFFIX}"


def test_round_trip_is_exact_and_validated(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    path = embeddings_path(tmp_path, "P1", KEY)
    assert read_embeddings(path, KEY, 7) is None  # nothing yet
    assert write_embeddings(path, KEY, x)
    assert np.array_equal(read_embeddings(path, KEY, 7), x)
    assert read_embeddings(path, KEY, 8) is None  # another spot count: the section changed
    other = _with(("view",), 1)
    assert read_embeddings(path, other, 7) is None  # a file made under another key is never used
    path.write_bytes(b"not hdf5 at all")  # a corrupt file is reported and recomputed, not an error
    assert read_embeddings(path, KEY, 7) is None
    with h5py.File(path, "w") as f:  # the right key but no embeddings in it
        f.attrs[C.H5_ATTR_EMB_KEY] = "{}"
    assert read_embeddings(path, KEY, 7) is None


def test_a_failed_write_leaves_no_file(tmp_path: Path) -> None:
    """The key is written after the data: a key that cannot be stored fails mid-file, and nothing is left behind."""
    import pytest

    x = np.zeros((3, 4), np.float32)
    path = embeddings_path(tmp_path, "P1", KEY)
    with pytest.raises(ValueError, match="JSON"):
        write_embeddings(path, {**KEY, "bad": object()}, x)
    assert not path.exists() and list(path.parent.iterdir()) == []
    with pytest.raises(ValueError, match="float32"):
        write_embeddings(path, KEY, x.astype(np.float64))
    assert list(path.parent.iterdir()) == []

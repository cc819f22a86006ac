"""Frozen-encoder models trained by gradient (ST-Net and BLEEP with `freeze_encoder`) train and predict from the
embedding cache: embeddings computed once per section and view, reused by a second run, the same numbers without
the cache, and a checkpoint that predicts alone on patches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hifusion import constants as C
from hifusion.config import parse_config
from hifusion.evaluate.protocols import run_benchmark
from tests.synthetic import cached_runs, tiny_config

MODELS = [
    {"name": "stnet", "options": {"encoder": "resnet10", "freeze_encoder": True}},
    {"name": "bleep", "options": {"encoder": "resnet10", "freeze_encoder": True, "proj_dim": 8, "k": 3}},
    {"name": "linear_probe", "options": {"encoder": "resnet10", "n_components": 8}},
]


def _bench(root: Path, cache: Path, out: Path, *, embedding_cache: bool = True) -> dict[str, tuple[dict, dict]]:
    """Every model of `MODELS` on one tiny split (same random encoder weights: seed 0 before each model is built),
    with D4 test-time views and a plain row: predictions and `done.json` per model."""
    raw = tiny_config(root, cache, out.parent)
    raw["data"]["embedding_cache"] = embedding_cache
    raw["models"] = MODELS
    raw["adapt"] = {"tta": True}
    raw["adapt_variants"] = {"plain": {}}
    run_benchmark(parse_config(raw), out, figures=False)
    res = {}
    for m in ("stnet", "bleep", "linear_probe"):
        mdir = out / "runs" / "fixed" / m
        with np.load(mdir / C.PREDICTIONS_NPZ) as z:
            res[m] = ({k: z[k] for k in z.files}, json.loads((mdir / C.DONE_JSON).read_text()))
    return res


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return cached_runs(tmp_path_factory.mktemp("frozen"), _bench)


def test_training_reads_stored_embeddings_and_a_second_run_encodes_nothing(runs: dict) -> None:
    first, second = runs["first"], runs["second"]
    for m in ("stnet", "bleep"):
        # training section P1 under the 8 D4 views (train.augment), test sections P2 and Q1 under 8 (adapt.tta)
        assert second[m][1]["embeddings"] == {"cache": True, "encoded": 0, "read": 24}, m
        assert first[m][1]["epochs_run"] == 2
    # one encoder, one set of files: ST-Net made them, BLEEP and the probe (the same random weights) read them
    assert first["stnet"][1]["embeddings"]["encoded"] == 24
    assert first["bleep"][1]["embeddings"] == {"cache": True, "encoded": 0, "read": 24}
    assert len(runs["files"]) == 24


def test_predictions_are_identical_with_and_without_the_cache(runs: dict) -> None:
    for m in ("stnet", "bleep"):
        a, b, c = (runs[k][m][0] for k in ("first", "second", "off"))
        assert runs["off"][m][1]["embeddings"]["cache"] is False
        assert set(a) == set(c) == {"P2", "Q1", "P2@plain", "Q1@plain"}
        for k in a:
            assert np.isfinite(a[k]).all()
            assert np.array_equal(a[k], b[k]) and np.array_equal(a[k], c[k]), (m, k)
    assert not np.array_equal(runs["first"]["stnet"][0]["P2"], runs["first"]["stnet"][0]["P2@plain"])


@pytest.mark.parametrize("name", ["stnet", "bleep"])
def test_checkpoint_predicts_alone_on_patches(runs: dict, name: str) -> None:
    """The trained checkpoint, run on patches through the ordinary inference path (the encoder live), gives the
    predictions the benchmark made from stored embeddings; its encoder kept its initial weights."""
    from hifusion.data.cache.reader import load_cache
    from hifusion.inference import Predictor, predict_rows
    from hifusion.models.loading import load_checkpoint
    from hifusion.recipe import Recipe

    mdir = runs["base"] / "second" / "runs" / "fixed" / name
    model, meta = load_checkpoint(mdir / C.CKPT_DIR / C.CKPT_LAST)
    probe, _ = load_checkpoint(runs["base"] / "second" / "runs" / "fixed" / "linear_probe" / C.CKPT_DIR / C.CKPT_LAST)
    for k, v in probe.encoder.state_dict().items():  # all three were built from seed 0
        assert torch.equal(model.encoder.state_dict()[k], v), k
    assert model.embedding_identity() == probe.embedding_identity()
    _, patches = load_cache(runs["cache"], "P2")
    again = predict_rows(Predictor(model, meta), patches, np.arange(len(patches)), meta.patch,
                         recipe=Recipe(tta=True))
    np.testing.assert_allclose(again, runs["second"][name][0]["P2"], atol=1e-4)


def test_a_trained_encoder_has_no_embeddings_to_cache() -> None:
    from hifusion.models import create_model

    for name in ("stnet", "bleep"):
        model = create_model(name, n_genes=3, encoder="resnet10")
        assert not model.trains_on_embeddings and model.adapts_batchnorm and model.embedding_identity() is None
        frozen = create_model(name, n_genes=3, encoder="resnet10", freeze_encoder=True)
        assert frozen.trains_on_embeddings and not frozen.adapts_batchnorm
        assert not any(p.requires_grad for p in frozen.encoder.parameters())

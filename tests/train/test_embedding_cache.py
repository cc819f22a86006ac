"""The embedding cache on the frozen-encoder path (linear probe): reused across runs, identical predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hifusion import constants as C
from hifusion.checkpoint_meta import CheckpointMeta
from hifusion.config import parse_config
from hifusion.evaluate.protocols import run_benchmark
from hifusion.geometry import PatchGeometry
from tests.synthetic import cached_runs, tiny_config

PROBE = {"encoder": "resnet10", "n_components": 8}


def _bench(root: Path, cache: Path, out: Path, *, embedding_cache: bool = True,
           options: dict | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """A tiny benchmark of the linear probe with D4 test-time views (and a plain row); its predictions and info."""
    raw = tiny_config(root, cache, out.parent)
    raw["data"]["embedding_cache"] = embedding_cache
    raw["models"] = [{"name": "linear_probe", "options": options or PROBE}]
    raw["adapt"] = {"tta": True}
    raw["adapt_variants"] = {"plain": {}}
    run_benchmark(parse_config(raw), out, figures=False)
    mdir = out / "runs" / "fixed" / "linear_probe"
    with np.load(mdir / C.PREDICTIONS_NPZ) as z:
        preds = {k: z[k] for k in z.files}
    return preds, json.loads((mdir / C.DONE_JSON).read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return cached_runs(tmp_path_factory.mktemp("emb"), _bench)


def test_second_run_reads_every_embedding_and_runs_no_encoder(runs: dict) -> None:
    # training section P1: the plain view; test sections P2, Q1: all 8 D4 views (adapt.tta)
    assert len(runs["files"]) == 1 + 8 + 8
    assert all(not n.startswith(".") for n in runs["files"])  # no temporary file left behind
    assert runs["first"][1]["embeddings"] == {"cache": True, "encoded": 17, "read": 0}
    assert runs["second"][1]["embeddings"] == {"cache": True, "encoded": 0, "read": 17}
    assert runs["files_after"] == runs["files"]  # nothing rewritten by the second run or by the uncached one


def test_predictions_are_identical_with_and_without_the_cache(runs: dict) -> None:
    first, second, off = (runs[k][0] for k in ("first", "second", "off"))
    assert runs["off"][1]["embeddings"] == {"cache": False, "encoded": 17, "read": 0}
    assert set(first) == set(off) and len(first) == 4  # P2, Q1 x (tta row, plain row)
    for k in first:
        assert np.array_equal(first[k], second[k]) and np.array_equal(first[k], off[k]), k
    tta, plain = first["P2"], first["P2@plain"]
    assert not np.array_equal(tta, plain)  # the cached D4 views are used, not the plain view eight times


def test_key_follows_weights_file_scale_and_view_not_the_probe(tmp_path: Path) -> None:
    """Local weights: the key holds the file's SHA-256 (other weights in the same place are another key); random
    weights: the tensors' hash. The patch scale and the view are in the key; the probe's own options are not."""
    from hifusion.data.cache.embeddings import key_hash
    from hifusion.inference import Predictor, embedding_base, embedding_key
    from hifusion.models import create_model

    class Patches:  # what a key reads of a patch file: its path and length
        path, n = tmp_path / "P1.patches.h5", 5

        def __len__(self) -> int:
            return self.n

    Patches.path.write_bytes(b"x")
    meta = CheckpointMeta("linear_probe", {}, ["a"], PatchGeometry(5.0, 16, 32), {"mode": "patch"},
                          stain={"augment": {}, "normalise": "none", "reference": None}, version="0")

    def key(model: torch.nn.Module, view: int = 0, **patch: float) -> str:
        m = meta.with_changes(patch=PatchGeometry.from_dict({**meta.patch.to_dict(), **patch}))
        return key_hash(embedding_key(embedding_base(Predictor(model, m)), "P1", Patches(), view, None))

    weights = tmp_path / "enc.pth"
    keys = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        torch.save(create_model("linear_probe", n_genes=2, encoder="resnet10").encoder.trunk.state_dict(), weights)
        keys.append(key(create_model("linear_probe", n_genes=2, encoder="resnet10", encoder_weights=weights)))
    probe = create_model("linear_probe", n_genes=2, encoder="resnet10", encoder_weights=weights)
    assert keys[1] == key(probe) != keys[0]
    other_probe = create_model("linear_probe", n_genes=7, encoder="resnet10", encoder_weights=weights,
                               n_components=3, alpha=1.0)
    assert key(other_probe) == key(probe)  # every probe on this encoder shares the embeddings
    assert len({key(probe), key(probe, view=1), key(probe, pixel_size=2.5), key(probe, spot_px=32)}) == 4
    torch.manual_seed(0)
    random_a = create_model("linear_probe", n_genes=2, encoder="resnet10")
    torch.manual_seed(0)
    random_b = create_model("linear_probe", n_genes=2, encoder="resnet10")
    torch.manual_seed(1)
    random_c = create_model("linear_probe", n_genes=2, encoder="resnet10")
    assert key(random_a) == key(random_b) != key(random_c)
    assert embedding_base(Predictor(random_a, meta))["encoder"]["weights"].startswith("random-init:")


def test_checkpoint_of_a_cached_run_predicts_alone(runs: dict) -> None:
    """The checkpoint (plain forward on patches) agrees with the benchmark's cached-path predictions."""
    from hifusion.data.cache.reader import load_cache
    from hifusion.inference import Predictor, predict_rows
    from hifusion.models.loading import load_checkpoint
    from hifusion.recipe import Recipe

    ckpt = runs["base"] / "second" / "runs" / "fixed" / "linear_probe" / C.CKPT_DIR / C.CKPT_LAST
    model, meta = load_checkpoint(ckpt)
    _, patches = load_cache(runs["cache"], "P2")
    again = predict_rows(Predictor(model, meta), patches, np.arange(len(patches)), meta.patch,
                         recipe=Recipe(tta=True))
    np.testing.assert_allclose(again, runs["second"][0]["P2"], atol=1e-4)

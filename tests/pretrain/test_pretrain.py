"""`hifusion pretrain`: a loadable encoder file with its metadata, loaded by every image model's weights option;
extra slides tiled on tissue; clear errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hifusion import constants as C
from tests.pretrain.conftest import pretrain_config
from tests.robustness.helpers import run_inprocess


@pytest.fixture(scope="module")
def two_encoders(pre_dataset: Path, pre_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet18 and resnet10 pretrained for one epoch on section P1 (one run, two encoder files)."""
    from hifusion.config import load_config
    from hifusion.pretrain.command import pretrain_command

    tmp = tmp_path_factory.mktemp("pretrain_two")
    cfg = load_config(pretrain_config(tmp / "c.yaml", pre_dataset, pre_cache, epochs=1))
    pcfg = cfg.pretrain.model_copy(update={"encoders": ["resnet18", "resnet10"]})
    pretrain_command(pre_cache, ["P1"], pcfg, tmp / "out", progress=False)
    return tmp / "out"


def test_cli_writes_weights_metadata_and_log(pre_dataset: Path, pre_cache: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    from hifusion.pretrain.loop import read_pretrain_meta

    cfg = pretrain_config(tmp_path / "c.yaml", pre_dataset, pre_cache)
    out = tmp_path / "pre"
    res = run_inprocess(["pretrain", str(cfg), "--sections", "P1,Q1", "--epochs", "1", "--batch-size", "18",
                         "--out", str(out)],
                        monkeypatch, capsys)
    assert res.code == 0, res.stderr
    path = out / C.PRETRAIN_WEIGHTS
    assert str(path) in res.stdout
    assert "[hifusion] pretrain test_resnet (byol): epoch 1/1, loss" in res.stderr  # one plain line per epoch
    meta = read_pretrain_meta(path)
    assert meta["sources"] == ["P1", "Q1"] and meta["tiles_per_source"] == {"P1": 36, "Q1": 36}
    assert meta["method"] == "byol" and meta["encoder"] == "test_resnet" and meta["epochs"] == 1
    assert meta["mpp"] == pytest.approx(5.0) and meta["tile_px"] == 32 and meta["view_px"] == 16
    assert meta["steps"] == 72 // 18 and meta["seed"] == 0 and meta["package_version"]
    log = (out / C.PRETRAIN_LOG).read_text().splitlines()
    assert log[0].startswith("epoch,steps,loss") and len(log) == 2
    # an existing results folder needs --resume; a finished run resumed is reused as it is
    args = ["pretrain", str(cfg), "--sections", "P1,Q1", "--epochs", "1", "--batch-size", "18", "--out", str(out)]
    again = run_inprocess(args, monkeypatch, capsys)
    assert again.code == 2 and "--resume" in again.stderr
    before = path.read_bytes()
    resumed = run_inprocess([*args, "--resume"], monkeypatch, capsys)
    assert resumed.code == 0 and path.read_bytes() == before


def _same_weights(trunk: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    saved = load_file(str(path))
    own = trunk.state_dict()
    assert set(saved) == set(own)
    for k, v in saved.items():
        assert torch.equal(own[k], v), k


def test_weights_load_into_every_image_model(two_encoders: Path) -> None:
    from hifusion.models.registry import create_model

    r18 = two_encoders / "resnet18" / C.PRETRAIN_WEIGHTS
    r10 = two_encoders / "resnet10" / C.PRETRAIN_WEIGHTS
    hif = create_model("hifusion", n_genes=4, levels=[1, 4], tokens=1, heads=2, embed_dim=32,
                       spot_encoder_weights=str(r18), region_encoder_weights=str(r10))
    _same_weights(hif.spot_encoder.trunk, r18)
    _same_weights(hif.region_encoder.trunk, r10)
    stnet = create_model("stnet", n_genes=4, encoder="resnet18", encoder_weights=str(r18))
    _same_weights(stnet.encoder.trunk, r18)
    probe = create_model("linear_probe", n_genes=4, encoder="resnet18", encoder_weights=str(r18), n_components=2)
    _same_weights(probe.encoder.trunk, r18)
    with torch.no_grad():  # and the loaded models run
        out = hif(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 32, 32))
    assert out.pred.shape == (2, 4)


def _slide(path: Path) -> Path:
    """A 'slide': white glass with a textured pink-purple tissue block (a real image file on disk)."""
    rng = np.random.default_rng(0)
    img = np.full((200, 240, 3), 245, np.uint8)
    tissue = np.stack([rng.integers(150, 220, (120, 160)), rng.integers(60, 130, (120, 160)),
                       rng.integers(140, 200, (120, 160))], axis=-1)
    img[40:160, 40:200] = tissue.astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


def test_slides_are_tiled_on_tissue(tmp_path: Path) -> None:
    from hifusion.config import PretrainConfig, PretrainSlide
    from hifusion.pretrain.tiles import gather_tiles

    slide = _slide(tmp_path / "s.png")
    pcfg = PretrainConfig(slides=[PretrainSlide(path=slide, mpp=1.0)])
    tiles, view_px = gather_tiles(None, None, pcfg, tile_mpp=2.0, tile_px=20)  # 40 um tiles on 160 x 120 um
    assert view_px == 10  # default: half the tile side (a spot field of view inside a region)
    n = len(tiles)
    assert 6 <= n <= 12  # about 4 x 3 tiles fit the tissue block; none on the glass
    batch = tiles.batch(np.arange(n))
    assert batch.shape == (n, 20, 20, 3)
    assert (batch.reshape(n, -1, 3).mean(axis=1)[:, 1] < 140).all()  # every tile is mostly the purple tissue


@pytest.mark.parametrize("case", ["nothing", "unreadable", "encoder", "no_pretrain_section", "tile_mpp"])
def test_bad_input_is_one_clear_error(case: str, pre_dataset: Path, pre_cache: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    cfg = pretrain_config(tmp_path / "c.yaml", pre_dataset, pre_cache)
    if case == "no_pretrain_section":
        data = json.loads(json.dumps(__import__("yaml").safe_load(cfg.read_text())))
        data.pop("pretrain")
        data["model"]["options"]["spot_encoder_weights"] = C.PRETRAINED
        cfg.write_text(__import__("yaml").safe_dump(data))
    args = {"nothing": ["pretrain", "--out", str(out)],
            "unreadable": ["pretrain", "--slides", str(bad), "--tile-mpp", "1", "--out", str(out)],
            "encoder": ["pretrain", str(cfg), "--encoder", "resnet_nope", "--out", str(out)],
            "no_pretrain_section": ["benchmark", str(cfg), "--out", str(out)],
            "tile_mpp": ["pretrain", "--slides", str(bad), "--out", str(out)]}[case]
    needle = {"nothing": "nothing to pretrain on", "unreadable": str(bad), "encoder": "unknown encoder 'resnet_nope'",
              "no_pretrain_section": "no pretrain section", "tile_mpp": "--tile-mpp"}[case]
    res = run_inprocess(args, monkeypatch, capsys)
    assert res.code == 2, res.stderr
    assert res.stderr.startswith("error: ") and needle in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (out / C.PRETRAIN_WEIGHTS).exists()


def test_time_budget_stops_and_writes_weights(pre_dataset: Path, pre_cache: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A `minutes` budget ends once one more step would overrun it by more than half a step, and writes the encoder.

    A fake clock (one second per reading) makes the first step leave 2 s elapsed with steps of 2 s against a 2.5 s
    budget: the inner loop stops there, and the outer loop once spun forever on that (no step, state written, again).
    """
    import threading

    from hifusion.config import load_config
    from hifusion.pretrain import loop
    from hifusion.pretrain.command import pretrain_command

    cfg = load_config(pretrain_config(tmp_path / "c.yaml", pre_dataset, pre_cache, epochs=None, minutes=2.5 / 60))
    ticks = iter(range(10**9))
    monkeypatch.setattr(loop.time, "perf_counter", lambda: float(next(ticks)))
    done = threading.Event()
    worker = threading.Thread(target=lambda: (pretrain_command(pre_cache, ["P1"], cfg.pretrain, tmp_path / "out",
                                                               progress=False), done.set()), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert done.is_set(), "a time-budgeted pretraining did not stop"
    assert loop.read_pretrain_meta(tmp_path / "out" / C.PRETRAIN_WEIGHTS)["steps"] >= 1

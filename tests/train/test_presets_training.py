"""End to end with encoder presets: a benchmark trains tiny models whose encoders are presets (weights written in the
published layout), the checkpoint carries each preset input's normalisation and geometry, and the prediction path
(`predict.engine.load_predictor`, rebuilt from the checkpoint alone) reproduces the benchmark's predictions."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from hifusion import constants as C
from hifusion.config import parse_config
from hifusion.evaluate.protocols import run_benchmark
from hifusion.models import create_encoder
from hifusion.models.presets import IMAGENET_MEAN, EncoderPreset, get_preset, register_preset
from tests.synthetic import tiny_config, write_dataset

# a tiny ViT "published" at 2.5 um/px (the synthetic cache holds 5 um/px): exercises crop, resize and region views
TINY = register_preset(EncoderPreset(
    name="test-tiny-vit", title="test only", arch="vit_tiny_patch16_224",
    options={"num_classes": 0, "global_pool": "", "dynamic_img_size": True, "img_size": 16, "patch_size": 8,
             "depth": 1}, feature_dim=192, embedding="cls", input_px=16, mpp=2.5, mean=(0.6, 0.5, 0.7),
    std=(0.2, 0.2, 0.2), weight_file="pytorch_model.bin", layout="timm", params_m=0.6, patch_size=8))


def _ciga_file(folder: Path) -> Path:
    """Random ResNet-18 weights in the layout Ciga et al. publish (Lightning checkpoint, `model.resnet.` keys)."""
    torch.manual_seed(0)
    sd = {f"model.resnet.{k}": v for k, v in create_encoder("resnet18").trunk.state_dict().items()}
    path = folder / get_preset("ciga-resnet18").weight_file
    torch.save({"state_dict": {**sd, "model.resnet.fc.0.weight": torch.zeros(4, 512)}}, path)
    return path


def test_preset_models_train_and_predict_from_their_checkpoint(tmp_path: Path) -> None:
    from hifusion.data.cache.reader import load_cache
    from hifusion.inference import predict_rows
    from hifusion.predict.engine import load_predictor

    root, cache = write_dataset(tmp_path / "raw"), tmp_path / "cache"
    weights = _ciga_file(tmp_path)
    cfg = tiny_config(root, cache, tmp_path, epochs=1)
    cfg["models"] = [
        {"name": "stnet", "options": {"encoder": "ciga-resnet18", "encoder_weights": str(weights)}},
        {"name": "hifusion", "options": {**cfg["model"]["options"], "spot_encoder": TINY.name,
                                         "region_encoder": TINY.name}},
    ]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = run_benchmark(parse_config(cfg), tmp_path / "run", figures=False).out
    msgs = [str(w.message) for w in seen if "expects" in str(w.message)]
    assert msgs == ["encoder 'test-tiny-vit' expects 2.5 um/px, the cache holds 5 um/px: patches are resized 2x on "
                    "the device"]  # once for the run's one rescaled preset, whose two inputs share it
    weights.unlink()  # the checkpoint holds every weight: prediction needs no encoder file
    _, patches = load_cache(cache, "P2")
    for name in ("stnet", "hifusion"):
        ckpt = out / "runs" / "fixed" / name / C.CKPT_DIR / C.CKPT_LAST
        if name == "hifusion":  # predict warns about the rescaling as training did
            with pytest.warns(UserWarning, match="expects 2.5 um/px, the cache holds 5 um/px"):
                module, meta = load_predictor(ckpt, device="cpu")
        else:
            module, meta = load_predictor(ckpt, device="cpu")
        again = predict_rows(module, patches, np.arange(36), meta.patch)
        with np.load(out / "runs" / "fixed" / name / C.PREDICTIONS_NPZ) as z:
            np.testing.assert_allclose(again, z["P2"], atol=1e-5)
        views = meta.views
        if name == "stnet":
            assert views == {"spot": {"encoder": "ciga-resnet18", "mpp": None, "mean": list(IMAGENET_MEAN),
                                      "std": [0.229, 0.224, 0.225], "source": "spot", "crop_px": 16, "px": 16}}
        else:  # spot: centre 40 um (8 px) at 16 px; region: its 160 um (32 px) at 2.5 um/px = 64 px
            assert {k: (v["source"], v["crop_px"], v["px"]) for k, v in views.items()} == {
                "spot": ("spot", 8, 16), "region": ("region", 32, 64)}
            assert views["spot"]["mean"] == [0.6, 0.5, 0.7]


@pytest.mark.parametrize("model", ["stnet", "linear_probe", "bleep"])
def test_pooling_models_use_the_preset_embedding(model: str) -> None:
    """Models that pool to one vector take the preset's embedding (class token for the tiny ViT)."""
    from hifusion.models import create_model

    m = create_model(model, n_genes=3, encoder=TINY.name)
    assert m.encoder.embedding == "cls" and m.encoder.embed_dim == 192

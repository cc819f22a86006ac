"""Encoder presets: every published layout loads (full size checked on the meta device, a reduced-depth round trip
through a real file), wrong files are named errors, embeddings follow the published rule, inputs follow the preset."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hifusion.errors import CheckpointError, ConfigError
from hifusion.geometry import PatchGeometry
from hifusion.models import create_encoder
from hifusion.models.encoders import Encoder
from hifusion.models.presets import get_preset, input_view, list_presets

BUILDABLE = [p.name for p in list_presets() if not p.package]
VITS = [p.name for p in list_presets() if p.patch_size and not p.package]


def _publish_hf_dinov2(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ViT keys -> the names a transformers `Dinov2Model` saves (written here from transformers' module names,
    independently of the preset's key map, so the test checks the map rather than restating it)."""
    out = {"embeddings.cls_token": sd["cls_token"], "embeddings.position_embeddings": sd["pos_embed"],
           "embeddings.mask_token": torch.zeros(1, sd["cls_token"].shape[-1]),
           "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
           "layernorm.weight": sd["norm.weight"], "layernorm.bias": sd["norm.bias"]}
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for leaf in ("weight", "bias"):
            q, k, v = sd[f"{b}attn.qkv.{leaf}"].chunk(3, dim=0)
            out |= {f"{h}attention.attention.query.{leaf}": q, f"{h}attention.attention.key.{leaf}": k,
                    f"{h}attention.attention.value.{leaf}": v,
                    f"{h}attention.output.dense.{leaf}": sd[f"{b}attn.proj.{leaf}"]}
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{h}{n}.{leaf}"] = sd[f"{b}{n}.{leaf}"]
        out[f"{h}layer_scale1.lambda1"] = sd[f"{b}ls1.gamma"]
        out[f"{h}layer_scale2.lambda1"] = sd[f"{b}ls2.gamma"]
    return out


def published(name: str, sd: dict[str, torch.Tensor]) -> dict:
    """A trunk's state dict laid out as the published file of preset `name` (what the user downloads)."""
    if name == "phikon-v2":
        return _publish_hf_dinov2(sd)
    if name == "ciga-resnet18":  # Lightning checkpoint, SimCLR projection head under fc
        head = {"model.resnet.fc.0.weight": torch.zeros(512, 512), "model.resnet.fc.2.weight": torch.zeros(128, 512)}
        return {"state_dict": {**{f"model.resnet.{k}": v for k, v in sd.items()}, **head}, "epoch": 3}
    if name == "resnet50-imagenet":  # the ImageNet classifier comes with it
        return {**sd, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    return dict(sd)  # timm layout as published


def write_published(name: str, sd: dict[str, torch.Tensor], folder: Path) -> Path:
    """The published file of preset `name` holding `sd`, under its published file name and format."""
    obj = published(name, sd)
    path = folder / get_preset(name).weight_file
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)
    return path


def _flat(obj: dict) -> dict[str, torch.Tensor]:
    return obj.get("state_dict", obj)


@pytest.mark.parametrize("name", BUILDABLE)
def test_full_size_published_layout_maps_onto_the_trunk(name: str) -> None:
    """Full-size architecture on the meta device (no memory): the published key layout maps onto every key and shape,
    the parameter count is the table's, and the embedding has the published width."""
    preset = get_preset(name)
    with torch.device("meta"):
        enc = create_encoder(name)
    own = enc.trunk.state_dict()
    mapped = _flat(published(name, own))
    mapped = preset.key_map(mapped) if preset.key_map else mapped
    assert sorted(mapped) == sorted(own)
    assert all(tuple(mapped[k].shape) == tuple(v.shape) for k, v in own.items())
    n = sum(p.numel() for p in enc.trunk.parameters()) / 1e6
    assert abs(n - preset.params_m) / preset.params_m < 0.02, n
    assert enc.embed_dim == preset.feature_dim


@pytest.mark.parametrize("name", BUILDABLE)
def test_published_file_round_trip_at_reduced_depth(name: str, tmp_path: Path) -> None:
    """Random values written under the published names load with no missing or unexpected keys (ViTs at depth 1:
    the full model's names and per-block shapes, whose every block the meta-device test checks), and give embeddings
    of the published width (at two patches a side, which `dynamic_img_size` allows)."""
    small = {"depth": 1} if name in VITS else {}
    src = create_encoder(name, **small)
    torch.manual_seed(0)
    sd = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in src.trunk.state_dict().items()}
    path = write_published(name, sd, tmp_path)
    enc = create_encoder(name, weights=path, **small).eval()
    got = enc.trunk.state_dict()
    assert all(torch.equal(got[k], v) for k, v in sd.items())
    side = 2 * get_preset(name).patch_size if name in VITS else 64
    assert enc.embed(torch.randn(2, 3, side, side)).shape == (2, get_preset(name).feature_dim)


def test_wrong_file_names_the_preset_and_the_first_mismatched_keys(tmp_path: Path) -> None:
    wrong = write_published("ciga-resnet18", create_encoder("resnet18").trunk.state_dict(), tmp_path)
    with pytest.raises(CheckpointError, match=r"preset 'uni' .*missing key\(s\) e\.g\. blocks\.0\..*unexpected"):
        create_encoder("uni", weights=wrong, depth=1)
    sd = create_encoder("uni", depth=1).trunk.state_dict()
    sd["pos_embed"] = torch.zeros(1, 10, 1024)
    torch.save(sd, tmp_path / "uni.bin")
    with pytest.raises(CheckpointError, match=r"preset 'uni'.*1 shape mismatch.*pos_embed \(1, 10, 1024\)"):
        create_encoder("uni", weights=tmp_path / "uni.bin", depth=1)


def test_missing_or_unreachable_weights_say_which_file_to_put_where(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CheckpointError, match="preset 'uni' needs pytorch_model.bin from MahmoodLab/UNI.*gated.*"
                                              "pass encoder_weights: /path/to/pytorch_model.bin"):
        create_encoder("uni", weights=tmp_path / "nope.bin", depth=1)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # this machine has no hub access
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(CheckpointError, match="hub download failed.*preset 'phikon-v2' needs model.safetensors "
                                              "from owkin/phikon-v2"):
        create_encoder("phikon-v2", weights="hub", depth=1)
    with pytest.raises(ConfigError, match="'hub' is for encoder presets"):
        create_encoder("resnet18", weights="hub")
    with pytest.raises(ConfigError, match="conch.*github.com/Mahmoodlab/CONCH"):
        create_encoder("conch")


def test_embeddings_follow_the_published_rule() -> None:
    x = torch.randn(2, 3, 224, 224)
    uni = create_encoder("uni", depth=1).eval()
    tokens = uni.trunk.forward_features(x)
    assert torch.equal(uni.embed(x), tokens[:, 0])  # class token after the final norm
    v2 = create_encoder("virchow2", depth=1).eval()
    tokens = v2.trunk.forward_features(x)
    assert v2.num_prefix_tokens == 5 and tokens.shape[1] == 5 + 256
    assert torch.equal(v2.embed(x), torch.cat([tokens[:, 0], tokens[:, 5:].mean(1)], dim=-1))
    assert v2(x).shape == (2, 1280, 16, 16)  # the token grid stays a feature map (HiFusion)
    cnn = create_encoder("resnet18").eval()  # not a preset: mean pooling, as before presets existed
    assert cnn.embedding == "mean" and torch.equal(cnn.embed(x[:, :, :64, :64]), cnn(x[:, :, :64, :64]).mean((2, 3)))
    assert isinstance(cnn, Encoder) and cnn.identity == "resnet18" and uni.identity == "uni"


def test_input_views_follow_the_preset_scale() -> None:
    """At the default cache scale (224 px spot, 448 px region, 0.69 um/px) UNI sees the centre 112 um of the spot
    at 224 px; CONCH's 224 um is wider than the spot, so it is cut from the region; a region view keeps the region's
    field of view at the preset's um/px, in whole ViT patches; an encoder of unknown scale keeps the patch."""
    geo = PatchGeometry(0.69, 224, 448)
    uni = get_preset("uni")
    assert input_view(uni, "spot", geo) | {"mean": 0, "std": 0} == {
        "encoder": "uni", "mpp": 0.5, "mean": 0, "std": 0, "source": "spot", "crop_px": 162, "px": 224}
    region = input_view(uni, "region", geo)
    assert (region["source"], region["px"], region["crop_px"]) == ("region", 608, 441)  # 608 = 38 x 16 px
    conch = input_view(get_preset("conch"), "spot", geo)
    assert (conch["source"], conch["crop_px"], conch["px"]) == ("region", 325, 448)
    ciga = input_view(get_preset("ciga-resnet18"), "spot", geo)
    assert (ciga["source"], ciga["crop_px"], ciga["px"], ciga["mpp"]) == ("spot", 224, 224, None)
    assert input_view(get_preset("h-optimus-0"), "spot", geo)["mean"] == [0.707223, 0.578729, 0.703617]


def test_cli_lists_every_preset() -> None:
    from typer.testing import CliRunner

    from hifusion.cli import app

    res = CliRunner().invoke(app, ["encoders"])
    assert res.exit_code == 0, res.output
    for p in list_presets():
        assert p.name in res.output and p.arch in res.output
    assert "MahmoodLab/UNI" in res.output and "tenpercent_resnet18.ckpt" in res.output and "cls+mean" in res.output

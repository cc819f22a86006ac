from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hifusion.errors import CheckpointError, ConfigError
from hifusion.models import create_encoder


@pytest.mark.parametrize(("name", "channels", "kwargs"), [("resnet10", 512, {}), ("resnet18", 512, {})])
def test_resnet_encoders_give_maps(name: str, channels: int, kwargs: dict) -> None:
    enc = create_encoder(name, **kwargs)
    assert enc.out_channels == channels
    assert enc(torch.randn(2, 3, 64, 64)).shape == (2, channels, 2, 2)


def test_resnet10_has_one_block_per_stage() -> None:
    enc = create_encoder("resnet10")
    assert all(len(getattr(enc.trunk, f"layer{i}")) == 1 for i in range(1, 5))


def test_timm_cnn_by_name() -> None:
    enc = create_encoder("densenet121")
    assert enc.out_channels == 1024
    assert enc(torch.randn(1, 3, 64, 64)).shape == (1, 1024, 2, 2)


def test_tiny_vit_patch_grid_and_other_sizes() -> None:
    enc = create_encoder("vit_tiny_patch16_224", img_size=32)
    assert enc.out_channels == 192
    assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 192, 2, 2)
    assert enc(torch.randn(2, 3, 64, 48)).shape == (2, 192, 4, 3)  # dynamic_img_size: not the built size


def test_vit_patch_tokens_are_reshaped_in_order() -> None:
    enc = create_encoder("vit_tiny_patch16_224", img_size=32, reg_tokens=2).eval()
    x = torch.randn(1, 3, 48, 32)
    tokens = enc.trunk.forward_features(x)[:, enc.num_prefix_tokens :]
    fmap = enc(x)
    assert enc.num_prefix_tokens == 3
    assert torch.equal(fmap[0, :, 1, 0], tokens[0, 2])  # row 1, col 0 of a 3x2 grid is token 2


def test_unknown_encoder_and_bad_option() -> None:
    with pytest.raises(ConfigError, match="unknown encoder"):
        create_encoder("not_a_model_xyz")
    with pytest.raises(ConfigError, match="resnet10"):
        create_encoder("resnet10", no_such_option=1)


def test_load_local_weights_strict_with_head_dropped(tmp_path: Path) -> None:
    src = create_encoder("resnet10")
    sd = {k: v.clone() for k, v in src.trunk.state_dict().items()}
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)  # a classifier the trunk lacks
    f = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, f)
    dst = create_encoder("resnet10", weights=f)
    for k, v in src.trunk.state_dict().items():
        assert torch.equal(dst.trunk.state_dict()[k], v), k
    g = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.trunk.state_dict().items()}, str(g))
    dst2 = create_encoder("resnet10", weights=g)
    assert torch.equal(dst2.trunk.conv1.weight, src.trunk.conv1.weight)


def test_vit_weights_roundtrip(tmp_path: Path) -> None:
    src = create_encoder("vit_tiny_patch16_224", img_size=32)
    f = tmp_path / "vit.bin"
    torch.save({"model": src.trunk.state_dict()}, f)
    dst = create_encoder("vit_tiny_patch16_224", img_size=32, weights=f)
    assert torch.equal(dst.trunk.pos_embed, src.trunk.pos_embed)


def test_mismatched_or_missing_weights(tmp_path: Path) -> None:
    wrong = tmp_path / "r18.pt"
    torch.save(create_encoder("resnet18").trunk.state_dict(), wrong)
    with pytest.raises(CheckpointError, match="r18.pt.*unexpected"):
        create_encoder("resnet10", weights=wrong)
    sd = create_encoder("resnet10").trunk.state_dict()
    sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    shape = tmp_path / "shape.pt"
    torch.save(sd, shape)
    with pytest.raises(CheckpointError, match="shape.pt.*conv1.weight"):
        create_encoder("resnet10", weights=shape)
    with pytest.raises(CheckpointError, match="nope.pth"):
        create_encoder("resnet10", weights=tmp_path / "nope.pth")


def test_frozen_encoder_stays_eval_without_grads() -> None:
    enc = create_encoder("resnet10", frozen=True)
    enc.train()
    assert not enc.training and not enc.trunk.training
    assert not any(p.requires_grad for p in enc.parameters())

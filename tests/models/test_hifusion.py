from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hifusion.errors import ConfigError
from hifusion.models import HiFusion, HiFusionOutput, create_model, hifusion_loss, register_encoder
from hifusion.models.hifusion import _tile, _untile

Batch = Callable[..., tuple[torch.Tensor, ...]]
Step = Callable[..., torch.Tensor]


class _MapTrunk(nn.Module):
    """A fake encoder with a known output: the input, average-pooled by ``factor`` (times a scale of 1)."""

    def __init__(self, factor: int, in_chans: int = 3) -> None:
        super().__init__()
        self.factor = factor
        self.num_features = in_chans
        self.scale = nn.Parameter(torch.ones(()))  # so the model has something to train

    def forward_features(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.factor) * self.scale if self.factor > 1 else x * self.scale


register_encoder("_test_identity")(lambda in_chans=3: _MapTrunk(1, in_chans))
register_encoder("_test_pool4")(lambda in_chans=3: _MapTrunk(4, in_chans))


def _tiny(**kw: object) -> HiFusion:
    base: dict[str, object] = dict(n_genes=6, levels=(1, 4, 16), embed_dim=64, heads=4)
    base.update(kw)
    return create_model("hifusion", **base)


def test_param_count_at_defaults() -> None:
    m = create_model("hifusion")
    n = sum(p.numel() for p in m.parameters())
    assert 17.0e6 <= n <= 17.8e6, n


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_tile_untile_grid_positions(n: int, channels_last: bool) -> None:
    x = torch.randn(2, 3, 16, 24)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    tiles = _tile(x, n)
    sh, sw = 16 // n, 24 // n
    for b in range(2):
        for r in range(n):
            for c in range(n):
                assert torch.equal(tiles[b * n * n + r * n + c], x[b, :, r * sh : (r + 1) * sh, c * sw : (c + 1) * sw])
    assert torch.equal(_untile(tiles, n), x)


@pytest.mark.parametrize("channels_last", [False, True])
def test_levels_reassemble_to_the_input(channels_last: bool) -> None:
    x = torch.randn(2, 3, 32, 32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ident = create_model(
        "hifusion", n_genes=2, levels=(1, 4, 16), spot_encoder="_test_identity", embed_dim=3, use_ccf=False
    )
    pool = create_model(
        "hifusion", n_genes=2, levels=(1, 4, 16), spot_encoder="_test_pool4", embed_dim=3, use_ccf=False
    )
    for k in (1, 4, 16):
        assert torch.allclose(ident.level_map(x, k), x)
        assert torch.allclose(pool.level_map(x, k), F.avg_pool2d(x, 4), atol=1e-6)
    out = ident(x)
    assert all(torch.allclose(m, x) for m in out.level_maps)


def test_level_maps_pooled_to_level_one_size() -> None:
    m = _tiny(levels=(1, 4), use_ccf=False).eval()
    # 96 px: level 1 map 3x3; level 4 = 2x2 tiles of 48 px -> 2x2 maps -> 4x4, max-pooled to 3x3.
    out = m(torch.randn(1, 3, 96, 96))
    assert [tuple(t.shape) for t in out.level_maps] == [(1, 64, 3, 3)] * 2
    assert len(out.level_preds) == 2 and out.pred.shape == (1, 6)


def test_one_batched_encoder_call_per_level() -> None:
    m = _tiny(levels=(1, 4, 16), use_ccf=False)
    sizes: list[int] = []
    m.spot_encoder.register_forward_hook(lambda mod, inp, out: sizes.append(inp[0].shape[0]))
    m(torch.randn(2, 3, 64, 64))
    assert sizes == [2, 8, 32]


@pytest.mark.parametrize(
    "kw",
    [
        dict(levels=(1,)),
        dict(levels=(1, 4)),
        dict(levels=(1, 4, 16)),
        dict(tokens=1),
        dict(tokens=3),
        dict(use_ccf=False),
        dict(use_alignment=False),
        dict(region_encoder="resnet18"),
        dict(region_encoder="_test_pool4"),
        dict(embed_dim=512, heads=8),
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_ablations_train_one_step(kw: dict, batch: Batch, train_step: Step) -> None:
    m = _tiny(**kw)
    spot, region, y = batch(spot_px=64, region_px=64)
    before = m.spot_encoder.trunk.conv1.weight.detach().clone()
    loss = train_step(m, spot, region, y)
    assert torch.isfinite(loss)
    assert m.spot_encoder.trunk.conv1.weight.grad.abs().sum() > 0
    assert not torch.equal(before, m.spot_encoder.trunk.conv1.weight)
    if kw.get("use_ccf") is False:
        assert m.region_encoder is None
    out = m(spot, region)
    assert out.pred.shape == (2, 6) and len(out.level_preds) == len(m.levels)


def test_tiny_vit_spot_encoder_steps(batch: Batch, train_step: Step) -> None:
    m = _tiny(levels=(1, 4), spot_encoder="vit_tiny_patch16_224", encoder_kwargs=dict(img_size=32))
    assert isinstance(m.spot_proj, nn.Conv2d) and m.spot_proj.in_channels == 192
    spot, region, y = batch(spot_px=64, region_px=64)
    assert torch.isfinite(train_step(m, spot, region, y))
    assert m.spot_encoder.trunk.patch_embed.proj.weight.grad.abs().sum() > 0


def test_spot_encoder_weights_and_freeze(tmp_path: Path, batch: Batch, train_step: Step) -> None:
    src = _tiny()
    f = tmp_path / "spot.pth"
    torch.save(src.spot_encoder.trunk.state_dict(), f)
    m = _tiny(spot_encoder_weights=f, freeze_spot_encoder=True)
    assert torch.equal(m.spot_encoder.trunk.conv1.weight, src.spot_encoder.trunk.conv1.weight)
    bn_before = m.spot_encoder.trunk.bn1.running_mean.clone()
    spot, region, y = batch()
    assert torch.isfinite(train_step(m, spot, region, y))
    assert all(p.grad is None for p in m.spot_encoder.parameters())
    assert not m.spot_encoder.training and m.training
    assert torch.equal(bn_before, m.spot_encoder.trunk.bn1.running_mean)
    assert m.head.weight.grad is not None


def test_bad_levels_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="perfect square"):
        _tiny(levels=(1, 3))
    with pytest.raises(ConfigError, match="increasing"):
        _tiny(levels=(4, 1))
    with pytest.raises(ConfigError, match="divisible by 7"):
        _tiny(levels=(1, 49), spot_px=64)
    m = _tiny(levels=(1, 9), use_ccf=False)
    with pytest.raises(ConfigError, match="divisible by 3"):
        m(torch.randn(1, 3, 64, 64))


def test_loss_parts_hand_computed() -> None:
    target = torch.ones(2, 3)
    out = HiFusionOutput(
        pred=torch.zeros(2, 3),
        level_preds=[torch.full((2, 3), 2.0), torch.full((2, 3), 3.0)],
        level_maps=[torch.zeros(2, 4, 2, 2), torch.ones(2, 4, 2, 2), torch.full((2, 4, 2, 2), -3.0)],
    )
    total, parts = hifusion_loss(out, target, align_weight=0.5)
    assert parts["final_mse"].item() == pytest.approx(1.0)
    assert parts["level_mse"].item() == pytest.approx((1.0 + 4.0) / 2)
    assert parts["align"].item() == pytest.approx(1.0 + 3.0)
    assert total.item() == pytest.approx(1.0 + 2.5 + 0.5 * 4.0)
    total2, parts2 = hifusion_loss(out, target, use_alignment=False)
    assert "align" not in parts2 and total2.item() == pytest.approx(3.5)
    single = HiFusionOutput(pred=out.pred, level_preds=out.level_preds[:1], level_maps=out.level_maps[:1])
    assert hifusion_loss(single, target)[0].item() == pytest.approx(2.0)


def test_alignment_reaches_every_level() -> None:
    maps = [torch.randn(2, 4, 3, 3, requires_grad=True) for _ in range(3)]
    out = HiFusionOutput(pred=torch.zeros(2, 3), level_preds=[torch.zeros(2, 3)], level_maps=maps)
    _, parts = hifusion_loss(out, torch.zeros(2, 3))
    parts["align"].backward()
    assert all(m.grad is not None and m.grad.abs().sum() > 0 for m in maps)


def test_fusion_weights_get_gradients(batch: Batch) -> None:
    m = _tiny()
    spot, region, y = batch()
    loss, _ = hifusion_loss(m(spot, region), y)
    loss.backward()
    assert m.level_logits.grad is not None and m.level_logits.grad.abs().sum() > 0
    assert m.attn.in_proj_weight.grad.abs().sum() > 0
    assert m.region_encoder.trunk.conv1.weight.grad.abs().sum() > 0


def test_channels_last_and_autocast(batch: Batch) -> None:
    m = _tiny().eval()
    spot, region, y = batch()
    with torch.no_grad():
        ref = m(spot, region).pred
        m_cl = m.to(memory_format=torch.channels_last)
        cl = m_cl(
            spot.contiguous(memory_format=torch.channels_last), region.contiguous(memory_format=torch.channels_last)
        )
        assert torch.allclose(ref, cl.pred, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(spot, region)
            loss, parts = hifusion_loss(out, y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert math.isfinite(parts["align"].item())

"""HiFusion (Weng et al., AAAI 2026): hierarchical intra-spot modelling (HISM) + context-aware cross-scale fusion (CCF).

(The design brief, section 2.) The spot patch is encoded at several tilings (levels, given as tile counts) by one shared
encoder; every level is supervised by one shared gene head and aligned to the coarsest level; the level maps are fused
and attended to by a region (neighbourhood) token to give the final prediction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hifusion.errors import ConfigError
from hifusion.models.encoders import Encoder, create_encoder
from hifusion.models.layers import ModelOutput, set_head_bias
from hifusion.models.registry import register_model

__all__ = ["HiFusion", "HiFusionOutput", "check_levels"]


@dataclass
class HiFusionOutput(ModelOutput):
    """Final prediction (B, G) plus what the HiFusion loss needs: per-level predictions and pooled level maps."""

    level_preds: list[Tensor] = field(default_factory=list)
    level_maps: list[Tensor] = field(default_factory=list)


def check_levels(levels: Sequence[int], spot_px: int | tuple[int, int] | None = None) -> tuple[int, ...]:
    """Validate HISM levels (tile counts): positive perfect squares, strictly increasing, whose roots divide the spot.

    Returns the levels as a tuple. ``spot_px`` (side, or (height, width)) is checked when given.
    """
    try:
        out = tuple(int(k) for k in levels)
    except (TypeError, ValueError):
        raise ConfigError(f"levels must be a list of tile counts, got {levels!r}") from None
    if not out:
        raise ConfigError("levels must hold at least one tile count")
    for k in out:
        if k < 1 or math.isqrt(k) ** 2 != k:
            raise ConfigError(f"level {k} is not a perfect square tile count (1, 4, 9, 16, ...); levels={list(out)}")
    if any(b <= a for a, b in zip(out, out[1:], strict=False)):
        raise ConfigError(f"levels must be strictly increasing, got {list(out)}")
    if spot_px is not None:
        sides = (spot_px, spot_px) if isinstance(spot_px, int) else tuple(spot_px)
        for k in out:
            n = math.isqrt(k)
            if any(s % n for s in sides):
                raise ConfigError(
                    f"level {k} cuts the spot patch into {n}x{n} tiles, but the spot side {sides[0]}x{sides[1]} px "
                    f"is not divisible by {n}; levels={list(out)}"
                )
    return out


def _tile(x: Tensor, n: int) -> Tensor:
    """Cut (B, C, H, W) into (B*n*n, C, H/n, W/n) tiles in row-major grid order, keeping the memory format."""
    b, c, h, w = x.shape
    sh, sw = h // n, w // n
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        t = x.permute(0, 2, 3, 1).reshape(b, n, sh, n, sw, c).permute(0, 1, 3, 2, 4, 5)
        return t.reshape(b * n * n, sh, sw, c).permute(0, 3, 1, 2)
    t = x.reshape(b, c, n, sh, n, sw).permute(0, 2, 4, 1, 3, 5)
    return t.reshape(b * n * n, c, sh, sw)


def _untile(f: Tensor, n: int) -> Tensor:
    """Put (B*n*n, D, h, w) tile maps back in their grid positions: (B, D, n*h, n*w)."""
    bn, d, h, w = f.shape
    b = bn // (n * n)
    if f.is_contiguous(memory_format=torch.channels_last) and not f.is_contiguous():
        t = f.permute(0, 2, 3, 1).reshape(b, n, n, h, w, d).permute(0, 1, 3, 2, 4, 5)
        return t.reshape(b, n * h, n * w, d).permute(0, 3, 1, 2)
    t = f.reshape(b, n, n, d, h, w).permute(0, 3, 1, 4, 2, 5)
    return t.reshape(b, d, n * h, n * w)


def _projection(encoder: Encoder, embed_dim: int) -> nn.Module:
    """A learned 1x1 projection when the encoder width differs from the model width (the design brief, section 8)."""
    if encoder.out_channels == embed_dim:
        return nn.Identity()
    return nn.Conv2d(encoder.out_channels, embed_dim, kernel_size=1)


@register_model("hifusion")
class HiFusion(nn.Module):
    """HiFusion: forward(spot (B,3,S,S), region (B,3,R,R)) -> HiFusionOutput with pred (B, n_genes)."""

    loss_name = "hifusion"
    input_kind = "spot_region"

    def __init__(
        self,
        n_genes: int = 250,
        levels: Sequence[int] = (1, 4, 49),
        tokens: int = 2,
        spot_encoder: str = "resnet18",
        region_encoder: str = "resnet10",
        spot_encoder_weights: str | Path | None = None,
        region_encoder_weights: str | Path | None = None,
        freeze_spot_encoder: bool = False,
        encoder_kwargs: dict[str, Any] | None = None,
        region_encoder_kwargs: dict[str, Any] | None = None,
        heads: int = 8,
        dropout: float = 0.1,
        align_weight: float = 0.5,
        use_ccf: bool = True,
        use_alignment: bool = True,
        embed_dim: int = 512,
        spot_px: int | None = None,
    ) -> None:
        super().__init__()
        if int(n_genes) < 1:
            raise ConfigError(f"n_genes must be positive, got {n_genes}")
        if int(tokens) < 1:
            raise ConfigError(f"tokens (spot token grid side t) must be positive, got {tokens}")
        if int(embed_dim) < 1 or (use_ccf and int(embed_dim) % int(heads)):
            raise ConfigError(f"embed_dim ({embed_dim}) must be positive and divisible by heads ({heads})")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
        if float(align_weight) < 0:
            raise ConfigError(f"align_weight must be non-negative, got {align_weight}")
        self.levels = check_levels(levels, spot_px)
        self.n_genes = int(n_genes)
        self.tokens = int(tokens)
        self.embed_dim = int(embed_dim)
        self.align_weight = float(align_weight)
        self.use_alignment = bool(use_alignment)
        self.use_ccf = bool(use_ccf)

        # HISM: one spot encoder shared by all levels, one gene head shared by all levels.
        self.spot_encoder = create_encoder(
            spot_encoder, weights=spot_encoder_weights, frozen=freeze_spot_encoder,
            weights_option="spot_encoder_weights", **(encoder_kwargs or {}),
        )
        self.spot_proj = _projection(self.spot_encoder, self.embed_dim)
        self.level_head = nn.Linear(self.embed_dim, self.n_genes)
        # Fusion: one learnable scalar per level, softmax-normalised (equal weights at init).
        self.level_logits = nn.Parameter(torch.zeros(len(self.levels)))

        self.region_encoder: Encoder | None = None
        self.region_proj: nn.Module | None = None
        self.attn: nn.MultiheadAttention | None = None
        self.norm: nn.LayerNorm | None = None
        if self.use_ccf:
            self.region_encoder = create_encoder(
                region_encoder, weights=region_encoder_weights, weights_option="region_encoder_weights",
                **(region_encoder_kwargs or {}),
            )
            self.region_proj = _projection(self.region_encoder, self.embed_dim)
            self.attn = nn.MultiheadAttention(self.embed_dim, int(heads), dropout=float(dropout), batch_first=True)
            self.norm = nn.LayerNorm(self.embed_dim)
        self.head = nn.Linear(self.embed_dim, self.n_genes)

    def init_output_bias(self, mean: Tensor) -> None:
        """Start both gene heads at the training mean label.

        Labels such as ln((c+1)/sum) sit near -6; a zero-initialised head must first learn that offset through its
        weights (Adam moves a bias by about lr per step), which on small data keeps the model at the mean profile.
        """
        set_head_bias([self.level_head, self.head], mean)

    def level_map(self, spot: Tensor, level: int) -> Tensor:
        """Encode all tiles of one level in one batched call and reassemble them into one map per spot."""
        n = math.isqrt(level)
        if n == 1:
            return self.spot_proj(self.spot_encoder(spot))
        return _untile(self.spot_proj(self.spot_encoder(_tile(spot, n))), n)

    def forward(self, spot: Tensor, region: Tensor | None = None) -> HiFusionOutput:
        if spot.ndim != 4:
            raise ValueError(f"spot must be (B, C, H, W), got shape {tuple(spot.shape)}")
        check_levels(self.levels, (spot.shape[-2], spot.shape[-1]))
        maps = [self.level_map(spot, k) for k in self.levels]
        ref = tuple(maps[0].shape[-2:])
        maps = [m if tuple(m.shape[-2:]) == ref else F.adaptive_max_pool2d(m, ref) for m in maps]
        level_preds = [self.level_head(m.mean(dim=(2, 3))) for m in maps]

        weights = torch.softmax(self.level_logits.float(), dim=0)
        fused = maps[0] * weights[0].to(maps[0].dtype)
        for w, m in zip(weights[1:], maps[1:], strict=True):
            fused = fused + m * w.to(m.dtype)

        if not self.use_ccf:
            pred = self.head(fused.mean(dim=(2, 3)))
        else:
            assert self.region_encoder is not None and self.region_proj is not None
            assert self.attn is not None and self.norm is not None
            if region is None:
                raise ValueError("HiFusion with use_ccf=True needs the region patch")
            spot_tokens = F.adaptive_avg_pool2d(fused, self.tokens).flatten(2).transpose(1, 2)  # (B, t*t, D)
            region_token = self.region_proj(self.region_encoder(region)).mean(dim=(2, 3)).unsqueeze(1)  # (B, 1, D)
            attended, _ = self.attn(region_token, spot_tokens, spot_tokens, need_weights=False)
            pred = self.head(self.norm(attended + region_token).squeeze(1))
        return HiFusionOutput(pred=pred, level_preds=level_preds, level_maps=maps)

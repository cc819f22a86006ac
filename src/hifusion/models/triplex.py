"""TRIPLEX (Chung et al., CVPR 2024): target spot + neighbour view + global section context, fused by cross-attention.

Three branches, as in the paper:
- target: a ResNet-18 trunk on the spot patch; its feature map gives h x w target tokens (and, pooled, one vector);
- neighbour: the 5 x 5 grid of spot-sized views around the spot (``radius`` 2). The cache's region patch is only
  2 x the spot side (region factor 2), too small for a 5 x 5 grid, so the grid is built from the section's
  neighbouring spots instead: the spots at array offsets [-2, 2]^2 (missing positions masked), with a learned
  embedding per grid position and a small transformer. On the legacy ST array (200 um pitch) this covers
  ~1 mm, close to the paper's 5 x 5 tiles of 224 px;
- global: every spot of the section, a transformer with learned array-x/y embeddings (the paper uses its APEG
  convolutional position encoding; learned embeddings are the HisToGene-style stand-in).
The paper encodes neighbour and global views with a frozen pretrained ResNet-18 whose features are precomputed;
here both reuse the target encoder's pooled spot features, detached (``detach_context``) so they act as fixed
inputs to those branches, which needs one encoder pass per spot instead of three.
Fusion: target tokens query the neighbour tokens and the spot's global token (two cross-attentions), residual,
LayerNorm, mean over tokens, linear head -> the prediction. Loss ``triplex`` (weights documented in
``models.losses.triplex_objective``): MSE(fused) + sum over the three branch heads of ``branch_weight`` x
[(1 - alpha) MSE(branch, y) + alpha MSE(branch, fused.detach())], branch_weight 1/3 and alpha 0.3 by default.
Memory: one section per step; the ResNet-18 activations of N spots dominate (at 224 px about 25 MB per spot for
training, so ~4.5 GB for 180 spots; 4x less at 112 px). CPU profile (configs): dim 128, depths 1, 112 px.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hifusion.errors import ConfigError
from hifusion.models.encoders import create_encoder
from hifusion.models.layers import ModelOutput, set_head_bias, transformer
from hifusion.models.registry import register_model
from hifusion.models.spatial import PositionEmbedding, grid_neighbours

__all__ = ["Triplex", "TriplexOutput"]


@dataclass
class TriplexOutput(ModelOutput):
    """Fused prediction plus the target, neighbour and global branch predictions (for the loss)."""

    branches: list[Tensor] = field(default_factory=list)


@register_model("triplex")
class Triplex(nn.Module):
    """Whole-section model: all spot patches (N, 3, H, W) of a section and their array coords (N, 2)."""

    loss_name = "triplex"
    input_kind = "section"
    uses_region = False

    def __init__(
        self,
        n_genes: int = 250,
        encoder: str = "resnet18",
        encoder_weights: str | Path | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
        dim: int = 512,
        heads: int = 8,
        neighbour_depth: int = 2,
        global_depth: int = 2,
        radius: int = 2,
        n_pos: int = 64,
        dropout: float = 0.1,
        detach_context: bool = True,
        branch_weight: float = 1.0 / 3.0,
        distill_alpha: float = 0.3,
    ) -> None:
        super().__init__()
        if int(n_genes) < 1 or int(radius) < 0:
            raise ConfigError(f"n_genes must be positive and radius >= 0, got {n_genes}, {radius}")
        self.n_genes, self.radius, self.detach_context = int(n_genes), int(radius), bool(detach_context)
        self.branch_weight, self.distill_alpha = float(branch_weight), float(distill_alpha)
        self.encoder = create_encoder(encoder, weights=encoder_weights, **(encoder_kwargs or {}))
        self.proj = nn.Linear(self.encoder.out_channels, dim)
        side = 2 * self.radius + 1
        self.grid_pos = nn.Parameter(torch.zeros(side * side, dim))
        nn.init.trunc_normal_(self.grid_pos, std=0.02)
        self.neighbour = transformer(dim, neighbour_depth, heads, 2 * dim, dropout)
        self.pos = PositionEmbedding(n_pos, dim)
        self.globe = transformer(dim, global_depth, heads, 2 * dim, dropout)
        self.attn_n = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.attn_g = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.heads = nn.ModuleDict({k: nn.Linear(dim, self.n_genes) for k in ("fusion", "target", "neighbour",
                                                                               "global")})

    def init_output_bias(self, mean: Tensor) -> None:
        """Bias of all four heads = training mean of each gene (called by the section fitter before training)."""
        set_head_bias(list(self.heads.values()), mean)

    def forward(self, spot: Tensor, region: Tensor | None = None, coords: Tensor | None = None) -> TriplexOutput:
        """All spots of one section in, one fused prediction per spot out; the region patch is ignored."""
        n = spot.shape[0]
        tokens = self.proj(self.encoder(spot).flatten(2).transpose(1, 2))  # (N, h*w, dim)
        target = tokens.mean(1)
        ctx = target.detach() if self.detach_context else target
        idx, valid = grid_neighbours(coords, self.radius, n=n)
        idx, valid = idx.to(spot.device), valid.to(spot.device)
        nb = self.neighbour(ctx[idx] + self.grid_pos, src_key_padding_mask=~valid)  # (N, K, dim)
        w = valid.unsqueeze(-1).to(nb.dtype)
        neighbour = (nb * w).sum(1) / w.sum(1).clamp_min(1.0)
        glob = self.globe((ctx + self.pos(coords)).unsqueeze(0)).squeeze(0)  # (N, dim)
        a_n, _ = self.attn_n(tokens, nb, nb, key_padding_mask=~valid, need_weights=False)
        a_g, _ = self.attn_g(tokens, glob.unsqueeze(1), glob.unsqueeze(1), need_weights=False)
        fused = self.norm(tokens + a_n + a_g).mean(1)
        out = TriplexOutput(pred=self.heads["fusion"](fused))
        if self.training:
            out.branches = [self.heads["target"](target), self.heads["neighbour"](neighbour),
                            self.heads["global"](glob)]
        return out

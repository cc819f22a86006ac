"""Hist2ST (Zeng et al. 2022): Convmixer patch features -> transformer over the section's spots -> graph network.

Per spot: a Convmixer (patch-embedding conv, then depthwise/pointwise conv blocks) on the spot patch resized to
``patch_px`` (paper 112), pooled to a vector and projected to ``dim``; learned array-x/y embeddings are added; a
transformer mixes all spots of the section; ``gnn_depth`` graph layers (GCN or single-head GAT) run over the spot
graph (each spot linked to its ``k_neighbours`` nearest spots in array units); the transformer output and the graph
output are concatenated (a jumping-knowledge read-out) and a linear head predicts genes.

Losses (loss ``hist2st``): MSE, plus two optional terms of the paper, both off by default so the baseline is
trained exactly like the others unless asked: ``zinb_weight`` (paper 0.25) adds the negative log-likelihood of a
zero-inflated negative binomial whose mean, dispersion and dropout come from three extra heads (evaluated on the
non-negative labels as a continuous density); ``distill_weight`` (paper 0.5) adds self-distillation: predictions
on ``distill_views`` randomly flipped/rotated copies of the patches are pulled towards the (detached) prediction
on the original patches. Paper size: channel 32, kernel 5, patch 7, dim 1024, depths 2/8/4, heads 16, dropout 0.2.
Memory: one section per step; Convmixer maps N x channel x (patch_px/patch)^2 per block, attention and the dense
graph N^2. CPU profile (configs): patch_px 56, dim 128, depths 2/2/2, heads 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hifusion.errors import ConfigError
from hifusion.models.layers import ModelOutput, set_head_bias, transformer
from hifusion.models.registry import register_model
from hifusion.models.spatial import PositionEmbedding, knn_adjacency, resize_patches

__all__ = ["Hist2ST", "Hist2STOutput"]


@dataclass
class Hist2STOutput(ModelOutput):
    """Prediction plus the optional ZINB parameters and the predictions on augmented views (self-distillation)."""

    zinb: tuple[Tensor, Tensor, Tensor] | None = None
    views: list[Tensor] | None = None


def _d4(x: Tensor, g: torch.Generator | None = None) -> Tensor:
    """One random flip/rotation of a batch of patches (same transform for the whole section)."""
    k = int(torch.randint(0, 4, (1,), generator=g))
    if bool(torch.randint(0, 2, (1,), generator=g)):
        x = x.flip(-1)
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


class ConvMixer(nn.Module):
    """Convmixer (Trockman and Kolter): patch conv, then blocks of residual depthwise conv + pointwise conv."""

    def __init__(self, channels: int, depth: int, kernel: int, patch: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, patch, stride=patch), nn.GELU(), nn.BatchNorm2d(channels))
        self.blocks = nn.ModuleList(
            nn.ModuleDict({
                "dw": nn.Sequential(nn.Conv2d(channels, channels, kernel, groups=channels, padding=kernel // 2),
                                    nn.GELU(), nn.BatchNorm2d(channels)),
                "pw": nn.Sequential(nn.Conv2d(channels, channels, 1), nn.GELU(), nn.BatchNorm2d(channels)),
            })
            for _ in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for b in self.blocks:
            x = b["pw"](x + b["dw"](x))
        return x.mean(dim=(2, 3))


class GraphLayer(nn.Module):
    """One graph layer on a dense adjacency: GCN (symmetric normalisation, self loops) or single-head GAT."""

    def __init__(self, dim: int, kind: str) -> None:
        super().__init__()
        if kind not in ("gcn", "gat"):
            raise ConfigError(f"gnn must be 'gcn' or 'gat', got {kind!r}")
        self.kind = kind
        self.lin = nn.Linear(dim, dim)
        if kind == "gat":
            self.att_src = nn.Parameter(torch.randn(dim) * dim**-0.5)
            self.att_dst = nn.Parameter(torch.randn(dim) * dim**-0.5)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        a = adj | torch.eye(adj.shape[0], dtype=torch.bool, device=adj.device)
        h = self.lin(x)
        if self.kind == "gcn":
            af = a.to(h.dtype)
            d = af.sum(1).rsqrt()
            out = (d[:, None] * af * d[None, :]) @ h
        else:
            e = F.leaky_relu((h @ self.att_dst)[:, None] + (h @ self.att_src)[None, :], 0.2)
            out = torch.softmax(e.masked_fill(~a, float("-inf")), dim=1) @ h
        return self.norm(x + F.gelu(out))


@register_model("hist2st")
class Hist2ST(nn.Module):
    """Whole-section model: all spot patches (N, 3, H, W) of a section and their array coords (N, 2)."""

    loss_name = "hist2st"
    input_kind = "section"
    uses_region = False

    def __init__(
        self,
        n_genes: int = 250,
        patch_px: int = 112,
        channels: int = 32,
        kernel: int = 5,
        patch: int = 7,
        conv_depth: int = 2,
        dim: int = 1024,
        depth: int = 8,
        heads: int = 16,
        gnn_depth: int = 4,
        gnn: str = "gcn",
        k_neighbours: int = 4,
        n_pos: int = 64,
        dropout: float = 0.2,
        zinb_weight: float = 0.0,
        distill_weight: float = 0.0,
        distill_views: int = 1,
    ) -> None:
        super().__init__()
        if int(n_genes) < 1 or int(patch_px) < int(patch):
            raise ConfigError(f"n_genes must be positive and patch_px >= patch, got {n_genes}, {patch_px}, {patch}")
        self.n_genes, self.patch_px, self.k_neighbours = int(n_genes), int(patch_px), int(k_neighbours)
        self.zinb_weight, self.distill_weight = float(zinb_weight), float(distill_weight)
        self.distill_views = int(distill_views)
        self.convmixer = ConvMixer(channels, conv_depth, kernel, patch)
        self.embed = nn.Linear(channels, dim)
        self.pos = PositionEmbedding(n_pos, dim)
        self.drop = nn.Dropout(dropout)
        self.vit = transformer(dim, depth, heads, 2 * dim, dropout)
        self.gnn = nn.ModuleList(GraphLayer(dim, gnn) for _ in range(gnn_depth))
        self.norm = nn.LayerNorm(2 * dim)
        self.head = nn.Linear(2 * dim, self.n_genes)
        self.zinb_heads = None
        if self.zinb_weight > 0:
            self.zinb_heads = nn.ModuleDict({k: nn.Linear(2 * dim, self.n_genes) for k in ("mean", "disp", "pi")})

    def init_output_bias(self, mean: Tensor) -> None:
        """Head bias = training mean of each gene (called by the section fitter before training)."""
        set_head_bias([self.head], mean)

    def _features(self, spot: Tensor, coords: Tensor | None) -> Tensor:
        x = self.embed(self.convmixer(resize_patches(spot, self.patch_px))) + self.pos(coords)
        x = self.vit(self.drop(x).unsqueeze(0)).squeeze(0)
        adj = knn_adjacency(coords, self.k_neighbours, n=x.shape[0]).to(x.device)
        h = x
        for layer in self.gnn:
            h = layer(h, adj)
        return self.norm(torch.cat([x, h], dim=1))

    def forward(self, spot: Tensor, region: Tensor | None = None, coords: Tensor | None = None) -> Hist2STOutput:
        """All spots of one section in, one prediction per spot out; the region patch is ignored."""
        f = self._features(spot, coords)
        out = Hist2STOutput(pred=self.head(f))
        if self.zinb_heads is not None and self.training:
            out.zinb = (F.softplus(self.zinb_heads["mean"](f)) + 1e-4,
                        F.softplus(self.zinb_heads["disp"](f)) + 1e-4,
                        torch.sigmoid(self.zinb_heads["pi"](f)))
        if self.distill_weight > 0 and self.training:
            out.views = [self.head(self._features(_d4(spot), coords)) for _ in range(self.distill_views)]
        return out

"""Helpers shared by the whole-section baselines (HisToGene, Hist2ST, TRIPLEX): positions, spot graphs, resizing.

Whole-section models see every spot of a section at once, with its integer array coordinates (obs ``array_x``,
``array_y``; see ``SplitData.array_coords``). Graphs are dense (N, N) tensors: simple and exact for the few
thousand spots of an ST/Visium section (N^2 floats: 100 MB at 5,000 spots).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PositionEmbedding", "grid_neighbours", "knn_adjacency", "resize_patches"]


def resize_patches(x: Tensor, side: int) -> Tensor:
    """Bring (N, 3, H, W) patches to ``side`` px: area averaging when shrinking (antialiased), bilinear otherwise."""
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    if x.shape[-1] > side:
        return F.adaptive_avg_pool2d(x, side)
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)




class PositionEmbedding(nn.Module):
    """Learned embeddings of array x and y (HisToGene's positional encoding), summed; coordinates clamp to n_pos-1.

    Without coordinates (``None``) it adds nothing, so a section model still runs on a bare batch of patches.
    """

    def __init__(self, n_pos: int, dim: int) -> None:
        super().__init__()
        self.n_pos = int(n_pos)
        self.x = nn.Embedding(self.n_pos, dim)
        self.y = nn.Embedding(self.n_pos, dim)

    def forward(self, coords: Tensor | None) -> Tensor | int:
        if coords is None:
            return 0
        c = coords.long().clamp(0, self.n_pos - 1)
        return self.x(c[:, 0]) + self.y(c[:, 1])


def knn_adjacency(coords: Tensor | None, k: int, n: int | None = None) -> Tensor:
    """Symmetric boolean (N, N) adjacency of each spot with its k nearest spots (Euclidean in array units).

    Without coordinates every spot is only linked to itself (the graph layer then acts per spot).
    """
    if coords is None:
        return torch.eye(int(n or 0), dtype=torch.bool)
    n = coords.shape[0]
    c = coords.float()
    adj = torch.zeros(n, n, dtype=torch.bool, device=coords.device)
    k = min(int(k), n - 1)
    if k > 0:
        d = torch.cdist(c, c)
        d.fill_diagonal_(float("inf"))
        idx = d.topk(k, dim=1, largest=False).indices
        adj.scatter_(1, idx, True)
        adj = adj | adj.T
    return adj


def grid_neighbours(coords: Tensor | None, radius: int, n: int | None = None) -> tuple[Tensor, Tensor]:
    """For every spot, the spots at array offsets (dx, dy) in [-radius, radius]^2, row-major (centre included).

    Returns ``idx`` (N, K) and ``valid`` (N, K) with K = (2 radius + 1)^2; a missing neighbour has ``valid`` False
    (and idx pointing at the spot itself). This is TRIPLEX's 5 x 5 neighbour view at radius 2 on the ST array.
    """
    r = int(radius)
    side = 2 * r + 1
    if coords is None:
        n = int(n or 0)
        idx = torch.arange(n).unsqueeze(1).expand(n, side * side).clone()
        valid = torch.zeros(n, side * side, dtype=torch.bool)
        valid[:, (side * side) // 2] = True
        return idx, valid
    c = coords.long()
    n = c.shape[0]
    base = c.min(dim=0).values - r
    span = int((c.max(dim=0).values - base).max().item()) + r + 1
    key = (c[:, 0] - base[0]) * span + (c[:, 1] - base[1])
    order = torch.argsort(key)
    sorted_key = key[order]
    off = torch.arange(-r, r + 1, device=c.device)
    dy, dx = torch.meshgrid(off, off, indexing="ij")
    q = (c[:, None, 0] + dx.reshape(1, -1) - base[0]) * span + (c[:, None, 1] + dy.reshape(1, -1) - base[1])
    pos = torch.searchsorted(sorted_key, q.reshape(-1)).clamp_max(n - 1).reshape(n, -1)
    valid = sorted_key[pos] == q
    idx = torch.where(valid, order[pos], torch.arange(n, device=c.device).unsqueeze(1))
    return idx, valid

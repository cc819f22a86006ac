"""HisToGene (Pang et al. 2021): a ViT over all spots of a section, one token per spot.

Each spot patch is resized to ``patch_px`` (the paper: 112 px), flattened and linearly embedded; learned embeddings
of the spot's array x and y are added; a transformer encoder mixes all spots of the section; a linear head gives
the genes. Paper size: dim 1024, depth 8, heads 16, n_pos 64, dropout 0.1, trained with MSE (lr 1e-5, 100 epochs)
-- about 106 M parameters, 39 M of them in the patch embedding.
Memory: one section per step; activations grow with N spots x dim x depth, attention with N^2 x heads
(paper size, 300 spots: well under 1 GB). CPU profile (configs): patch_px 56, dim 128, depth 4, heads 4.
"""

from __future__ import annotations

from torch import Tensor, nn

from hifusion.errors import ConfigError
from hifusion.models.layers import ModelOutput, set_head_bias, transformer
from hifusion.models.registry import register_model
from hifusion.models.spatial import PositionEmbedding, resize_patches

__all__ = ["HisToGene"]




@register_model("histogene")
class HisToGene(nn.Module):
    """Whole-section ViT: inputs are all spot patches of a section (N, 3, H, W) and their array coords (N, 2)."""

    loss_name = "mse"
    input_kind = "section"
    uses_region = False

    def __init__(
        self,
        n_genes: int = 250,
        patch_px: int = 112,
        dim: int = 1024,
        depth: int = 8,
        heads: int = 16,
        mlp_dim: int | None = None,
        n_pos: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if int(n_genes) < 1 or int(patch_px) < 1:
            raise ConfigError(f"n_genes and patch_px must be positive, got {n_genes}, {patch_px}")
        self.n_genes, self.patch_px = int(n_genes), int(patch_px)
        self.patch_embed = nn.Linear(3 * self.patch_px * self.patch_px, dim)
        self.pos = PositionEmbedding(n_pos, dim)
        self.drop = nn.Dropout(dropout)
        self.vit = transformer(dim, depth, heads, mlp_dim or 2 * dim, dropout)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, self.n_genes))

    def init_output_bias(self, mean: Tensor) -> None:
        """Head bias = training mean of each gene (called by the section fitter before training)."""
        set_head_bias([self.head[-1]], mean)

    def forward(self, spot: Tensor, region: Tensor | None = None, coords: Tensor | None = None) -> ModelOutput:
        """All spots of one section in, one prediction per spot out; the region patch is ignored."""
        x = self.patch_embed(resize_patches(spot, self.patch_px).flatten(1)) + self.pos(coords)
        x = self.vit(self.drop(x).unsqueeze(0)).squeeze(0)
        return ModelOutput(pred=self.head(x))

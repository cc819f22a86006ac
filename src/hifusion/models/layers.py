"""Building blocks shared by several models: the output container, transformer encoders, gene-head starts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hifusion.errors import ConfigError

__all__ = ["ModelOutput", "set_head_bias", "transformer"]


@dataclass
class ModelOutput:
    """Output of a model that only predicts genes: ``pred`` is (B, G); the trainer relies on ``output.pred``."""

    pred: Tensor


def transformer(dim: int, depth: int, heads: int, mlp_dim: int, dropout: float) -> nn.TransformerEncoder:
    """Pre-norm ViT encoder blocks (GELU MLP), batch-first."""
    if dim % heads:
        raise ConfigError(f"dim ({dim}) must be divisible by heads ({heads})")
    layer = nn.TransformerEncoderLayer(dim, heads, mlp_dim, dropout, activation="gelu", batch_first=True,
                                       norm_first=True)
    return nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)


def set_head_bias(heads: list[nn.Linear], mean: Tensor) -> None:
    """Start gene heads at the training mean: whole-section models take one step per section per epoch, too few
    for Adam to move a zero bias to the label level (e.g. log proportions near -7) within a CPU budget."""
    with torch.no_grad():
        for h in heads:
            h.bias.copy_(torch.as_tensor(mean, dtype=h.bias.dtype))

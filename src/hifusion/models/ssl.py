"""Self-supervised objectives that pretrain an image encoder on unlabelled H&E tiles (`hifusion pretrain`).

BYOL (Grill et al. 2020): an online network (encoder -> projector -> predictor) predicts the projection that a
slowly moving copy of itself (the target: encoder -> projector, weights an exponential moving average of the
online ones) gives to another augmented view of the same tile. It needs no negative pairs, so unlike SimCLR it
works with the small batches two CPU cores afford. Heads and loss come from the maintained `lightly` package.

Only the online encoder's trunk is kept after pretraining; its state dict has the timm key layout that
`models.encoders.load_encoder_weights` reads for every model's `encoder_weights` option.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from hifusion.errors import ConfigError
from hifusion.models.encoders import Encoder
from hifusion.registries import Registry

__all__ = ["BYOL", "create_ssl", "list_ssl_methods", "momentum_at", "register_ssl"]

SSLBuilder = Callable[..., nn.Module]
_METHODS: Registry[SSLBuilder] = Registry("unknown pretraining method {name!r}; use one of {known}")


def register_ssl(name: str) -> Callable[[SSLBuilder], SSLBuilder]:
    """Register an objective `builder(encoder, **options)`: a module with `loss(v1, v2)`, `after_step(progress)`
    and an `encoder` attribute (the network that is kept)."""

    return _METHODS.register(name)


def list_ssl_methods() -> list[str]:
    return _METHODS.names()


def create_ssl(method: str, encoder: Encoder, **options: object) -> nn.Module:
    return _METHODS.get(method)(encoder, **options)


def momentum_at(progress: float, base: float) -> float:
    """Target momentum rising from `base` to 1 on a half cosine over the run (BYOL's schedule)."""
    p = min(max(float(progress), 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * p) + 1.0) / 2.0


@register_ssl("byol")
class BYOL(nn.Module):
    """Online encoder + projector + predictor; target encoder + projector updated by momentum (no gradients)."""

    def __init__(self, encoder: Encoder, hidden_dim: int = 4096, proj_dim: int = 256,
                 base_momentum: float = 0.99) -> None:
        super().__init__()
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules.heads import BYOLPredictionHead, BYOLProjectionHead

        if not 0.0 <= base_momentum < 1.0:
            raise ConfigError(f"BYOL base momentum must be in [0, 1), got {base_momentum}")
        self.encoder = encoder
        self.projector = BYOLProjectionHead(encoder.out_channels, hidden_dim, proj_dim)
        self.predictor = BYOLPredictionHead(proj_dim, hidden_dim, proj_dim)
        self.target_encoder = copy.deepcopy(encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in (*self.target_encoder.parameters(), *self.target_projector.parameters()):
            p.requires_grad_(False)
        self.base_momentum = float(base_momentum)
        self.criterion = NegativeCosineSimilarity()

    def _online(self, x: Tensor) -> Tensor:
        return self.predictor(self.projector(self.encoder(x).mean(dim=(2, 3))))

    @torch.no_grad()
    def _target(self, x: Tensor) -> Tensor:
        return self.target_projector(self.target_encoder(x).mean(dim=(2, 3)))

    def loss(self, v1: Tensor, v2: Tensor) -> Tensor:
        """Symmetric BYOL loss: each view's online prediction against the other view's target projection
        (negative cosine similarity, -1 at perfect agreement)."""
        p1, p2 = self._online(v1), self._online(v2)
        z1, z2 = self._target(v1), self._target(v2)
        return 0.5 * (self.criterion(p1, z2) + self.criterion(p2, z1))

    @torch.no_grad()
    def after_step(self, progress: float) -> float:
        """Move the target towards the online network; returns the momentum used."""
        from lightly.models.utils import update_momentum

        m = momentum_at(progress, self.base_momentum)
        update_momentum(self.encoder, self.target_encoder, m)
        update_momentum(self.projector, self.target_projector, m)
        return m

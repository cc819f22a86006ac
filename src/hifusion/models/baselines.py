"""Simple baselines: ST-Net (DenseNet-121 on the spot patch) and the mean profile (the floor every model must clear)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from hifusion.errors import ConfigError, InputError
from hifusion.models.encoders import PooledEncoderModel, create_encoder
from hifusion.models.layers import ModelOutput, set_head_bias
from hifusion.models.registry import register_model

__all__ = ["MeanProfile", "STNet"]


@register_model("stnet")
class STNet(PooledEncoderModel, nn.Module):
    """ST-Net (He et al. 2020): a CNN trunk on the spot patch, global average pooling, a linear head to genes.

    With `freeze_encoder` only the head trains, on the encoder's embeddings of the 8 D4 views of each stored patch,
    computed once (the embedding cache; `PooledEncoderModel`)."""

    loss_name = "mse"
    input_kind = "spot_region"

    def __init__(
        self,
        n_genes: int = 250,
        encoder: str = "densenet121",
        encoder_weights: str | Path | None = None,
        freeze_encoder: bool = False,
        encoder_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if int(n_genes) < 1:
            raise ConfigError(f"n_genes must be positive, got {n_genes}")
        self.n_genes = int(n_genes)
        self.encoder = create_encoder(encoder, weights=encoder_weights, frozen=freeze_encoder, **(encoder_kwargs or {}))
        self.encoder_source = (dict(encoder_kwargs or {}), encoder_weights)
        self.head = nn.Linear(self.encoder.embed_dim, self.n_genes)

    def init_output_bias(self, mean: Tensor) -> None:
        """Head bias = training mean of each gene, so training starts from the mean profile."""
        set_head_bias([self.head], mean)

    def forward(self, spot: Tensor, region: Tensor | None = None) -> ModelOutput:
        """Predict from the spot patch; the region patch is accepted for a uniform interface and ignored."""
        return self.from_features(self.features(spot))

    def from_features(self, f: Tensor) -> ModelOutput:
        return ModelOutput(pred=self.head(f))


@register_model("mean_profile")
class MeanProfile(nn.Module):
    """Predicts the training mean of every gene for every spot; the mean is a buffer so it is saved with the model."""

    loss_name = "mse"
    input_kind = "fit"

    def __init__(self, n_genes: int = 250) -> None:
        super().__init__()
        if int(n_genes) < 1:
            raise ConfigError(f"n_genes must be positive, got {n_genes}")
        self.n_genes = int(n_genes)
        self.register_buffer("mean", torch.zeros(self.n_genes))
        self.register_buffer("fitted", torch.tensor(False))

    def fit(self, y_train: np.ndarray) -> MeanProfile:
        """Store the per-gene mean of the training labels (N, G)."""
        y = np.asarray(y_train, dtype=np.float64)
        if y.ndim != 2 or y.shape[1] != self.n_genes or y.shape[0] == 0:
            raise InputError(f"mean_profile.fit needs labels of shape (N>0, {self.n_genes}), got {y.shape}")
        if not np.isfinite(y).all():
            raise InputError("mean_profile.fit: training labels contain NaN or inf")
        self.mean.copy_(torch.as_tensor(y.mean(axis=0), dtype=self.mean.dtype))
        self.fitted.fill_(True)
        return self

    def predict(self, n: int) -> np.ndarray:
        """The mean profile repeated for ``n`` spots: (n, G) float32."""
        self._check_fitted()
        return np.tile(self.mean.detach().cpu().numpy().astype(np.float32), (int(n), 1))

    def forward(self, spot: Tensor, region: Tensor | None = None) -> ModelOutput:
        """Same prediction for every spot of the batch, on the batch's device."""
        self._check_fitted()
        return ModelOutput(pred=self.mean.to(spot.device).unsqueeze(0).expand(spot.shape[0], -1))

    def _check_fitted(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError("MeanProfile must be fitted before predicting")

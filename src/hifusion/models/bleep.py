"""BLEEP (Xie et al. 2023): contrastive image/expression embedding; prediction by averaging retrieved training spots.

An image encoder (paper: ResNet-50) and a projection head map the spot patch, and a projection head maps the
expression profile, into one embedding space (dim 256). Training (loss ``bleep``): CLIP-style cross-entropy on
the expression-image similarity logits, with the paper's soft targets softmax((image-image + expr-expr
similarities) / 2 x temperature) instead of the identity (temperature 1). Prediction: the mean expression of the
``k`` training spots (paper 50; fewer if there are fewer) whose expression embeddings have the highest dot
product with the query's image embedding.
The training labels are a buffer (``reference``), set by the fitter (input kind ``retrieval``) before training;
their embeddings are recomputed from the current expression head whenever predicting, so every checkpoint predicts
alone. ``freeze_encoder`` keeps the image encoder fixed (a pretrained or foundation encoder): the heads then train on
its stored embeddings (the embedding cache), the encoder running once per section and D4 view instead of every
epoch. Memory: the reference is N_train x G floats (250 genes x 10^5 spots = 100 MB); otherwise as ST-Net with
the chosen encoder. CPU profile (configs): encoder resnet18, as the paper's ResNet-50 costs ~3x more per spot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hifusion.errors import ConfigError, InputError
from hifusion.models.encoders import PooledEncoderModel, create_encoder
from hifusion.models.layers import ModelOutput
from hifusion.models.registry import register_model

__all__ = ["BLEEP", "BLEEPOutput", "ProjectionHead"]


@dataclass
class BLEEPOutput(ModelOutput):
    """Retrieval prediction plus the image embedding the contrastive loss needs."""

    image_emb: Tensor | None = None


class ProjectionHead(nn.Module):
    """BLEEP/CLIP projection: Linear -> GELU -> Linear -> dropout, residual on the projection, LayerNorm."""

    def __init__(self, in_dim: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, dim)
        self.fc = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        p = self.proj(x)
        return self.norm(p + self.drop(self.fc(F.gelu(p))))


@register_model("bleep")
class BLEEP(PooledEncoderModel, nn.Module):
    """Spot-level contrastive model whose prediction is retrieval from the stored training spots.

    With `freeze_encoder` the image tower's encoder stays fixed and the projection heads train on its embeddings of
    the 8 D4 views of each stored patch, computed once (the embedding cache; `PooledEncoderModel`)."""

    loss_name = "bleep"
    input_kind = "retrieval"

    def __init__(
        self,
        n_genes: int = 250,
        encoder: str = "resnet50",
        encoder_weights: str | Path | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
        freeze_encoder: bool = False,
        proj_dim: int = 256,
        dropout: float = 0.1,
        temperature: float = 1.0,
        k: int = 50,
    ) -> None:
        super().__init__()
        if int(n_genes) < 1 or int(k) < 1 or float(temperature) <= 0:
            raise ConfigError(f"n_genes, k and temperature must be positive, got {n_genes}, {k}, {temperature}")
        self.n_genes, self.k, self.temperature = int(n_genes), int(k), float(temperature)
        self.encoder = create_encoder(encoder, weights=encoder_weights, frozen=freeze_encoder, **(encoder_kwargs or {}))
        self.encoder_source = (dict(encoder_kwargs or {}), encoder_weights)
        self.image_head = ProjectionHead(self.encoder.embed_dim, proj_dim, dropout)
        self.expr_head = ProjectionHead(self.n_genes, proj_dim, dropout)
        self.register_buffer("reference", torch.zeros(0, self.n_genes))

    def set_reference(self, y_train: np.ndarray | Tensor) -> BLEEP:
        """Store the training labels (N, G) that prediction retrieves from."""
        y = torch.as_tensor(np.asarray(y_train, dtype=np.float32))
        if y.ndim != 2 or y.shape[1] != self.n_genes or y.shape[0] == 0 or not torch.isfinite(y).all():
            raise InputError(f"bleep needs finite training labels of shape (N>0, {self.n_genes}), got {tuple(y.shape)}")
        self.reference = y.to(self.reference.device)
        return self

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        ref = state_dict.get(prefix + "reference")
        if ref is not None:  # its length is the number of training spots, unknown when the model is built
            self.reference = torch.empty_like(ref, device=self.reference.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def embed_image(self, spot: Tensor) -> Tensor:
        return self.image_head(self.features(spot))

    def embed_expression(self, y: Tensor) -> Tensor:
        return self.expr_head(y)

    @torch.no_grad()
    def retrieve(self, image_emb: Tensor) -> Tensor:
        """Mean label of the k reference spots most similar (dot product) to each image embedding."""
        if self.reference.shape[0] == 0:
            raise RuntimeError("BLEEP has no reference spots; call set_reference(training labels) first")
        ref = self.reference.to(image_emb.device)
        emb = self.embed_expression(ref.to(image_emb.dtype))
        k = min(self.k, ref.shape[0])
        idx = (image_emb @ emb.T).topk(k, dim=1).indices
        return ref[idx].mean(1).to(image_emb.dtype)

    def forward(self, spot: Tensor, region: Tensor | None = None) -> BLEEPOutput:
        """Image embedding and (when a reference is stored) the retrieval prediction; region ignored."""
        return self.from_features(self.features(spot))

    def from_features(self, f: Tensor) -> BLEEPOutput:
        """`forward` from the encoder embedding (B, C)."""
        img = self.image_head(f)
        has_ref = self.reference.shape[0] > 0
        pred = self.retrieve(img.detach()) if has_ref else img.new_zeros(img.shape[0], self.n_genes)
        return BLEEPOutput(pred=pred, image_emb=img)

"""Output containers shared by all models, so the trainer can rely on ``output.pred``."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class ModelOutput:
    """Output of a model that only predicts genes: ``pred`` is (B, G)."""

    pred: Tensor

"""What orchestration needs from a model and from a predictor, as `typing.Protocol`s.

Training, benchmarking and whole-slide prediction never name a concrete class: a registered model satisfies
`ExpressionModel` (its `input_kind` is the registry's, set by `models.registry.register_model` / `create_model`),
and both `inference.Predictor` and the Lightning module satisfy `BatchPredictor`, the interface
`inference.predict_loader`, `preprocess.adabn` and the fitters' row predictors use.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch

from hifusion.checkpoint_meta import CheckpointMeta

Batch = dict[str, torch.Tensor]


class ExpressionModel(Protocol):
    """A registered model: `forward(spot, region[, coords]) -> ModelOutput` (with `.pred`, (B, n_genes)).

    `input_kind` (how it is fitted) and `loss_name` come from its registry entry (`models.registry.INPUT_KINDS`);
    optional capabilities (`uses_region`, `adapts_batchnorm`, `features`/`head`, `fit`, `set_reference`) are read
    where they are used, with their documented defaults."""

    input_kind: str
    loss_name: str

    def __call__(self, spot: torch.Tensor, region: torch.Tensor | None, *coords: torch.Tensor) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]: ...

    def eval(self) -> Any: ...


class BatchPredictor(Protocol):
    """A model with its checkpoint metadata and the shared preprocessing: uint8 batches in, label units out."""

    model: Any  # an `ExpressionModel` (typed Any: nn.Module's attribute lookup is dynamic)
    meta: CheckpointMeta
    training: bool

    def preprocess(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def predict_batch(self, batch: Batch, tta: bool = False) -> torch.Tensor: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def modules(self) -> Iterator[torch.nn.Module]: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

"""Training losses by name. A model class names its loss in `loss_name`; the trainer looks it up here."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hifusion.errors import ConfigError

LossFn = Callable[[nn.Module, object, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]
_LOSSES: dict[str, LossFn] = {}


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    def deco(fn: LossFn) -> LossFn:
        _LOSSES[name] = fn
        return fn

    return deco


def get_loss(name: str) -> LossFn:
    if name not in _LOSSES:
        raise ConfigError(f"unknown loss '{name}' (known: {', '.join(sorted(_LOSSES))})")
    return _LOSSES[name]


@register_loss("mse")
def mse_loss(model: nn.Module, output: object, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Plain MSE on the final prediction."""
    loss = F.mse_loss(output.pred.float(), target)
    return loss, {"final_mse": loss.detach()}


@register_loss("hifusion")
def hifusion_objective(
    model: nn.Module, output: object, target: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DESIGN.md section 2: final MSE + mean level MSE + align_weight * alignment; options read off the model."""
    from hifusion.models.hifusion import hifusion_loss

    return hifusion_loss(
        output,
        target,
        align_weight=float(getattr(model, "align_weight", 0.5)),
        use_alignment=bool(getattr(model, "use_alignment", True)),
    )

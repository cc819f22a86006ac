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


@register_loss("hist2st")
def hist2st_objective(
    model: nn.Module, output: object, target: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Hist2ST: MSE + zinb_weight * ZINB NLL + distill_weight * MSE(augmented views, detached prediction).

    Both extra terms are off unless the model's options switch them on (see models.hist2st).
    """
    from hifusion.models.hist2st import zinb_nll

    pred = output.pred.float()
    mse = F.mse_loss(pred, target)
    total, parts = mse, {"final_mse": mse.detach()}
    zinb = getattr(output, "zinb", None)
    if zinb is not None:
        z = zinb_nll(target, *(t.float() for t in zinb))
        total = total + float(getattr(model, "zinb_weight", 0.0)) * z
        parts["zinb"] = z.detach()
    views = getattr(output, "views", None)
    if views:
        d = torch.stack([F.mse_loss(v.float(), pred.detach()) for v in views]).mean()
        total = total + float(getattr(model, "distill_weight", 0.0)) * d
        parts["distill"] = d.detach()
    return total, parts


@register_loss("triplex")
def triplex_objective(
    model: nn.Module, output: object, target: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TRIPLEX: MSE(fused) + branch_weight * sum_b [(1 - a) MSE(b, y) + a MSE(b, fused.detach())].

    The branch terms supervise the target, neighbour and global heads directly and distil the fused prediction
    into them (a = ``distill_alpha``, 0.3; ``branch_weight`` 1/3 averages the three branches).
    """
    pred = output.pred.float()
    mse = F.mse_loss(pred, target)
    total, parts = mse, {"final_mse": mse.detach()}
    branches = getattr(output, "branches", None) or []
    if branches:
        a = float(getattr(model, "distill_alpha", 0.3))
        w = float(getattr(model, "branch_weight", 1.0 / 3.0))
        sup = torch.stack([F.mse_loss(b.float(), target) for b in branches]).sum()
        dis = torch.stack([F.mse_loss(b.float(), pred.detach()) for b in branches]).sum()
        total = total + w * ((1.0 - a) * sup + a * dis)
        parts["branch_mse"] = (sup / len(branches)).detach()
        parts["branch_distill"] = (dis / len(branches)).detach()
    return total, parts


@register_loss("bleep")
def bleep_objective(
    model: nn.Module, output: object, target: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BLEEP's contrastive loss between the batch's image embeddings and the embeddings of its labels."""
    from hifusion.models.bleep import bleep_contrastive_loss

    image = output.image_emb.float()
    expr = model.embed_expression(target.to(image.dtype)).float()
    loss = bleep_contrastive_loss(image, expr, float(getattr(model, "temperature", 1.0)))
    return loss, {"contrastive": loss.detach()}

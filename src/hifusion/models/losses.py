"""Every training loss, by name: a model class names its loss in `loss_name` and the trainer looks it up here.

Objectives read their weights off the model (set from its options), so a default lives in one place: the model's
constructor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hifusion.registries import Registry

__all__ = ["bleep_contrastive_loss", "get_loss", "hifusion_loss", "register_loss", "zinb_nll"]

LossFn = Callable[[nn.Module, object, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]
_LOSSES: Registry[LossFn] = Registry("unknown loss '{name}' (known: {known})")


def register_loss(name: str) -> Callable[[LossFn], LossFn]:
    return _LOSSES.register(name)


def get_loss(name: str) -> LossFn:
    return _LOSSES.get(name)


# -------------------------------------------------------------------------------------------- loss functions
def hifusion_loss(
    output: Any, target: Tensor, align_weight: float = 0.5, use_alignment: bool = True
) -> tuple[Tensor, dict[str, Tensor]]:
    """MSE(final) + mean over levels of MSE(level) + align_weight * sum over finer levels of mean |map_1 - map_k|.

    Computed in float32 so it is safe under autocast. The alignment term has no detach: it pulls every level.
    Returns (total, parts) with parts 'final_mse', 'level_mse' and, when used, 'align'.
    """
    target = target.float()
    final_mse = F.mse_loss(output.pred.float(), target)
    level_mse = torch.stack([F.mse_loss(p.float(), target) for p in output.level_preds]).mean()
    parts = {"final_mse": final_mse, "level_mse": level_mse}
    total = final_mse + level_mse
    if use_alignment and len(output.level_maps) > 1:
        ref = output.level_maps[0].float()
        align = torch.stack([(ref - m.float()).abs().mean() for m in output.level_maps[1:]]).sum()
        parts["align"] = align
        total = total + align_weight * align
    return total, parts


def zinb_nll(y: Tensor, mean: Tensor, disp: Tensor, pi: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean negative log-likelihood of a zero-inflated negative binomial (continuous in y via lgamma)."""
    y = y.clamp_min(0)
    t1 = torch.lgamma(disp + eps) + torch.lgamma(y + 1.0) - torch.lgamma(y + disp + eps)
    t2 = (disp + y) * torch.log1p(mean / (disp + eps)) + y * (torch.log(disp + eps) - torch.log(mean + eps))
    nb = t1 + t2 - torch.log(1.0 - pi + eps)
    zero_nb = torch.pow(disp / (disp + mean + eps), disp)
    zero = -torch.log(pi + (1.0 - pi) * zero_nb + eps)
    return torch.where(y < 1e-8, zero, nb).mean()


def bleep_contrastive_loss(image: Tensor, expr: Tensor, temperature: float) -> Tensor:
    """CLIP loss with BLEEP's soft targets (symmetric cross-entropy over the batch)."""
    logits = expr @ image.T / temperature
    targets = torch.softmax((image @ image.T + expr @ expr.T) / 2 * temperature, dim=-1)
    expr_loss = -(targets * F.log_softmax(logits, dim=-1)).sum(1)
    image_loss = -(targets.T * F.log_softmax(logits.T, dim=-1)).sum(1)
    return ((expr_loss + image_loss) / 2).mean()


# ------------------------------------------------------------------------ objectives: (model, output, target)
@register_loss("mse")
def mse_loss(model: nn.Module, output: object, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Plain MSE on the final prediction."""
    loss = F.mse_loss(output.pred.float(), target)
    return loss, {"final_mse": loss.detach()}


@register_loss("hifusion")
def hifusion_objective(
    model: nn.Module, output: object, target: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """HiFusion: final MSE + mean level MSE + align_weight * alignment; options read off the model."""
    return hifusion_loss(output, target, align_weight=model.align_weight, use_alignment=model.use_alignment)


@register_loss("hist2st")
def hist2st_objective(
    model: nn.Module, output: object, target: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Hist2ST: MSE + zinb_weight * ZINB NLL + distill_weight * MSE(augmented views, detached prediction).

    Both extra terms are off unless the model's options switch them on (see models.hist2st).
    """
    pred = output.pred.float()
    mse = F.mse_loss(pred, target)
    total, parts = mse, {"final_mse": mse.detach()}
    zinb = getattr(output, "zinb", None)
    if zinb is not None:
        z = zinb_nll(target, *(t.float() for t in zinb))
        total = total + model.zinb_weight * z
        parts["zinb"] = z.detach()
    views = getattr(output, "views", None)
    if views:
        d = torch.stack([F.mse_loss(v.float(), pred.detach()) for v in views]).mean()
        total = total + model.distill_weight * d
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
        a, w = model.distill_alpha, model.branch_weight
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
    image = output.image_emb.float()
    expr = model.embed_expression(target.to(image.dtype)).float()
    loss = bleep_contrastive_loss(image, expr, model.temperature)
    return loss, {"contrastive": loss.detach()}

"""Tiny whole-section inputs for the section-model tests: a 4 x 3 array of spots with patches and labels."""

from __future__ import annotations

import torch
from torch import nn

from hifusion.models.losses import get_loss


def section_batch(px: int = 16, g: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(spot patches (12, 3, px, px), array coords (12, 2), labels (12, g)) of one section."""
    xs, ys = torch.meshgrid(torch.arange(4), torch.arange(3), indexing="ij")
    coords = torch.stack([xs.flatten() + 3, ys.flatten() + 5], 1)
    return torch.randn(12, 3, px, px), coords, torch.randn(12, g)


def section_step(model: nn.Module, spot: torch.Tensor, coords: torch.Tensor, y: torch.Tensor) -> dict:
    """One Adam step with the model's registered loss; returns the loss parts (plus 'loss')."""
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    total, parts = get_loss(model.loss_name)(model, model(spot, None, coords), y)
    opt.zero_grad()
    total.backward()
    opt.step()
    return {"loss": total.detach(), **parts}

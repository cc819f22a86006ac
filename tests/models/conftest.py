"""Shared helpers for the model tests: tiny inputs and one optimisation step."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from hifusion.models import hifusion_loss


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _batch(spot_px: int = 64, region_px: int = 64, b: int = 2, g: int = 6) -> tuple[torch.Tensor, ...]:
    """A random (spot, region, target) batch."""
    return torch.randn(b, 3, spot_px, spot_px), torch.randn(b, 3, region_px, region_px), torch.randn(b, g)


def _train_step(model: nn.Module, spot: torch.Tensor, region: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One Adam step with the model's loss; returns the loss (checked finite by callers)."""
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    out = model(spot, region)
    if getattr(model, "loss_name", "mse") == "hifusion":
        loss, _ = hifusion_loss(out, target, model.align_weight, model.use_alignment)
    else:
        loss = nn.functional.mse_loss(out.pred, target)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()


@pytest.fixture
def batch() -> Callable[..., tuple[torch.Tensor, ...]]:
    """Factory of random (spot, region, target) batches."""
    return _batch


@pytest.fixture
def train_step() -> Callable[..., torch.Tensor]:
    """One optimisation step with the model's own loss."""
    return _train_step

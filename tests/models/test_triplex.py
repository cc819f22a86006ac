from __future__ import annotations

import torch

from hifusion.models import create_model
from tests.models._section import section_batch, section_step


def test_triplex_step_branches_and_predict() -> None:
    m = create_model("triplex", n_genes=5, encoder="resnet10", dim=16, heads=2, neighbour_depth=1, global_depth=1,
                     n_pos=16)
    spot, coords, y = section_batch(px=32)
    parts = section_step(m, spot, coords, y)
    assert {"loss", "final_mse", "branch_mse", "branch_distill"} <= set(parts)
    assert all(torch.isfinite(v) for v in parts.values())
    m.eval()
    out = m(spot, None, coords)
    assert out.pred.shape == (12, 5) and out.branches == []
    assert m(spot[:3]).pred.shape == (3, 5)  # without coordinates: the spot alone is its neighbourhood

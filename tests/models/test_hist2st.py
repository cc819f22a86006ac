from __future__ import annotations

import pytest
import torch

from hifusion.errors import ConfigError
from hifusion.models import create_model
from hifusion.models.spatial import grid_neighbours, knn_adjacency
from tests.models._section import section_batch, section_step

TINY = dict(n_genes=5, patch_px=14, channels=8, patch=7, kernel=3, conv_depth=1, dim=16, depth=1, heads=2,
            gnn_depth=1, n_pos=16)


@pytest.mark.parametrize("gnn", ["gcn", "gat"])
def test_hist2st_mse_step_and_predict(gnn: str) -> None:
    m = create_model("hist2st", gnn=gnn, **TINY)
    spot, coords, y = section_batch(px=16)
    parts = section_step(m, spot, coords, y)
    assert torch.isfinite(parts["loss"]) and set(parts) == {"loss", "final_mse"}
    m.eval()
    assert m(spot, None, coords).pred.shape == (12, 5)


def test_hist2st_zinb_and_distillation_terms() -> None:
    m = create_model("hist2st", zinb_weight=0.25, distill_weight=0.5, distill_views=2, **TINY)
    spot, coords, y = section_batch(px=16)
    parts = section_step(m, spot, coords, y.abs())
    assert {"zinb", "distill"} <= set(parts) and all(torch.isfinite(v) for v in parts.values())


def test_spot_graphs() -> None:
    _, coords, _ = section_batch()
    adj = knn_adjacency(coords, 4)
    assert torch.equal(adj, adj.T) and not adj.diagonal().any() and adj.sum(1).min() >= 2
    idx, valid = grid_neighbours(coords, 1)
    assert idx.shape == (12, 9) and valid[:, 4].all() and torch.equal(idx[:, 4], torch.arange(12))
    assert int(valid[0].sum()) == 4  # a corner spot of the 4 x 3 array has itself + 3 neighbours
    with pytest.raises(ConfigError):
        create_model("hist2st", gnn="sage", **TINY)

from __future__ import annotations

import torch

from hifusion.models import create_model, model_entry
from tests.models._section import section_batch, section_step


def test_histogene_step_and_predict() -> None:
    assert model_entry("histogene").input_kind == "section"
    m = create_model("histogene", n_genes=5, patch_px=8, dim=16, depth=1, heads=2, n_pos=16)
    spot, coords, y = section_batch(px=16)
    assert torch.isfinite(section_step(m, spot, coords, y)["loss"])
    m.eval()
    pred = m(spot, None, coords).pred
    assert pred.shape == (12, 5) and torch.isfinite(pred).all()
    # positions matter; a bare batch (no coordinates) still runs
    assert not torch.allclose(pred, m(spot, None, coords.flip(0)).pred)
    assert m(spot).pred.shape == (12, 5)


def test_section_heads_start_at_the_training_mean() -> None:
    mean = torch.linspace(-8, -2, 5)
    for name, opts in (("histogene", dict(patch_px=8, dim=16, depth=1, heads=2)),
                       ("hist2st", dict(patch_px=14, channels=8, dim=16, depth=1, heads=2, gnn_depth=1)),
                       ("triplex", dict(encoder="resnet10", dim=16, heads=2, neighbour_depth=1, global_depth=1))):
        m = create_model(name, n_genes=5, **opts)
        m.init_output_bias(mean)
        m.eval()
        spot, coords, _ = section_batch(px=32)
        pred = m(spot, None, coords).pred
        assert (pred.mean(0) - mean).abs().max() < 2.0, name

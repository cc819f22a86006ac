from __future__ import annotations

import numpy as np
import pytest
import torch

from hifusion.models import create_model, model_entry
from hifusion.models.losses import bleep_contrastive_loss, get_loss


def test_bleep_step_retrieval_and_reloaded_reference() -> None:
    assert model_entry("bleep").input_kind == "retrieval"
    m = create_model("bleep", n_genes=4, encoder="resnet10", proj_dim=8, k=3)
    spot, y = torch.randn(6, 3, 32, 32), torch.randn(6, 4)
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    loss, parts = get_loss("bleep")(m, m(spot), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and "contrastive" in parts
    m.eval()
    with pytest.raises(RuntimeError):
        m.retrieve(torch.zeros(1, 8))
    ref = np.arange(20, dtype=np.float32).reshape(5, 4)
    m.set_reference(ref)
    pred = m(spot).pred
    assert pred.shape == (6, 4)
    # every prediction is the mean of 3 of the 5 reference rows
    sums = {float(ref[list(c)].mean(0).sum()) for c in __import__("itertools").combinations(range(5), 3)}
    assert all(any(abs(float(p.sum()) - s) < 1e-3 for s in sums) for p in pred)
    m2 = create_model("bleep", n_genes=4, encoder="resnet10", proj_dim=8, k=3)
    m2.load_state_dict(m.state_dict())  # the reference's length comes from the checkpoint
    m2.eval()
    assert torch.allclose(m2(spot).pred, pred)


def test_soft_targets_loss_is_minimal_for_matching_embeddings() -> None:
    e = torch.nn.functional.normalize(torch.randn(5, 8), dim=1) * 4
    assert bleep_contrastive_loss(e, e, 1.0) < bleep_contrastive_loss(e, e.flip(0), 1.0)

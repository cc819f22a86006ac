from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from hifusion.errors import InputError
from hifusion.models import create_model

Batch = Callable[..., tuple[torch.Tensor, ...]]
Step = Callable[..., torch.Tensor]


def test_stnet_step_and_ignores_region(batch: Batch, train_step: Step) -> None:
    m = create_model("stnet", n_genes=6)
    assert m.encoder.out_channels == 1024
    spot, region, y = batch(spot_px=32, region_px=32)
    assert torch.isfinite(train_step(m, spot, region, y))
    m.eval()
    assert m(spot, region).pred.shape == (2, 6)
    assert torch.equal(m(spot, region).pred, m(spot, None).pred)


def test_stnet_other_encoder(batch: Batch, train_step: Step) -> None:
    m = create_model("stnet", n_genes=4, encoder="resnet10")
    spot, region, y = batch(spot_px=32, region_px=32, g=4)
    assert torch.isfinite(train_step(m, spot, region, y))


def test_mean_profile_fit_predict_save() -> None:
    y = np.arange(12, dtype=np.float32).reshape(4, 3)
    m = create_model("mean_profile", n_genes=3)
    with pytest.raises(RuntimeError):
        m.predict(2)
    m.fit(y)
    np.testing.assert_allclose(m.predict(2), np.tile(y.mean(0), (2, 1)))
    out = m(torch.zeros(5, 3, 8, 8)).pred
    assert out.shape == (5, 3)
    m2 = create_model("mean_profile", n_genes=3)
    m2.load_state_dict(m.state_dict())
    np.testing.assert_allclose(m2.predict(1)[0], y.mean(0))
    with pytest.raises(InputError):
        m.fit(np.zeros((4, 2)))

from __future__ import annotations

import numpy as np
import pytest
import torch

from hifusion.errors import ConfigError
from hifusion.models import create_model, model_entry


def test_linear_probe_folds_the_sklearn_pipeline() -> None:
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    assert model_entry("linear_probe").input_kind == "features"
    m = create_model("linear_probe", n_genes=4, encoder="resnet10", n_components=8, alpha="hest")
    assert not any(p.requires_grad for p in m.parameters())
    spot = torch.randn(20, 3, 32, 32)
    with pytest.raises(RuntimeError):
        m(spot)
    x = m.features(spot).numpy()
    y = np.random.default_rng(0).normal(size=(20, 4))
    m.fit_features(x, y)
    s = StandardScaler().fit(x)
    p = PCA(8, random_state=0).fit(s.transform(x))
    ref = Ridge(alpha=100 / (8 * 4)).fit(p.transform(s.transform(x)), y).predict(p.transform(s.transform(x)))
    np.testing.assert_allclose(m(spot).pred.numpy(), ref, rtol=1e-3, atol=1e-3)
    m2 = create_model("linear_probe", n_genes=4, encoder="resnet10", n_components=8, alpha="hest")
    m2.load_state_dict(m.state_dict())
    assert torch.allclose(m2(spot).pred, m(spot).pred)


def test_linear_probe_alpha_options() -> None:
    m = create_model("linear_probe", n_genes=3, encoder="resnet10", alpha="cv")
    x, y = np.random.default_rng(1).normal(size=(6, 512)), np.random.default_rng(2).normal(size=(6, 3))
    m.fit_features(x, y)  # n_components falls back to the 6 samples
    assert float(m.alpha_used) > 0
    with pytest.raises(ConfigError):
        create_model("linear_probe", alpha="loo")


def test_linear_probe_is_not_moved_by_adabn() -> None:
    """Its ridge map was fitted on the encoder's own BatchNorm statistics: re-estimated ones would leave it (a random
    ResNet's features changed scale by orders of magnitude, MSE ~10^4 in the demo), so AdaBN leaves the probe as is."""
    from types import SimpleNamespace

    from hifusion.preprocess import adabn

    torch.manual_seed(0)
    m = create_model("linear_probe", n_genes=3, encoder="resnet10", n_components=4, alpha="hest").eval()
    spot = torch.randn(8, 3, 32, 32)
    m.fit_features(m.features(spot).numpy(), np.random.default_rng(0).normal(size=(8, 3)))
    plain = m(spot).pred
    owner = SimpleNamespace(model=m)
    target = [torch.randn(8, 3, 32, 32) * 2 + 1]
    with adabn(owner, target, lambda b: owner.model(b)):
        assert owner.model is m
        assert torch.equal(owner.model(spot).pred, plain)
    assert torch.equal(m(spot).pred, plain)

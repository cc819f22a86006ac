from __future__ import annotations

import pytest
from torch import nn

from hifusion.errors import ConfigError
from hifusion.models import HiFusion, create_model, list_models, model_entry, register_model
from hifusion.models import registry as reg


def test_known_models_and_entries() -> None:
    assert {"hifusion", "stnet", "mean_profile"} <= set(list_models())
    e = model_entry("hifusion")
    assert e.builder is HiFusion and e.loss_name == "hifusion" and e.input_kind == "spot_region"
    assert model_entry("stnet").loss_name == "mse"
    assert model_entry("mean_profile").input_kind == "fit"


def test_create_by_name() -> None:
    m = create_model("hifusion", n_genes=3, levels=[1, 4], use_ccf=False, embed_dim=32)
    assert isinstance(m, HiFusion) and m.n_genes == 3


def test_unknown_name_lists_known() -> None:
    with pytest.raises(ConfigError, match="known models: .*hifusion"):
        create_model("no_such_model")


def test_unknown_kwarg_names_model_and_key() -> None:
    with pytest.raises(ConfigError, match=r"'hifusion'.*'n_gene'"):
        create_model("hifusion", n_gene=5)


def test_register_factory_function() -> None:
    @register_model("_test_linear", loss_name="mse")
    def build(n_genes: int = 2) -> nn.Module:
        return nn.Linear(4, n_genes)

    try:
        assert "_test_linear" in list_models()
        assert create_model("_test_linear", n_genes=3).out_features == 3
        assert model_entry("_test_linear").input_kind == "spot_region"
        with pytest.raises(ConfigError, match="'_test_linear'.*'bad'"):
            create_model("_test_linear", bad=1)
        with pytest.raises(ValueError, match="already registered"):
            register_model("_test_linear")(lambda: nn.Identity())
    finally:
        reg._REGISTRY.remove("_test_linear")


def test_options_read_from_sources_match_the_registry() -> None:
    """The config-time option check (`model_options`, ast) sees what `create_model` checks (inspect.signature)."""
    from hifusion.model_options import model_options

    static = model_options()
    assert set(static) == set(list_models())
    for name in list_models():
        assert static[name] == tuple(model_entry(name).parameters()), name

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hifusion.config import Config, apply_override, load_config, parse_config
from hifusion.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")) + [REPO / "src/hifusion/configs/demo.yaml"])
def test_shipped_configs_validate(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.benchmark_models()[-1].name == "mean_profile" or any(
        m.name == "mean_profile" for m in cfg.benchmark_models()
    )
    # the resolved config round-trips through YAML
    again = parse_config(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


def test_unknown_key_and_wrong_type_name_the_key(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"data": {"cache": "x", "cahce": 1}}))
    with pytest.raises(ConfigError, match=r"c\.yaml.*data\.cahce"):
        load_config(p)
    p.write_text(yaml.safe_dump({"data": {"cache": "x"}, "train": {"lr": "fast"}}))
    with pytest.raises(ConfigError, match="train.lr"):
        load_config(p)


def test_overrides_and_model_train_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"data": {"cache": "x"}, "models": [{"name": "stnet", "train": {"lr": 0.01}}]}))
    cfg = load_config(p, ["train.epochs=3", "protocol.name=loso"])
    assert cfg.train.epochs == 3 and cfg.protocol.name == "loso"
    assert cfg.train_for(cfg.models[0]).lr == 0.01 and cfg.train_for(cfg.models[0]).epochs == 3
    bad = Config.model_validate({"data": {"cache": "x"}, "models": [{"name": "stnet", "train": {"nope": 1}}]})
    with pytest.raises(ConfigError, match="stnet"):
        bad.train_for(bad.models[0])
    d: dict = {}
    apply_override(d, "a.b=[1, 2]")
    assert d == {"a": {"b": [1, 2]}}


def test_fixed_protocol_rejects_overlap() -> None:
    with pytest.raises(ConfigError, match="both train and test"):
        parse_config({"data": {"cache": "x"}, "protocol": {"name": "fixed", "train": ["C2"], "test": ["C2"]}})


def test_misspelt_option_in_last_model_fails_at_load_naming_both(tmp_path: Path) -> None:
    """Options are checked against each model's constructor when the config loads, not after earlier models train."""
    p = tmp_path / "c.yaml"
    models = [{"name": "hifusion", "options": {"tokens": 2}}, {"name": "stnet"},
              {"name": "hist2st", "options": {"dim": 64, "dpeth": 2}}]
    p.write_text(yaml.safe_dump({"data": {"cache": str(tmp_path / "no-cache")}, "models": models}))
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"models\.2.*'hist2st'.*'dpeth'"):
        load_config(p)
    assert time.perf_counter() - start < 2.0
    with pytest.raises(ConfigError, match="data.normalise"):
        parse_config({"data": {"cache": "x"}, "model": {"name": "stnet", "options": {"normalise": "dataset"}}})
    ok = parse_config({"data": {"cache": "x"}, "model": {"name": "stnet", "options": {"encoder": "resnet10"}}})
    assert ok.model.options == {"encoder": "resnet10"}


def test_loading_a_config_imports_no_torch() -> None:
    """What keeps the option check (and `hifusion --help`) fast: a fresh process loads a config without torch."""
    code = ("import sys; from hifusion.config import parse_config; "
            "parse_config({'data': {'cache': 'x'}, 'models': [{'name': 'triplex', 'options': {'dim': 8}}]}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, env=env)

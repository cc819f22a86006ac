"""The generic `Registry` behind the model, encoder, preset, loss, fitter and SSL registries."""

from __future__ import annotations

import pytest

from hifusion.errors import ConfigError
from hifusion.registries import Registry


def test_registry_adds_finds_and_names_the_known_ones() -> None:
    reg: Registry[int] = Registry("unknown thing {name!r}; known: {known}")
    reg.register("b")(2)
    assert reg.add("a", 1) == 1
    assert "a" in reg and "c" not in reg
    assert reg.get("b") == 2 and reg.find("c") is None
    assert reg.names() == ["a", "b"] and reg.values() == [2, 1]  # names sorted, entries in registration order
    with pytest.raises(ConfigError, match=r"unknown thing 'c'; known: a, b"):
        reg.get("c")
    reg.remove("a")
    assert reg.names() == ["b"]

"""Model registry: models are built by name from configuration, so the CLI and benchmark need no imports per model."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

from hifusion.errors import ConfigError
from hifusion.registries import Registry

__all__ = ["ModelEntry", "create_model", "list_models", "model_entry", "register_model"]

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])

# spot_region: batches of spots; fit: closed form on labels; section: one whole section per batch (with array
# coordinates); features: closed form on frozen-encoder features; retrieval: spot batches + stored training labels
INPUT_KINDS = ("spot_region", "fit", "section", "features", "retrieval")


@dataclass(frozen=True)
class ModelEntry:
    """What the trainer needs to know about a registered model before building it."""

    name: str
    builder: Callable[..., nn.Module]
    loss_name: str
    input_kind: str

    def parameters(self) -> dict[str, inspect.Parameter]:
        """Keyword arguments the builder accepts (empty dict means it takes ``**kwargs``)."""
        target = self.builder.__init__ if inspect.isclass(self.builder) else self.builder
        params = dict(inspect.signature(target).parameters)
        params.pop("self", None)
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return {}
        return {k: p for k, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL}


_REGISTRY: Registry[ModelEntry] = Registry("unknown model {name!r}; known models: {known}")


def register_model(
    name: str, *, loss_name: str | None = None, input_kind: str | None = None
) -> Callable[[Builder], Builder]:
    """Register a model class or factory under ``name``.

    ``loss_name`` and ``input_kind`` default to the builder's class attributes of the same name
    (``'mse'`` and ``'spot_region'`` when absent).
    """

    def decorator(builder: Builder) -> Builder:
        if name in _REGISTRY and _REGISTRY.get(name).builder is not builder:
            raise ValueError(f"model name {name!r} is already registered")
        loss = loss_name or getattr(builder, "loss_name", "mse")
        kind = input_kind or getattr(builder, "input_kind", "spot_region")
        if kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {kind!r}")
        _REGISTRY.add(name, ModelEntry(name=name, builder=builder, loss_name=loss, input_kind=kind))
        if inspect.isclass(builder):  # instances built directly agree with the registry
            builder.input_kind, builder.loss_name = kind, loss  # type: ignore[attr-defined]
        return builder

    return decorator


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return _REGISTRY.names()


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; unknown names are a configuration error listing the known ones."""
    return _REGISTRY.get(name)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model ``name`` with ``kwargs``; unknown keyword arguments are a configuration error.

    The model carries its entry's ``input_kind`` and ``loss_name`` (`contracts.ExpressionModel`): the registry is
    the one source of both, factories included."""
    entry = model_entry(name)
    params = entry.parameters()
    if params:
        bad = sorted(set(kwargs) - set(params))
        if bad:
            raise ConfigError(
                f"model {name!r} has no option(s) {', '.join(map(repr, bad))}; valid options: {', '.join(params)}"
            )
    model = entry.builder(**kwargs)
    model.input_kind, model.loss_name = entry.input_kind, entry.loss_name
    return model

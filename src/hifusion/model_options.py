"""The options each registered model accepts, read from the model sources without importing them.

A config is checked against these when it is loaded, before any cache is prepared or model trained, so a misspelt
option in the last model of a benchmark fails in a fraction of a second instead of after the models before it have
trained. Importing the models would pull in torch and timm (seconds); parsing their constructors with `ast` does
not. `tests/models/test_registry.py` checks that this reading agrees with the registry's `inspect.signature` of
every model, and `create_model` checks again at build time (models registered from outside the package included).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
SET_BY_TRAINER = ("n_genes",)  # constructor arguments that come from the data, not from the config


def _register_name(node: ast.ClassDef | ast.FunctionDef) -> str | None:
    for dec in node.decorator_list:
        if (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Name) and dec.func.id == "register_model"
                and dec.args and isinstance(dec.args[0], ast.Constant) and isinstance(dec.args[0].value, str)):
            return dec.args[0].value
    return None


def _keywords(fn: ast.FunctionDef) -> tuple[str, ...] | None:
    """Keyword arguments a constructor or factory accepts; None when it takes **kwargs (anything goes)."""
    if fn.args.kwarg is not None:
        return None
    names = [a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs]
    return tuple(n for n in names if n not in ("self", "cls"))


def _builder_keywords(node: ast.ClassDef | ast.FunctionDef) -> tuple[str, ...] | None:
    if isinstance(node, ast.FunctionDef):
        return _keywords(node)
    init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    return None if init is None else _keywords(init)  # an inherited constructor: checked at build time only


@cache
def model_options() -> dict[str, tuple[str, ...] | None]:
    """Registered model name -> the options its builder accepts (None: not known statically)."""
    found: dict[str, tuple[str, ...] | None] = {}
    for path in sorted(MODELS_DIR.glob("*.py")):
        for node in ast.parse(path.read_text(), filename=str(path)).body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and (name := _register_name(node)):
                found[name] = _builder_keywords(node)
    return found


def option_problem(name: str, options: dict[str, object]) -> str | None:
    """Why `options` do not fit model `name` (naming the model and the options), or None when they fit or the model
    is not one of the package's (a model registered at run time is checked when it is built)."""
    if "normalise" in options:
        return f"model '{name}': set the normalisation under data.normalise, not model options"
    accepted = model_options().get(name)
    if accepted is None:
        return None
    valid = [k for k in accepted if k not in SET_BY_TRAINER]
    bad = sorted(k for k in options if k not in valid)
    if not bad:
        return None
    return f"model '{name}' has no option(s) {', '.join(map(repr, bad))}; valid options: {', '.join(valid)}"

"""The test-time recipe: how a fitted model's predictions of a section are made, one typed value from the config,
the command line or `recipe.json` down to the function that applies each option.

Every option uses the predicted section's own images and predictions, never its expression:
- adabn: BatchNorm statistics re-estimated on the section's own patches (Li et al., AdaBN);
- tta: predictions averaged over the 8 flips/rotations of the square (D4);
- smooth_um: each spot's prediction averaged with its neighbours' under a Gaussian of this sigma in microns (0: off);
- gene_pcs: each spot's deviation from the section's mean prediction kept along the top-k co-expression axes of the
  training labels (0: off);
- calibrate: `centre` sets each gene's section mean to the training mean (the level a slide's stain cannot move);
  `shrink` also scales the spatial part by one factor fitted on validation spots; `auto` (`hifusion predict` only)
  is `shrink` where a benchmark left a factor for this recipe, else `centre` where the checkpoint has the training
  mean, else `none`.

Inference applies adabn and tta (`hifusion.inference`); the chain here applies the rest, in this order: smooth ->
project on the gene axes (`adjust`) -> calibrate (`calibrated`). The benchmark (`train.fit.predict_variants`) and
`predict` (`predict.engine.predict_coords`) both call it. This module also owns the two files a benchmark leaves
beside the checkpoints: `recipe.json` (the main row's recipe, which `predict` follows) and `calibration.json`
(shrink factors keyed by `Recipe.calibration_key`).

A sixth option: a field of `Recipe` (with its check), its step in `adjust` or in inference, and its test.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hifusion import constants as C
from hifusion.errors import CheckpointError, ConfigError
from hifusion.io import atomic_write_text

if TYPE_CHECKING:  # numpy and torch load when the chain runs, not with the config that imports this module
    import numpy as np

Calibrate = Literal["none", "centre", "shrink", "auto"]
# a benchmark fits `shrink` itself, so `auto` (follow the files a benchmark left) means nothing there
BENCHMARK_CALIBRATE = ("none", "centre", "shrink")
BENCHMARK_MAX_SMOOTH_UM = 5000.0
BENCHMARK_MAX_GENE_PCS = 1000
# keys every recipe.json has; smooth_um and gene_pcs came later, and a file without them means off
_FILE_REQUIRED = ("adabn", "tta", "calibrate")


class Recipe(BaseModel):
    """The five test-time options, checked once here (a benchmark's config adds `check_benchmark`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    adabn: bool = False
    tta: bool = False
    calibrate: Calibrate = "none"
    smooth_um: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    gene_pcs: int = Field(0, ge=0)

    @classmethod
    def of(cls, source: str | Path | None = None, **options: Any) -> Recipe:
        """A recipe from options given by a person or a file; ConfigError naming the option and its value."""
        try:
            return cls(**options)
        except ValidationError as exc:
            raise ConfigError(f"test-time recipe: {describe(exc)}", source) from exc

    @property
    def plain(self) -> bool:
        """Nothing to do at test time: the model's own predictions."""
        return self.to_dict() == PLAIN.to_dict()  # every default is "off"

    def inference(self) -> Recipe:
        """The part inference applies (AdaBN, D4 views): recipes with the same part share their raw predictions."""
        return Recipe(adabn=self.adabn, tta=self.tta)

    @property
    def calibration_key(self) -> str:
        """This recipe's key in `calibration.json` ("adabn=0,tta=0"; smoothing and the projection only when on)."""
        key = f"adabn={int(self.adabn)},tta={int(self.tta)}"
        if self.smooth_um:
            key += f",smooth_um={float(self.smooth_um):g}"
        return key if not self.gene_pcs else f"{key},gene_pcs={int(self.gene_pcs)}"

    def to_dict(self) -> dict[str, Any]:
        """The five options by name, in field order (what recipe.json and prediction files record)."""
        return self.model_dump()

    def check_benchmark(self) -> None:
        """The benchmark's narrower ranges (ValueError, which the config reports with the key)."""
        if self.calibrate not in BENCHMARK_CALIBRATE:
            raise ValueError(f"calibrate '{self.calibrate}' is for `hifusion predict`; a benchmark fits its own "
                             f"calibration: one of {BENCHMARK_CALIBRATE}")
        if self.smooth_um > BENCHMARK_MAX_SMOOTH_UM:
            raise ValueError(f"smooth_um must be <= {BENCHMARK_MAX_SMOOTH_UM:g}, got {self.smooth_um:g}")
        if self.gene_pcs > BENCHMARK_MAX_GENE_PCS:
            raise ValueError(f"gene_pcs must be <= {BENCHMARK_MAX_GENE_PCS}, got {self.gene_pcs}")


PLAIN = Recipe()
# What `hifusion predict` does when neither the user nor a benchmark's recipe.json says otherwise.
PREDICT_DEFAULTS = Recipe(adabn=True, calibrate="auto")


def describe(exc: ValidationError) -> str:
    """Each problem of a validation as `option: problem (got value)`."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err["loc"]) or "recipe"
        parts.append(f"{where}: {err['msg']} (got {err['input']!r})")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------------------ the chain
@dataclass(frozen=True)
class GeneAxes:
    """The training labels' co-expression axes `gene_pcs` keeps: axes (k, G), per-gene std (G,), and their panel."""

    panel: tuple[str, ...]
    axes: np.ndarray
    sd: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {"panel": list(self.panel), "axes": self.axes.tolist(), "sd": self.sd.tolist()}


def adjust(pred: np.ndarray, recipe: Recipe, spot_um: Callable[[], np.ndarray],
           axes: GeneAxes | None = None) -> np.ndarray:
    """Steps 1-2 of the chain: smoothing over neighbouring spots (`spot_um()`: their centres in microns, asked for
    only when smoothing), then the projection on the first `gene_pcs` gene axes. Calibration comes after."""
    from hifusion.preprocess import project_genes, smooth_spatial  # torch: kept out of the config's imports

    if recipe.smooth_um > 0:
        pred = smooth_spatial(pred, spot_um(), recipe.smooth_um)
    if recipe.gene_pcs > 0:
        if axes is None or len(axes.axes) < recipe.gene_pcs:
            raise ConfigError(f"gene_pcs {recipe.gene_pcs} needs at least that many co-expression axes from the "
                              "recipe")
        pred = project_genes(pred, axes.axes[: recipe.gene_pcs], axes.sd)
    return pred


def calibrated(pred: np.ndarray, recipe: Recipe, level: np.ndarray | None, factor: float = 1.0) -> np.ndarray:
    """Step 3: each gene's section mean set to `level` (the training mean) and the spatial part scaled by `factor`
    (1 for `centre`, the fitted factor for `shrink`); `none` leaves the predictions as they are."""
    if recipe.calibrate == "none":
        return pred
    if recipe.calibrate == "auto":
        raise ValueError("calibrate 'auto' must be resolved first (`resolve_calibration`)")
    if level is None:
        raise ValueError(f"calibrate '{recipe.calibrate}' needs the training mean")
    from hifusion.preprocess import centre_on

    return centre_on(pred, level, factor)


def resolve_calibration(recipe: Recipe, ckpt_dir: Path | None, has_level: bool) -> tuple[Recipe, float]:
    """`predict`'s calibration for a checkpoint in `ckpt_dir`: `auto` made concrete, and the factor to apply.

    CheckpointError where centring needs the training mean the checkpoint lacks, or `shrink` a factor no benchmark
    fitted for this recipe."""
    mode, factor = recipe.calibrate, None
    if mode == "auto":  # the benchmark's fitted factor where there is one, else centring alone (if it can)
        try:
            mode, factor = "shrink", read_shrink_factor(ckpt_dir, recipe)
        except CheckpointError:
            mode = "centre" if has_level else "none"
    if mode in ("centre", "shrink") and not has_level:
        raise CheckpointError(f"calibrate '{mode}' needs the training mean, which this checkpoint predates")
    if mode == "shrink" and factor is None:
        factor = read_shrink_factor(ckpt_dir, recipe)
    return recipe.model_copy(update={"calibrate": mode}), 1.0 if factor is None else factor


# ---------------------------------------------------------------------------------------- recipe.json
def write_recipe(ckpt_dir: Path, recipe: Recipe, axes: GeneAxes | None = None) -> None:
    """Record the recipe a benchmark scored a model under (with `gene_pcs`, its gene axes: `predict` has no training
    labels), so `predict` defaults to the same one. JSON keeps every float exactly."""
    record: dict[str, Any] = recipe.to_dict()
    if recipe.gene_pcs > 0:
        if axes is None:
            raise ValueError("a recipe with gene_pcs needs the training labels' gene axes")
        record[C.RECIPE_GENE_AXES] = axes.to_dict()
    atomic_write_text(ckpt_dir / C.RECIPE_JSON, json.dumps(record, indent=2, sort_keys=True))


def read_recipe(ckpt_dir: Path) -> Recipe | None:
    """The recipe a benchmark left beside the checkpoints, None without one; CheckpointError naming the problem."""
    path = ckpt_dir / C.RECIPE_JSON
    if not path.exists():
        return None
    hint = "delete it or pass --adabn/--tta/--calibrate"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"unreadable test-time recipe ({e}); {hint}", path) from e
    missing = [k for k in _FILE_REQUIRED if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise CheckpointError(f"unreadable test-time recipe (no {', '.join(missing)}); {hint}", path)
    try:
        return Recipe(**{k: saved[k] for k in Recipe.model_fields if k in saved})
    except ValidationError as e:
        raise CheckpointError(f"test-time recipe: {describe(e)}", path) from e


def resolve_recipe(checkpoint: str | Path, *, adabn: bool | None = None, tta: bool | None = None,
                   calibrate: str | None = None, smooth_um: float | None = None,
                   gene_pcs: int | None = None) -> tuple[Recipe, str]:
    """`predict`'s recipe: the options given (None: unset), the rest from the benchmark's recipe.json beside the
    checkpoint, else `PREDICT_DEFAULTS`; and where the unset ones came from.

    A model is best predicted the way it was evaluated: a 2D (cross-patient) recipe differs from the within-patient
    one, and the benchmark that fitted the checkpoint wrote its recipe to `recipe.json`."""
    ckpt_dir = Path(checkpoint).parent
    saved = read_recipe(ckpt_dir)
    base, source = (PREDICT_DEFAULTS, "defaults") if saved is None else (saved, str(ckpt_dir / C.RECIPE_JSON))
    given = {"adabn": adabn, "tta": tta, "calibrate": calibrate, "smooth_um": smooth_um, "gene_pcs": gene_pcs}
    if all(v is not None for v in given.values()):
        source = "command line"
    return Recipe.of(**{**base.to_dict(), **{k: v for k, v in given.items() if v is not None}}), source


def read_gene_axes(ckpt_dir: Path, k: int, panel: Sequence[str]) -> GeneAxes:
    """The first `k` co-expression axes a benchmark stored in recipe.json, checked against the checkpoint's panel."""
    import numpy as np

    path = ckpt_dir / C.RECIPE_JSON
    try:
        stored = json.loads(path.read_text())[C.RECIPE_GENE_AXES]
        axes, sd = np.asarray(stored["axes"], np.float64), np.asarray(stored["sd"], np.float64)
        same_panel = list(stored["panel"]) == list(panel)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"gene_pcs needs the co-expression axes a benchmark stores in {C.RECIPE_JSON} beside "
                              f"the checkpoint ({type(e).__name__}: {e}); use --gene-pcs 0", path) from e
    if not same_panel or axes.ndim != 2 or axes.shape[1] != len(panel) or sd.shape != (len(panel),):
        raise CheckpointError("the recipe's co-expression axes do not match the checkpoint's gene panel", path)
    if len(axes) < k:
        raise CheckpointError(f"gene_pcs {k} asked, but the recipe stores {len(axes)} axes", path)
    return GeneAxes(tuple(panel), axes[:k], sd)


# ---------------------------------------------------------------------------------------- calibration.json
def write_shrink_factor(ckpt_dir: Path, recipe: Recipe, factor: float) -> None:
    """Record a shrink factor beside the checkpoints, so `predict --calibrate shrink` applies the same one."""
    path = ckpt_dir / C.CALIBRATION_JSON
    data = json.loads(path.read_text()) if path.exists() else {}
    data[recipe.calibration_key] = float(factor)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


def read_shrink_factor(ckpt_dir: Path | None, recipe: Recipe) -> float:
    """The shrink factor a benchmark fitted on validation spots for the checkpoints in `ckpt_dir` and this recipe."""
    path = None if ckpt_dir is None else ckpt_dir / C.CALIBRATION_JSON
    key = recipe.calibration_key
    try:
        factor = json.loads(path.read_text())[key] if path is not None else None
    except (OSError, ValueError, KeyError, TypeError):
        factor = None
    if not isinstance(factor, (int, float)) or not 0.0 <= float(factor) <= 1.0:
        raise CheckpointError(f"calibrate 'shrink' needs a shrink factor for {key} in {C.CALIBRATION_JSON} beside "
                              "the checkpoint (written by a benchmark with that calibration); use 'centre'", path)
    return float(factor)

"""`fit_and_predict`: build one registered model, fit it with the fitter of its kind, predict its test sections;
`predict_variants`: the same fitted model under the benchmark's test-time options.

Everything is built before fitting starts (seed, model, threads); how each input kind is fitted lives in
`train.fitters`, the Lightning plumbing in `train.trainer`, inference in `hifusion.inference`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from hifusion import constants as C
from hifusion.config import ModelConfig, TrainConfig
from hifusion.data.splitdata import SplitData
from hifusion.inference import calibration_key
from hifusion.io import atomic_write_text
from hifusion.preprocess import centre_on, gene_axes, project_genes, shrink_factor, smooth_spatial
from hifusion.ranks import is_global_zero
from hifusion.train.fitters import FitResult, get_fitter
from hifusion.train.trainer import set_threads

__all__ = ["FitResult", "fit_and_predict", "predict_variants", "save_recipe", "save_shrink_factor", "training_axes"]


def fit_and_predict(model_cfg: ModelConfig, train_cfg: TrainConfig, data: SplitData, run_dir: Path,
                    resume: bool = False) -> FitResult:
    """Build the model from the registry and fit it with the strategy of its kind."""
    from lightning.fabric.utilities.seed import seed_everything

    from hifusion.models import create_model

    seed_everything(train_cfg.seed, workers=True, verbose=False)  # the initial weights depend on the seed alone
    model = create_model(model_cfg.name, n_genes=len(data.panel), **model_cfg.options)
    fitter = get_fitter(getattr(model, "input_kind", "spot_region"), model_cfg.name)
    if is_global_zero():  # other DDP ranks write nothing (and must not make rank 0 see a non-empty results folder)
        run_dir.mkdir(parents=True, exist_ok=True)
    set_threads(train_cfg)
    start = time.perf_counter()
    result = fitter(model, model_cfg, train_cfg, data, run_dir, resume)
    result.seconds = time.perf_counter() - start
    return result


def save_shrink_factor(ckpt_dir: Path, key: tuple[Any, ...], factor: float) -> None:
    """Record a shrink factor beside the checkpoints, so `predict --calibrate shrink` applies the same one."""
    path = ckpt_dir / C.CALIBRATION_JSON
    data = json.loads(path.read_text()) if path.exists() else {}
    data[calibration_key(*key)] = float(factor)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


def training_axes(data: SplitData, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Co-expression axes (`preprocess.gene_axes`) of the training spots' labels, section by section."""
    return gene_axes((data.label_rows(s, r) for s, r in data.train_rows.items()), k)


def save_recipe(ckpt_dir: Path, adapt: Any, data: SplitData | None = None) -> None:
    """Record the test-time recipe the benchmark scored this model under, so `predict` defaults to the same one.

    With `gene_pcs`, the co-expression axes of the training labels go into the recipe too (`predict` has no
    training labels); JSON keeps every float exactly, so `predict` projects as the benchmark did."""
    recipe: dict[str, Any] = {"adabn": bool(adapt.adabn), "tta": bool(adapt.tta), "calibrate": str(adapt.calibrate),
                              "smooth_um": float(adapt.smooth_um), "gene_pcs": int(adapt.gene_pcs)}
    if adapt.gene_pcs > 0:
        if data is None:
            raise ValueError("a recipe with gene_pcs needs the training labels (data) for its axes")
        axes, sd = training_axes(data, adapt.gene_pcs)
        recipe[C.RECIPE_GENE_AXES] = {"panel": list(data.panel), "axes": axes.tolist(), "sd": sd.tolist()}
    atomic_write_text(ckpt_dir / C.RECIPE_JSON, json.dumps(recipe, indent=2, sort_keys=True))


def predict_variants(result: FitResult, data: SplitData, variants: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Test predictions of a fitted model under each test-time variant (name -> AdaptConfig): section -> (N, G).

    Inference runs once per (adabn, tta) pair; smoothing over neighbouring spots, the projection onto the training
    labels' co-expression axes, then calibration, are applied afterwards. `shrink` fits its factor on the validation
    spots predicted (smoothed, projected) under the same options; `centre` restores the training mean's level.
    """
    if result.predict is None:
        raise ValueError("this fit result holds no predictor")
    level = data.train_labels().mean(0)
    pcs = max((int(a.gene_pcs) for a in variants.values()), default=0)
    axes, sd = training_axes(data, pcs) if pcs else (None, None)

    def post(section: str, p: np.ndarray, a: Any, rows: np.ndarray | None = None) -> np.ndarray:
        if a.smooth_um > 0:
            p = smooth_spatial(p, data.spot_um(section, rows), a.smooth_um)
        if a.gene_pcs > 0:
            p = project_genes(p, axes[: a.gene_pcs], sd)
        return p

    raw: dict[tuple[bool, bool], dict[str, np.ndarray]] = {}
    val_raw: dict[tuple[bool, bool], list[np.ndarray]] = {}
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, a in variants.items():
        key = (bool(a.adabn), bool(a.tta))
        if key not in raw:
            if key == (False, False) and result.predictions:
                raw[key] = dict(result.predictions)
            else:
                raw[key] = {s: result.predict(s, data.rows[s], *key) for s in data.test_sections}
        preds = {s: post(s, p, a) for s, p in raw[key].items()}
        if a.calibrate == "none":
            out[name] = preds
            continue
        factor = 1.0
        if a.calibrate == "shrink":
            vsecs = [s for s in data.val_rows if len(data.val_rows[s])]
            if key not in val_raw:
                val_raw[key] = [result.predict(s, data.val_rows[s], *key) for s in vsecs]
            vpred = [post(s, p, a, data.val_rows[s]) for s, p in zip(vsecs, val_raw[key], strict=True)]
            factor = shrink_factor(vpred, [data.label_rows(s, data.val_rows[s]) for s in vsecs])
            result.info[f"shrink_factor[{name}]"] = factor
            if result.checkpoint is not None:
                save_shrink_factor(Path(result.checkpoint).parent, (*key, float(a.smooth_um), int(a.gene_pcs)),
                                   factor)
        out[name] = {s: centre_on(p, level, factor) for s, p in preds.items()}
    return out

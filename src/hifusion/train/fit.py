"""`fit_and_predict`: build one registered model, fit it with the fitter of its kind, predict its test sections;
`predict_variants`: the same fitted model under the benchmark's test-time options.

Everything is built before fitting starts (seed, model, threads); how each input kind is fitted lives in
`train.fitters`, the Lightning plumbing in `train.trainer`, inference in `hifusion.inference`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hifusion.config import ModelConfig, TrainConfig
from hifusion.data.splitdata import SplitData
from hifusion.preprocess import gene_axes, shrink_factor
from hifusion.ranks import is_global_zero
from hifusion.recipe import GeneAxes, Recipe, adjust, calibrated, write_recipe, write_shrink_factor
from hifusion.train.fitters import FitResult, get_fitter
from hifusion.train.trainer import set_threads

__all__ = ["FitResult", "fit_and_predict", "predict_variants", "save_recipe", "training_axes"]


def fit_and_predict(model_cfg: ModelConfig, train_cfg: TrainConfig, data: SplitData, run_dir: Path,
                    resume: bool = False) -> FitResult:
    """Build the model from the registry and fit it with the strategy of its kind."""
    from lightning.fabric.utilities.seed import seed_everything

    from hifusion.models import create_model

    seed_everything(train_cfg.seed, workers=True, verbose=False)  # the initial weights depend on the seed alone
    model = create_model(model_cfg.name, n_genes=len(data.panel), **model_cfg.options)
    fitter = get_fitter(model.input_kind, model_cfg.name)  # the registry entry's kind, set by create_model
    if is_global_zero():  # other DDP ranks write nothing (and must not make rank 0 see a non-empty results folder)
        run_dir.mkdir(parents=True, exist_ok=True)
    set_threads(train_cfg)
    start = time.perf_counter()
    result = fitter(model, model_cfg, train_cfg, data, run_dir, resume)
    result.seconds = time.perf_counter() - start
    return result


def training_axes(data: SplitData, k: int) -> GeneAxes:
    """Co-expression axes (`preprocess.gene_axes`) of the training spots' labels, section by section."""
    axes, sd = gene_axes((data.label_rows(s, r) for s, r in data.train_rows.items()), k)
    return GeneAxes(tuple(data.panel), axes, sd)


def save_recipe(ckpt_dir: Path, recipe: Recipe, data: SplitData | None = None) -> None:
    """Record the test-time recipe the benchmark scored this model under (`recipe.write_recipe`), with the training
    labels' gene axes when it projects on them."""
    if recipe.gene_pcs > 0 and data is None:
        raise ValueError("a recipe with gene_pcs needs the training labels (data) for its axes")
    write_recipe(ckpt_dir, recipe, training_axes(data, recipe.gene_pcs) if recipe.gene_pcs > 0 else None)


def predict_variants(result: FitResult, data: SplitData,
                     variants: dict[str, Recipe]) -> dict[str, dict[str, np.ndarray]]:
    """Test predictions of a fitted model under each test-time recipe (row name -> Recipe): section -> (N, G).

    Inference runs once per inference part (adabn, tta); the recipe's chain (`recipe.adjust`: smoothing, the
    projection on the training labels' gene axes; then `recipe.calibrated`) is applied afterwards. `shrink` fits its
    factor on the validation spots predicted and adjusted under the same recipe; `centre` restores the training
    mean's level.
    """
    if result.predict is None:
        raise ValueError("this fit result holds no predictor")
    level = data.train_labels().mean(0)
    pcs = max((a.gene_pcs for a in variants.values()), default=0)
    axes = training_axes(data, pcs) if pcs else None

    def post(section: str, p: np.ndarray, a: Recipe, rows: np.ndarray | None = None) -> np.ndarray:
        return adjust(p, a, lambda: data.spot_um(section, rows), axes)

    raw: dict[Recipe, dict[str, np.ndarray]] = {}
    val_raw: dict[Recipe, list[np.ndarray]] = {}
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, a in variants.items():
        key = a.inference()
        if key not in raw:
            if key.plain and result.predictions:
                raw[key] = dict(result.predictions)
            else:
                raw[key] = {s: result.predict(s, data.rows[s], key) for s in data.test_sections}
        preds = {s: post(s, p, a) for s, p in raw[key].items()}
        factor = 1.0
        if a.calibrate == "shrink":
            vsecs = [s for s in data.val_rows if len(data.val_rows[s])]
            if key not in val_raw:
                val_raw[key] = [result.predict(s, data.val_rows[s], key) for s in vsecs]
            vpred = [post(s, p, a, data.val_rows[s]) for s, p in zip(vsecs, val_raw[key], strict=True)]
            factor = shrink_factor(vpred, [data.label_rows(s, data.val_rows[s]) for s in vsecs])
            result.info[f"shrink_factor[{name}]"] = factor
            if result.checkpoint is not None:
                write_shrink_factor(Path(result.checkpoint).parent, a, factor)
        out[name] = {s: calibrated(p, a, level, factor) for s, p in preds.items()}
    return out

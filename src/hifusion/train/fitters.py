"""The registry of fitters, one per model input kind, and the fitters themselves.

A model names its kind in `input_kind` (see `models.registry.INPUT_KINDS`); `get_fitter(kind)` returns how to fit
it, so a new kind registers a fitter here instead of adding branches to `train.fit`.

- ``fit``: closed-form estimators on training labels (the mean profile).
- ``spot_region``: Lightning on batches of spots (spot and region patches); a model whose encoder is frozen
  (`trains_on_embeddings`: ST-Net, BLEEP with `freeze_encoder`) on batches of its stored encoder embeddings.
- ``section``: Lightning, one batch = every selected spot of one section with its array coordinates (HisToGene,
  Hist2ST, TRIPLEX); validation spots form their own section-batches, so validation never sees training labels.
- ``features``: frozen-encoder features + closed-form fit (the HEST-style linear probe), saved as a checkpoint.
- ``retrieval``: the training labels are stored in the model, then it trains like a spot model (BLEEP).
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hifusion import __version__
from hifusion import constants as C
from hifusion.checkpoint import load_state_into, save_model_checkpoint
from hifusion.checkpoint_meta import CheckpointMeta
from hifusion.config import ModelConfig, TrainConfig
from hifusion.contracts import BatchPredictor
from hifusion.data.splitdata import SplitData
from hifusion.data.torch_datasets import EmbeddingDataset, SectionDataset, SpotDataset, patch_mean_std
from hifusion.errors import ConfigError
from hifusion.inference import Predictor, SectionEmbeddings, predict_rows, predict_section, used_inputs
from hifusion.models.encoders import preset_inputs
from hifusion.preprocess import D4_SIZE, has_batchnorm, input_sources, rescale_warnings
from hifusion.ranks import local_rank
from hifusion.recipe import PLAIN, Recipe
from hifusion.registries import Registry
from hifusion.train.callbacks import TestSelection
from hifusion.train.module import EmbeddingModule, ExpressionModule, SectionModule
from hifusion.train.trainer import ExpressionDataModule, run_lightning, uses_cuda

# (section, cache rows, test-time recipe) -> predictions of the fitted model (inference applies AdaBN and D4 views)
RowsPredictor = Callable[[str, np.ndarray, Recipe], np.ndarray]


@dataclass
class FitResult:
    """What the benchmark needs from a fitted model."""

    predictions: dict[str, np.ndarray]  # test section -> (n_spots, G)
    history: pd.DataFrame | None = None  # per-epoch metrics
    checkpoint: Path | None = None
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    global_rank: int = 0  # in DDP, ranks > 0 return no predictions and must write nothing
    predict: RowsPredictor | None = None  # None on ranks > 0
    # `train.select_on_test`: the same run's weights of the epoch with the best TEST MSE (flattering), or None
    flattering: FitResult | None = None


Fitter = Callable[[torch.nn.Module, ModelConfig, TrainConfig, SplitData, Path, bool], FitResult]
_FITTERS: Registry[Fitter] = Registry("no fitter for input kind '{name}' (known: {known})")


def register_fitter(kind: str) -> Callable[[Fitter], Fitter]:
    return _FITTERS.register(kind)


def get_fitter(kind: str, model_name: str) -> Fitter:
    if kind not in _FITTERS:
        raise ConfigError(f"model '{model_name}' has input kind '{kind}' that no fitter handles")
    return _FITTERS.get(kind)


# ------------------------------------------------------------------------------------------- checkpoint metadata
def stain_for(data: SplitData) -> dict[str, Any]:
    """The run's stain options and, for normalisation, the training reference (pooled training sections' LAB
    statistics, weighted by spots): stored in the checkpoint so that `predict` applies the same mapping."""
    from hifusion.stain import pool_stats, stain_meta

    st = data.stain
    if st is None:
        return stain_meta(None, "none", None)
    ref = None
    if st.normalise != "none":
        ref = pool_stats((data.stain_source(s), len(data.rows[s])) for s in _nonempty(data.train_rows))
    return stain_meta(st.augment.model_dump(), st.normalise, ref)


def input_views(model: torch.nn.Module, data: SplitData) -> dict[str, dict[str, Any]]:
    """How each image input fed by an encoder preset is cut from the cache (`models.encoders.preset_inputs`)."""
    return preset_inputs(model, data.geometry)


def make_meta(model_cfg: ModelConfig, data: SplitData, norm: dict[str, Any],
              model: torch.nn.Module | None = None) -> CheckpointMeta:
    """Everything prediction needs besides the weights; primitives only so `weights_only=True` loads it.

    A model with encoder presets also gets `inputs` (each preset input's crop, size and mean/std), and the run
    warns once per preset whose scale differs from the cache's; without presets the metadata is as it always was."""
    views = {} if model is None else input_views(model, data)
    meta = CheckpointMeta(
        stain=stain_for(data),
        train_mean=[float(x) for x in data.train_labels().mean(0)],  # the level `calibrate: centre` restores
        version=__version__,
        model_name=model_cfg.name,
        model_options=json.loads(json.dumps(model_cfg.options)),
        panel=list(data.panel),
        label=data.label,
        patch=data.geometry,
        normalisation=norm,
        train_sections=list(data.train_sections),
        inputs=views or None,
    )
    if views:
        for line in rescale_warnings(meta):
            warnings.warn(line, stacklevel=2)
    return meta


def label_scale(labels: np.ndarray) -> dict[str, list[float]]:
    """Per-gene mean and std of the training labels; a gene constant in training keeps std 1 (nothing to scale)."""
    y = np.asarray(labels, dtype=np.float64)
    std = y.std(0)
    std[~(std > 1e-6)] = 1.0
    return {"mean": [float(x) for x in y.mean(0)], "std": [float(x) for x in std]}


def normalisation_for(model_cfg: ModelConfig, data: SplitData) -> dict[str, Any]:
    """The run's patch normalisation: per patch (the paper), or statistics of the training patches."""
    if model_cfg.options.get("normalise", None) is not None:
        raise ConfigError("set the normalisation under data.normalise, not model options")
    if data.normalise == "dataset":
        if data.norm_stats is None:  # every model of a split shares the same training patches: read them once
            train_secs = _nonempty(data.train_rows)
            mean, std = patch_mean_std([data.patches[s] for s in train_secs],
                                       [data.train_rows[s] for s in train_secs], data.spot_px)
            data.norm_stats = {"mode": "dataset", "mean": mean, "std": std}
        return dict(data.norm_stats)
    return {"mode": "patch"}


def _nonempty(rows: dict[str, np.ndarray]) -> list[str]:
    return [s for s in rows if len(rows[s])]


def stain_list(data: SplitData, sections: list[str]) -> list[np.ndarray] | None:
    """Per-section stain statistics for a dataset over `sections` (None when normalisation is off)."""
    stats = [data.stain_source(s) for s in sections]
    return None if any(x is None for x in stats) else stats  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------------- predictors
def rows_predictor(module: BatchPredictor, data: SplitData, batch_size: int) -> RowsPredictor:
    """(section, rows, recipe) -> predictions of a spot-level module on cache rows."""

    def predict(section: str, rows: np.ndarray, recipe: Recipe = PLAIN) -> np.ndarray:
        return predict_rows(module, data.patches[section], rows, data.geometry, batch_size=batch_size,
                            stain_src=data.stain_source(section), recipe=recipe)

    return predict


def embeddings_predictor(module: BatchPredictor, emb: SectionEmbeddings, data: SplitData,
                         batch_size: int) -> RowsPredictor:
    """(section, rows, recipe) -> predictions of a frozen-encoder module from the stored embeddings (`emb`) through
    the module's `from_features`; a model that re-estimates BatchNorm under AdaBN changes its encoder, so under
    AdaBN it runs on the patches."""
    adapting = rows_predictor(module, data, batch_size)

    def predict(section: str, rows: np.ndarray, recipe: Recipe = PLAIN) -> np.ndarray:
        if recipe.adabn and getattr(module.model, "adapts_batchnorm", True) and has_batchnorm(module.model):
            return adapting(section, rows, recipe)
        return emb.predict(section, data.patches[section], rows, stain_src=data.stain_source(section),
                           tta=recipe.tta, batch_size=batch_size, module=module)

    return predict


def section_predictor(module: BatchPredictor, data: SplitData) -> RowsPredictor:
    """(section, rows, recipe) -> predictions of a whole-section module, the rows in one pass."""

    def predict(section: str, rows: np.ndarray, recipe: Recipe = PLAIN) -> np.ndarray:
        return predict_section(module, data.patches[section], rows, data.array_coords(section, rows), data.geometry,
                               stain_src=data.stain_source(section), recipe=recipe)

    return predict


# ------------------------------------------------------------------------------------------------ closed form
@register_fitter("fit")
def _fit_closed_form(model: torch.nn.Module, model_cfg: ModelConfig, train_cfg: TrainConfig, data: SplitData,
                     run_dir: Path, resume: bool) -> FitResult:
    """Estimators fitted in one pass on training labels (and, where they ask for it, training patches)."""
    model.fit(data.train_labels())

    def predict(section: str, rows: np.ndarray, recipe: Recipe = PLAIN) -> np.ndarray:
        return np.asarray(model.predict(len(rows)), dtype=np.float32)

    preds = {s: predict(s, data.rows[s]) for s in data.test_sections}
    return FitResult(predictions=preds, predict=predict, info={"test_time": False})  # no image: nothing to adapt


# ------------------------------------------------------------------------------------------ Lightning training
@dataclass
class LightningPlan:
    """What differs between the trained kinds: their datasets, batching, the gene heads' starting level, the
    Lightning module and how the fitted module predicts cache rows."""

    train_ds: Any
    val_ds: Any | None
    batch_size: int | None  # None: one section per batch
    head_level: torch.Tensor
    module_cls: type[ExpressionModule]
    predictor: Callable[[ExpressionModule], RowsPredictor]


def _fit_lightning(model: torch.nn.Module, model_cfg: ModelConfig, cfg: TrainConfig, data: SplitData, run_dir: Path,
                   resume: bool, plan: LightningPlan) -> FitResult:
    """The Lightning path every trained kind shares: metadata, gene-head start, `run_lightning`, test predictions."""
    train_ds, val_ds, batch_size, head_level = plan.train_ds, plan.val_ds, plan.batch_size, plan.head_level
    module_cls, predictor = plan.module_cls, plan.predictor
    meta = make_meta(model_cfg, data, normalisation_for(model_cfg, data), model)
    if cfg.scale_labels == "gene":
        if getattr(model, "zinb_weight", 0):
            raise ConfigError(f"model '{model_cfg.name}' fits a count likelihood (zinb_weight) to its labels: "
                              "train.scale_labels must be 'none'")
        meta.label_scale = label_scale(data.fit_train_labels(cfg.centre_labels))
        head_level = torch.zeros_like(head_level)  # standardised labels have mean 0
    init_bias = getattr(model, "init_output_bias", None)
    if callable(init_bias):  # gene heads start at the mean training label (training spots only)
        init_bias(head_level)
    module = module_cls(model, cfg, meta)
    steps = len(train_ds) if batch_size is None else math.ceil(len(train_ds) / batch_size)
    selection = _test_selection(module, data, predictor, run_dir) if cfg.select_on_test != "none" else None
    trainer, chosen, history = run_lightning(module, ExpressionDataModule(train_ds, val_ds, cfg, batch_size), cfg,
                                             run_dir, has_val=val_ds is not None, steps_per_epoch=steps, resume=resume,
                                             first_callbacks=[selection] if selection else None)
    preds, predict, flattering = {}, None, None
    if trainer.is_global_zero:
        predict = predictor(module)
        preds = {s: predict(s, data.rows[s]) for s in data.test_sections}
        if selection is not None:
            flattering = _flattering_result(module, module_cls, cfg, data, predictor, selection)
    return FitResult(predictions=preds, history=history, checkpoint=chosen,
                     info={"checkpoint_used": chosen.name, "epochs_run": int(trainer.current_epoch)},
                     global_rank=int(trainer.global_rank), predict=predict, flattering=flattering)


def _test_selection(module: ExpressionModule, data: SplitData, predictor: Callable[[ExpressionModule], RowsPredictor],
                    run_dir: Path) -> TestSelection:
    """`train.select_on_test: mse`: MSE over every (spot, gene) of the test sections pooled, as the HiFusion
    reference code scores its held-out fold each epoch; the best epoch's weights go to `CKPT_BEST_TEST`."""
    tests = [s for s in data.test_sections if len(data.rows[s])]

    def score() -> float:
        predict = predictor(module)
        diff = np.vstack([predict(s, data.rows[s]) - data.labels[s] for s in tests])
        return float(np.mean(diff.astype(np.float64) ** 2))

    return TestSelection(score, lambda path: save_model_checkpoint(module.model, module.meta, path),
                         run_dir / C.CKPT_DIR / C.CKPT_BEST_TEST)


def _flattering_result(module: ExpressionModule, module_cls: type[ExpressionModule], cfg: TrainConfig, data: SplitData,
                       predictor: Callable[[ExpressionModule], RowsPredictor],
                       selection: TestSelection) -> FitResult | None:
    """A copy of the model with the test-selected weights, predicting the test sections (the flattering row)."""
    if not selection.path.exists():
        return None
    other = module_cls(copy.deepcopy(module.model), cfg, module.meta)
    load_state_into(other.model, selection.path)
    predict = predictor(other)
    preds = {s: predict(s, data.rows[s]) for s in data.test_sections}
    return FitResult(predictions=preds, predict=predict,
                     info={"checkpoint_used": selection.path.name, "best_test_epoch": selection.best_epoch,
                           "best_test_mse": selection.best})


def _spot_dataset(data: SplitData, rows: dict[str, np.ndarray], centre: str, **kw: Any) -> SpotDataset | None:
    secs = _nonempty(rows)
    if not secs:
        return None
    return SpotDataset([data.patches[s] for s in secs], [rows[s] for s in secs],
                       [data.fit_labels(s, rows[s], centre) for s in secs], spot_px=data.spot_px,
                       region_px=data.region_px, stain_stats=stain_list(data, secs), **kw)


@register_fitter("spot_region")
def _fit_spot_model(model: torch.nn.Module, model_cfg: ModelConfig, cfg: TrainConfig, data: SplitData,
                    run_dir: Path, resume: bool) -> FitResult:
    if getattr(model, "trains_on_embeddings", False):
        return _fit_on_embeddings(model, model_cfg, cfg, data, run_dir, resume)
    train_ds = _spot_dataset(data, data.train_rows, cfg.centre_labels, augment=cfg.augment, seed=cfg.seed)
    if train_ds is None:
        raise ConfigError(f"split {data.split.name}: no training spots")
    plan = LightningPlan(train_ds, _spot_dataset(data, data.val_rows, cfg.centre_labels), cfg.batch_size,
                         torch.from_numpy(train_ds.labels.mean(0)), ExpressionModule,
                         lambda m: rows_predictor(m, data, max(cfg.batch_size, 32)))
    return _fit_lightning(model, model_cfg, cfg, data, run_dir, resume, plan)


def _section_dataset(data: SplitData, rows: dict[str, np.ndarray], with_labels: bool, with_region: bool,
                     augment: bool = False, seed: int = 0, centre: str = "none") -> SectionDataset | None:
    secs = _nonempty(rows)
    if not secs:
        return None
    return SectionDataset(
        [data.patches[s] for s in secs],
        [rows[s] for s in secs],
        [data.array_coords(s, rows[s]) for s in secs],
        [data.fit_labels(s, rows[s], centre) for s in secs] if with_labels else None,
        spot_px=data.spot_px, region_px=data.region_px, augment=augment, seed=seed, with_region=with_region,
        stain_stats=stain_list(data, secs),
    )


@register_fitter("section")
def _fit_section_model(model: torch.nn.Module, model_cfg: ModelConfig, cfg: TrainConfig, data: SplitData,
                       run_dir: Path, resume: bool) -> FitResult:
    with_region = "region" in input_sources(input_views(model, data), used_inputs(model))
    train_ds = _section_dataset(data, data.train_rows, True, with_region, augment=cfg.augment, seed=cfg.seed,
                                centre=cfg.centre_labels)
    if train_ds is None:
        raise ConfigError(f"split {data.split.name}: no training spots")
    val_ds = _section_dataset(data, data.val_rows, True, with_region, centre=cfg.centre_labels)
    level = torch.as_tensor(data.train_labels().mean(0), dtype=torch.float32)
    plan = LightningPlan(train_ds, val_ds, None, level, SectionModule, lambda m: section_predictor(m, data))
    return _fit_lightning(model, model_cfg, cfg, data, run_dir, resume, plan)


@register_fitter("retrieval")
def _fit_retrieval_model(model: torch.nn.Module, model_cfg: ModelConfig, cfg: TrainConfig, data: SplitData,
                         run_dir: Path, resume: bool) -> FitResult:
    """Store the training labels (training spots only, validation excluded), then train like a spot model."""
    if cfg.scale_labels != "none":
        raise ConfigError(f"model '{model_cfg.name}' retrieves training labels: train.scale_labels must be 'none'")
    model.set_reference(data.fit_train_labels(cfg.centre_labels))
    return _fit_spot_model(model, model_cfg, cfg, data, run_dir, resume)


# ------------------------------------------------------------------------------------ frozen encoders
def _frozen_embeddings(model: torch.nn.Module, model_cfg: ModelConfig, cfg: TrainConfig,
                       data: SplitData) -> SectionEmbeddings:
    """The embeddings of a frozen-encoder model's sections, computed once and, with `data.embedding_cache`, stored
    beside the patch cache for every later model, fold and run on the same encoder and preprocessing."""
    meta = make_meta(model_cfg, data, normalisation_for(model_cfg, data), model)
    predictor = Predictor(model, meta, channels_last=cfg.channels_last)
    if uses_cuda(cfg):  # under DDP each process on its own GPU, as Lightning will place it
        predictor = predictor.to(torch.device("cuda", local_rank() % max(1, torch.cuda.device_count())))
    predictor.eval()
    return SectionEmbeddings(predictor, cache=data.embedding_cache)


def _embedding_dataset(emb: SectionEmbeddings, data: SplitData, rows: dict[str, np.ndarray], centre: str,
                       views: range, **kw: Any) -> EmbeddingDataset | None:
    secs = _nonempty(rows)
    if not secs:
        return None
    x = [np.stack([emb.get(s, data.patches[s], v, data.stain_source(s))[rows[s]] for v in views]) for s in secs]
    return EmbeddingDataset(x, [data.fit_labels(s, rows[s], centre) for s in secs], **kw)


def _fit_on_embeddings(model: torch.nn.Module, model_cfg: ModelConfig, cfg: TrainConfig, data: SplitData,
                       run_dir: Path, resume: bool) -> FitResult:
    """A spot model whose encoder is frozen (`trains_on_embeddings`): Lightning trains the rest on the encoder's
    embeddings of the training spots, one of the 8 D4 views per spot and epoch under `train.augment` (computed once
    per section and view, not once per epoch); validation, test predictions and test-time views read the same
    embeddings. Colour and resolution augmentation act on pixels, which a frozen encoder's stored embeddings no
    longer see: they do not apply here."""
    emb = _frozen_embeddings(model, model_cfg, cfg, data)
    views = range(D4_SIZE) if cfg.augment else range(1)
    train_ds = _embedding_dataset(emb, data, data.train_rows, cfg.centre_labels, views, augment=cfg.augment,
                                  seed=cfg.seed)
    if train_ds is None:
        raise ConfigError(f"split {data.split.name}: no training spots")
    val_ds = _embedding_dataset(emb, data, data.val_rows, cfg.centre_labels, range(1))
    model.train()  # embedding put the whole model in eval mode; the heads' dropout trains (the encoder stays frozen)
    bs = max(cfg.batch_size, 32)
    plan = LightningPlan(train_ds, val_ds, cfg.batch_size, torch.from_numpy(train_ds.labels.mean(0)),
                         EmbeddingModule, lambda m: embeddings_predictor(m, emb, data, bs))
    result = _fit_lightning(model, model_cfg, cfg, data, run_dir, resume, plan)
    result.info["embeddings"] = emb.stats
    return result


# ------------------------------------------------------------------------------------ frozen features, closed form
@register_fitter("features")
def _fit_features_model(model: torch.nn.Module, model_cfg: ModelConfig, cfg: TrainConfig, data: SplitData,
                        run_dir: Path, resume: bool) -> FitResult:
    """Frozen embeddings of the training spot patches (no augmentation) -> `model.fit_features` -> checkpoint.

    Embeddings come from `inference.SectionEmbeddings`: every spot of a section per D4 view, computed once and, with
    `data.embedding_cache`, stored beside the patch cache for every later model, fold and run on the same encoder.
    Test predictions (and the test-time D4 views) go through the same embeddings and the model's `from_features`."""
    emb = _frozen_embeddings(model, model_cfg, cfg, data)
    predictor, meta = emb.module, emb.module.meta
    bs = max(cfg.batch_size, 32)
    secs = _nonempty(data.train_rows)
    x = np.concatenate([emb.get(s, data.patches[s], 0, data.stain_source(s))[data.train_rows[s]] for s in secs])
    model.fit_features(x, data.fit_train_labels(cfg.centre_labels))
    ckpt = save_model_checkpoint(model, meta, run_dir / C.CKPT_DIR / C.CKPT_LAST)
    predict = embeddings_predictor(predictor, emb, data, bs)
    preds = {s: predict(s, data.rows[s]) for s in data.test_sections}
    return FitResult(predictions=preds, checkpoint=ckpt, predict=predict,
                     info={"checkpoint_used": ckpt.name, "n_features": int(x.shape[1]),
                           "alpha": float(getattr(model, "alpha_used", float("nan"))),
                           "embeddings": emb.stats})

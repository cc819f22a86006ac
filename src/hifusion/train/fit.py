"""Fit one registered model on one split and predict its test sections.

Fitting strategies are looked up by the model's `input_kind` ("spot_region": trained with Lightning on batches of
spots; "fit": closed-form estimators such as the mean profile), so a new model kind registers a fitter instead
of adding branches here.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hifusion import __version__
from hifusion import constants as C
from hifusion.config import ModelConfig, TrainConfig
from hifusion.data.datasets import EpochSampler, SpotDataset, patch_mean_std
from hifusion.data.splitdata import SplitData
from hifusion.errors import ConfigError


@dataclass
class FitResult:
    """What the benchmark needs from a fitted model."""

    predictions: dict[str, np.ndarray]  # test section -> (n_spots, G)
    history: pd.DataFrame | None = None  # per-epoch metrics
    checkpoint: Path | None = None
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    global_rank: int = 0  # in DDP, ranks > 0 return no predictions and must write nothing
    # (section, cache rows, adabn, tta) -> predictions with the fitted model; None on ranks > 0
    predict: Callable[[str, np.ndarray, bool, bool], np.ndarray] | None = None


Fitter = Callable[[torch.nn.Module, ModelConfig, TrainConfig, SplitData, Path, bool], FitResult]
_FITTERS: dict[str, Fitter] = {}


def register_fitter(kind: str) -> Callable[[Fitter], Fitter]:
    def deco(fn: Fitter) -> Fitter:
        _FITTERS[kind] = fn
        return fn

    return deco


def fit_and_predict(model_cfg: ModelConfig, train_cfg: TrainConfig, data: SplitData, run_dir: Path,
                    resume: bool = False) -> FitResult:
    """Build the model from the registry and fit it with the strategy of its kind."""
    from lightning.fabric.utilities.seed import seed_everything

    from hifusion.models import create_model

    seed_everything(train_cfg.seed, workers=True, verbose=False)  # the initial weights depend on the seed alone
    model = create_model(model_cfg.name, n_genes=len(data.panel), **model_cfg.options)
    kind = getattr(model, "input_kind", "spot_region")
    if kind not in _FITTERS:
        raise ConfigError(f"model '{model_cfg.name}' has input kind '{kind}' that no fitter handles")
    from hifusion.train.distributed import is_global_zero

    if is_global_zero():  # other DDP ranks write nothing (and must not make rank 0 see a non-empty results folder)
        run_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    result = _FITTERS[kind](model, model_cfg, train_cfg, data, run_dir, resume)
    result.seconds = time.perf_counter() - start
    return result


# ------------------------------------------------------------------------------------------------ closed form
@register_fitter("fit")
def _fit_closed_form(model: torch.nn.Module, model_cfg: ModelConfig, train_cfg: TrainConfig, data: SplitData,
                     run_dir: Path, resume: bool) -> FitResult:
    """Estimators fitted in one pass on training labels (and, where they ask for it, training patches)."""
    model.fit(data.train_labels())

    def predict(section: str, rows: np.ndarray, adabn: bool = False, tta: bool = False) -> np.ndarray:
        return np.asarray(model.predict(len(rows)), dtype=np.float32)

    preds = {s: predict(s, data.rows[s]) for s in data.test_sections}
    return FitResult(predictions=preds, predict=predict, info={"test_time": False})  # no image: nothing to adapt


# ------------------------------------------------------------------------------------------ Lightning training
def uses_cuda(cfg: TrainConfig) -> bool:
    """Whether Lightning will put the model on CUDA for this config."""
    return torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda")


def resolve_precision(cfg: TrainConfig) -> str:
    """bf16 (or fp16) mixed precision on CUDA, full precision on CPU."""
    if cfg.precision != "auto":
        return cfg.precision
    if uses_cuda(cfg):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def resolve_workers(cfg: TrainConfig) -> int:
    """On a small CPU machine the model needs every core; with a GPU, loader workers keep it fed."""
    if cfg.num_workers >= 0:
        return cfg.num_workers
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if uses_cuda(cfg):  # the CPUs are shared by the GPUs of this node: one process per device
        per_device = cpus // max(1, _local_devices(cfg))
        return max(1, min(8, per_device - 1))
    return 0


def _local_devices(cfg: TrainConfig) -> int:
    """GPUs this node trains on (devices may be a count, -1, 'auto' or a list string like '0,1')."""
    d = cfg.devices
    if isinstance(d, int):
        return torch.cuda.device_count() if d == -1 else max(1, d)
    d = str(d).strip()
    if d in ("auto", "-1"):
        return max(1, torch.cuda.device_count())
    if d.isdigit():
        return max(1, int(d))
    return max(1, len([x for x in d.strip("[]").split(",") if x.strip()]))


def maybe_compile(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """`train.compile`: compile the model in place (`nn.Module.compile`), so parameter names, checkpoints and
    `load_state_into` stay as without compilation. Inductor needs a C++ compiler on CPU (and Triton on CUDA)."""
    if cfg.compile:
        model.compile()


def stain_for(data: SplitData) -> dict[str, Any]:
    """The run's stain options and, for normalisation, the training reference (pooled training sections' LAB
    statistics, weighted by spots): stored in the checkpoint so that `predict` applies the same mapping."""
    from hifusion.stain import pool_stats, stain_meta

    st = data.stain
    if st is None:
        return stain_meta(None, "none", None)
    ref = None
    if st.normalise != "none":
        train_secs = [s for s in data.train_rows if len(data.train_rows[s])]
        ref = pool_stats((data.stain_source(s), len(data.rows[s])) for s in train_secs)
    return stain_meta(st.augment.model_dump(), st.normalise, ref)


def make_meta(model_cfg: ModelConfig, data: SplitData, norm: dict[str, Any]) -> dict[str, Any]:
    """Everything prediction needs besides the weights; primitives only so `weights_only=True` loads it."""
    return {
        "stain": stain_for(data),
        "train_mean": [float(x) for x in data.train_labels().mean(0)],  # the level `calibrate: centre` restores
        "version": __version__,
        "model": {"name": model_cfg.name, "options": json.loads(json.dumps(model_cfg.options))},
        "panel": list(data.panel),
        "label": data.label,
        "patch": {"pixel_size": float(data.pixel_size), "spot_px": int(data.spot_px),
                  "region_px": int(data.region_px)},
        "normalisation": norm,
        "train_sections": list(data.train_sections),
    }


class _SpotDataModule:
    """Builds loaders lazily so that the sampler knows the rank Lightning assigned (DDP-safe)."""

    def __init__(self, train_ds: SpotDataset, val_ds: SpotDataset | None, cfg: TrainConfig) -> None:
        self.train_ds, self.val_ds, self.cfg = train_ds, val_ds, cfg
        self.workers = resolve_workers(cfg)
        self.pin = uses_cuda(cfg)

    def loader(self, ds: SpotDataset, shuffle: bool, rank: int, world: int) -> torch.utils.data.DataLoader:
        sampler = EpochSampler(len(ds), shuffle=shuffle, seed=self.cfg.seed, rank=rank, world_size=world)
        return torch.utils.data.DataLoader(
            ds,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            num_workers=self.workers,
            pin_memory=self.pin,  # page-locked buffers only help host-to-GPU copies
            persistent_workers=self.workers > 0,
            drop_last=False,
        )


def _datamodule(dm: _SpotDataModule) -> Any:
    import lightning as L

    class SpotDataModule(L.LightningDataModule):
        def train_dataloader(self) -> Any:
            return dm.loader(dm.train_ds, True, self.trainer.global_rank, self.trainer.world_size)

        def val_dataloader(self) -> Any:
            if dm.val_ds is None:
                return []
            return dm.loader(dm.val_ds, False, self.trainer.global_rank, self.trainer.world_size)

    return SpotDataModule()


def _epoch_writer(path: Path) -> Any:
    import lightning as L

    from hifusion.io import atomic_write_text

    class EpochMetricsWriter(L.Callback):
        """One row per epoch in `metrics.csv`: losses, loss parts, learning rate, validation scores."""

        def __init__(self) -> None:
            self.rows: list[dict[str, float]] = []
            self.t0 = time.perf_counter()

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:  # after a resumed run's state is restored
            if path.exists() and trainer.current_epoch > 0:  # resumed: keep the epochs already done
                old = pd.read_csv(path)
                self.rows = old[old["epoch"] < trainer.current_epoch].to_dict("records")

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if not trainer.is_global_zero:
                return
            row: dict[str, float] = {"epoch": trainer.current_epoch}
            row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
            for k, v in sorted(trainer.callback_metrics.items()):
                row[k] = float(v)
            row["seconds"] = time.perf_counter() - self.t0
            self.rows.append(row)
            atomic_write_text(path, pd.DataFrame(self.rows).to_csv(index=False))

    return EpochMetricsWriter()


def normalisation_for(model_cfg: ModelConfig, data: SplitData) -> dict[str, Any]:
    """The run's patch normalisation: per patch (the paper), or statistics of the training patches."""
    if model_cfg.options.get("normalise", None) is not None:
        raise ConfigError("set the normalisation under data.normalise, not model options")
    if data.normalise == "dataset":
        if data.norm_stats is None:  # every model of a split shares the same training patches: read them once
            train_secs = [s for s in data.train_rows if len(data.train_rows[s])]
            mean, std = patch_mean_std([data.patches[s] for s in train_secs],
                                       [data.train_rows[s] for s in train_secs], data.spot_px)
            data.norm_stats = {"mode": "dataset", "mean": mean, "std": std}
        return dict(data.norm_stats)
    return {"mode": "patch"}


def _quiet_lightning() -> None:
    """Keep a user's terminal to our progress and results: Lightning's banner lines, tips and deprecation notices
    about its own internals say nothing the user can act on."""
    import logging
    import warnings

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Experiment logs directory.*exists and is not empty.*")


def run_lightning(module: Any, datamodule: Any, cfg: TrainConfig, run_dir: Path, *, has_val: bool,
                  steps_per_epoch: int, resume: bool) -> tuple[Any, Path, pd.DataFrame | None]:
    """Train a Lightning module with the package's checkpoint, resume and logging rules.

    `last.ckpt` after every epoch (resumable: optimiser, scheduler and loop state; all randomness is a function of
    seed, epoch and batch); `best.ckpt` by validation MSE only when a validation split exists, and then the best
    weights are loaded back. Returns (trainer, checkpoint used, per-epoch history).
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from hifusion.train.checkpoint import AtomicCheckpointIO, check_resumable, load_state_into

    _quiet_lightning()
    ckpt_dir = run_dir / C.CKPT_DIR
    last, best = ckpt_dir / C.CKPT_LAST, ckpt_dir / C.CKPT_BEST
    ckpt_path = str(last) if resume and last.exists() else None
    if ckpt_path:  # integrity (SHA-256), weights-only load and same panel/scale, before Lightning touches it
        check_resumable(last, module.meta)
    maybe_compile(module.model, cfg)
    # a monitor-less top-1 checkpoint named "last": Lightning >= 2.6 writes `save_last` only when a top-k file was
    # saved in the same step, so without validation a killed run would have nothing to resume from
    callbacks: list[Any] = [
        ModelCheckpoint(dirpath=ckpt_dir, filename=last.stem, monitor=None, save_top_k=1, enable_version_counter=False),
        _epoch_writer(run_dir / C.RUN_METRICS),
    ]
    from hifusion.train.progress import EpochLines, use_bar  # a bar on a terminal, one line per epoch elsewhere

    callbacks += [] if use_bar() else [EpochLines(getattr(module.model, "name", "") or type(module.model).__name__)]
    if has_val:
        callbacks.insert(0, ModelCheckpoint(dirpath=ckpt_dir, filename=best.stem, monitor="val_mse", save_top_k=1,
                                            enable_version_counter=False))
        if cfg.val.early_stopping_patience:
            callbacks.append(EarlyStopping(monitor="val_mse", patience=cfg.val.early_stopping_patience))
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=resolve_precision(cfg),  # type: ignore[arg-type]
        logger=CSVLogger(run_dir, name="logs", version=""),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=None if has_val else 0,
        enable_model_summary=False,
        log_every_n_steps=max(1, steps_per_epoch),
        default_root_dir=run_dir,
        enable_progress_bar=use_bar(),
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    chosen = best if has_val and best.exists() else last
    if chosen == best:
        load_state_into(module.model, best)
    history = pd.read_csv(run_dir / C.RUN_METRICS) if (run_dir / C.RUN_METRICS).exists() else None
    return trainer, chosen, history


@register_fitter("spot_region")
def _fit_spot_model(model: torch.nn.Module, model_cfg: ModelConfig, cfg: TrainConfig, data: SplitData,
                    run_dir: Path, resume: bool) -> FitResult:
    from hifusion.train.module import ExpressionModule

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    train_secs = [s for s in data.train_rows if len(data.train_rows[s])]
    train_ds = SpotDataset(
        [data.patches[s] for s in train_secs],
        [data.train_rows[s] for s in train_secs],
        [data.label_rows(s, data.train_rows[s]) for s in train_secs],
        spot_px=data.spot_px, region_px=data.region_px, augment=cfg.augment, seed=cfg.seed,
        stain_stats=stain_list(data, train_secs),
    )
    val_secs = [s for s in data.val_rows if len(data.val_rows[s])]
    val_ds = None
    if val_secs:
        val_ds = SpotDataset(
            [data.patches[s] for s in val_secs],
            [data.val_rows[s] for s in val_secs],
            [data.label_rows(s, data.val_rows[s]) for s in val_secs],
            spot_px=data.spot_px, region_px=data.region_px, stain_stats=stain_list(data, val_secs),
        )
    norm = normalisation_for(model_cfg, data)
    init_bias = getattr(model, "init_output_bias", None)
    if callable(init_bias):  # gene heads start at the mean training label (training spots only)
        init_bias(torch.from_numpy(train_ds.labels.mean(0)))
    meta = make_meta(model_cfg, data, norm)
    module = ExpressionModule(model, cfg, meta)
    steps = math.ceil(len(train_ds) / cfg.batch_size)
    trainer, chosen, history = run_lightning(module, _datamodule(_SpotDataModule(train_ds, val_ds, cfg)), cfg,
                                             run_dir, has_val=val_ds is not None, steps_per_epoch=steps,
                                             resume=resume)
    preds, predict = {}, None
    if trainer.is_global_zero:
        predict = rows_predictor(module, data, max(cfg.batch_size, 32))
        preds = {s: predict(s, data.rows[s]) for s in data.test_sections}
    return FitResult(predictions=preds, history=history, checkpoint=chosen,
                     info={"checkpoint_used": chosen.name, "epochs_run": int(trainer.current_epoch)},
                     global_rank=int(trainer.global_rank), predict=predict)


def stain_list(data: SplitData, sections: list[str]) -> list[np.ndarray] | None:
    """Per-section stain statistics for a dataset over `sections` (None when normalisation is off)."""
    stats = [data.stain_source(s) for s in sections]
    return None if any(x is None for x in stats) else stats  # type: ignore[return-value]


def rows_predictor(module: Any, data: SplitData, batch_size: int) -> Callable[..., np.ndarray]:
    """(section, rows, adabn, tta) -> predictions of a spot-level module on cache rows."""

    def predict(section: str, rows: np.ndarray, adabn: bool = False, tta: bool = False) -> np.ndarray:
        return predict_rows(module, data.patches[section], rows, data.spot_px, data.region_px, batch_size=batch_size,
                            stain_src=data.stain_source(section), adabn=adabn, tta=tta)

    return predict


@torch.no_grad()
def predict_rows(module: Any, patches: Any, rows: np.ndarray, spot_px: int, region_px: int,
                 batch_size: int = 64, *, stain_src: np.ndarray | None = None, adabn: bool = False,
                 tta: bool = False) -> np.ndarray:
    """Predict the given cache rows in order with the module's own preprocessing (eval mode, no augmentation).

    `adabn`: BatchNorm statistics re-estimated on these rows' patches first; `tta`: mean over the 8 D4 views.
    """
    ds = SpotDataset([patches], [rows], None, spot_px=spot_px, region_px=region_px,
                     stain_stats=None if stain_src is None else [stain_src])
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    return predict_loader(module, loader, adabn_batches=loader if adabn else None, tta=tta)


@torch.no_grad()
def predict_loader(module: Any, loader: Any, *, adabn_batches: Any = None, tta: bool = False) -> np.ndarray:
    """Run a module over a loader of uint8 (spot, region) batches; autocast on CUDA."""
    from contextlib import nullcontext

    from hifusion.preprocess import adabn

    was_training = module.training
    module.eval()
    device = next(module.parameters()).device

    def on_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            return module.predict_batch(on_device(batch), tta=tta)

    out = []
    try:
        # a one-spot batch has no batch statistics (BatchNorm refuses it in training mode): estimate from the others
        stats_batches = None if adabn_batches is None else (b for b in adabn_batches if len(b["spot"]) > 1)
        ctx = nullcontext() if stats_batches is None else adabn(module, stats_batches, forward)
        with ctx:
            out = [forward(batch).float().cpu().numpy() for batch in loader]
    finally:
        module.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def calibration_key(adabn: bool, tta: bool) -> str:
    return f"adabn={int(bool(adabn))},tta={int(bool(tta))}"


def save_shrink_factor(ckpt_dir: Path, key: tuple[bool, bool], factor: float) -> None:
    """Record a shrink factor beside the checkpoints, so `predict --calibrate shrink` applies the same one."""
    from hifusion.io import atomic_write_text

    path = ckpt_dir / C.CALIBRATION_JSON
    data = json.loads(path.read_text()) if path.exists() else {}
    data[calibration_key(*key)] = float(factor)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


def predict_variants(result: FitResult, data: SplitData, variants: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
    """Test predictions of a fitted model under each test-time variant (name -> AdaptConfig): section -> (N, G).

    Inference runs once per (adabn, tta) pair; calibration is applied afterwards. `shrink` fits its factor on the
    validation spots predicted under the same (adabn, tta) options; `centre` restores the training mean's level.
    """
    from hifusion.preprocess import centre_on, shrink_factor

    if result.predict is None:
        raise ValueError("this fit result holds no predictor")
    level = data.train_labels().mean(0)
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
        preds = raw[key]
        if a.calibrate == "none":
            out[name] = preds
            continue
        factor = 1.0
        if a.calibrate == "shrink":
            vsecs = [s for s in data.val_rows if len(data.val_rows[s])]
            if key not in val_raw:
                val_raw[key] = [result.predict(s, data.val_rows[s], *key) for s in vsecs]
            factor = shrink_factor(val_raw[key], [data.label_rows(s, data.val_rows[s]) for s in vsecs])
            result.info[f"shrink_factor[{name}]"] = factor
            if result.checkpoint is not None:
                save_shrink_factor(Path(result.checkpoint).parent, key, factor)
        out[name] = {s: centre_on(p, level, factor) for s, p in preds.items()}
    return out


from hifusion.train import fitters as _baseline_fitters  # noqa: E402,F401  (registers section/features/retrieval)

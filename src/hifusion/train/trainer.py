"""The one Lightning path: resource choices, the data module, the per-epoch metrics file and `run_lightning`.

Every trained model kind (spot batches, whole sections, retrieval) goes through `run_lightning` with an
`ExpressionDataModule`, so checkpoints, resume, early stopping and logging follow one set of rules.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from hifusion import constants as C
from hifusion.checkpoint import check_resumable, load_state_into
from hifusion.config import TrainConfig
from hifusion.data.torch_datasets import EpochSampler
from hifusion.progress import use_bars
from hifusion.train.callbacks import AtomicCheckpointIO, EpochLines, EpochMetricsWriter


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


def set_threads(cfg: TrainConfig) -> None:
    """`train.threads`: torch's intra-op threads on CPU (None keeps torch's default)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


def maybe_compile(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """`train.compile`: compile the model in place (`nn.Module.compile`), so parameter names, checkpoints and
    `load_state_into` stay as without compilation. Inductor needs a C++ compiler on CPU (and Triton on CUDA)."""
    if cfg.compile:
        model.compile()


class ExpressionDataModule(L.LightningDataModule):
    """Training and validation loaders, built lazily so that the sampler knows the rank Lightning assigned.

    `batch_size=None`: each dataset item is already a batch (one whole section), as section models need.
    """

    def __init__(self, train_ds: Any, val_ds: Any | None, cfg: TrainConfig, batch_size: int | None) -> None:
        super().__init__()
        self.train_ds, self.val_ds, self.cfg, self.batch_size = train_ds, val_ds, cfg, batch_size
        self.workers = resolve_workers(cfg)

    def loader(self, ds: Any, shuffle: bool) -> torch.utils.data.DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        sampler = EpochSampler(len(ds), shuffle=shuffle, seed=self.cfg.seed, rank=rank, world_size=world)
        whole = self.batch_size is None
        workers = min(self.workers, len(ds)) if whole else self.workers
        # No drop_last (DESIGN section 8), except a last training batch of one spot: BatchNorm cannot normalise a
        # batch of one in training mode, so that spot waits for the next epoch's shuffle instead of crashing the fit.
        lone = shuffle and not whole and len(sampler) % self.batch_size == 1
        return torch.utils.data.DataLoader(
            ds,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=uses_cuda(self.cfg),  # page-locked buffers only help host-to-GPU copies
            persistent_workers=workers > 0 and not whole,
            drop_last=lone,
        )

    def train_dataloader(self) -> Any:
        return self.loader(self.train_ds, True)

    def val_dataloader(self) -> Any:
        return [] if self.val_ds is None else self.loader(self.val_ds, False)


def _quiet_lightning() -> None:
    """Keep a user's terminal to our progress and results: Lightning's banner lines, tips and deprecation notices
    about its own internals say nothing the user can act on."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Experiment logs directory.*exists and is not empty.*")
    # a frozen encoder stays in eval mode on purpose (`models.encoders.Encoder.train`)
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")


def _callbacks(module: Any, cfg: TrainConfig, run_dir: Path, has_val: bool) -> list[Any]:
    """`last.ckpt` every epoch; `best.ckpt` and early stopping on validation MSE when there is validation."""
    ckpt_dir = run_dir / C.CKPT_DIR
    # a monitor-less top-1 checkpoint named "last": Lightning >= 2.6 writes `save_last` only when a top-k file was
    # saved in the same step, so without validation a killed run would have nothing to resume from
    callbacks: list[Any] = [
        ModelCheckpoint(dirpath=ckpt_dir, filename=Path(C.CKPT_LAST).stem, monitor=None, save_top_k=1,
                        enable_version_counter=False),
        EpochMetricsWriter(run_dir / C.RUN_METRICS),
    ]
    # a bar on a terminal, one line per epoch elsewhere
    callbacks += [] if use_bars() else [EpochLines(getattr(module.model, "name", "") or type(module.model).__name__)]
    if has_val:
        callbacks.insert(0, ModelCheckpoint(dirpath=ckpt_dir, filename=Path(C.CKPT_BEST).stem, monitor="val_mse",
                                            save_top_k=1, enable_version_counter=False))
        if cfg.val.early_stopping_patience:
            callbacks.append(EarlyStopping(monitor="val_mse", patience=cfg.val.early_stopping_patience))
    return callbacks


def run_lightning(module: Any, datamodule: Any, cfg: TrainConfig, run_dir: Path, *, has_val: bool,
                  steps_per_epoch: int, resume: bool,
                  first_callbacks: list[Any] | None = None) -> tuple[Any, Path, pd.DataFrame | None]:
    """Train a Lightning module with the package's checkpoint, resume and logging rules.

    `last.ckpt` after every epoch (resumable: optimiser, scheduler and loop state; all randomness is a function of
    seed, epoch and batch); `best.ckpt` by validation MSE only when a validation split exists, and then the best
    weights are loaded back. `first_callbacks` run before the package's own (e.g. `TestSelection`, whose figure
    the metrics file records). Returns (trainer, checkpoint used, per-epoch history).
    """
    _quiet_lightning()
    ckpt_dir = run_dir / C.CKPT_DIR
    last, best = ckpt_dir / C.CKPT_LAST, ckpt_dir / C.CKPT_BEST
    ckpt_path = str(last) if resume and last.exists() else None
    if ckpt_path:  # integrity (SHA-256), weights-only load and same panel/scale, before Lightning touches it
        check_resumable(last, module.meta)
    maybe_compile(module.model, cfg)
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=resolve_precision(cfg),  # type: ignore[arg-type]
        logger=CSVLogger(run_dir, name="logs", version=""),
        callbacks=[*(first_callbacks or []), *_callbacks(module, cfg, run_dir, has_val)],
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        limit_val_batches=None if has_val else 0,
        limit_train_batches=cfg.max_steps_per_epoch,  # None: every batch
        enable_model_summary=False,
        log_every_n_steps=max(1, min(steps_per_epoch, cfg.max_steps_per_epoch or steps_per_epoch)),
        default_root_dir=run_dir,
        enable_progress_bar=use_bars(),
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    chosen = best if has_val and best.exists() else last
    if chosen == best:
        load_state_into(module.model, best)
    history = pd.read_csv(run_dir / C.RUN_METRICS) if (run_dir / C.RUN_METRICS).exists() else None
    return trainer, chosen, history

"""Fitters of the baseline model kinds (registered into `train.fit` by importing this module).

- ``section``: whole-section models (HisToGene, Hist2ST, TRIPLEX). Lightning, one batch = every selected spot of
  one section with its array coordinates; same patches, labels, splits, augmentation, optimiser, schedule,
  checkpoints and metrics file as the spot models. Validation spots (a spatial block, or whole sections) form their
  own section-batches, so validation never sees training labels. Test sections are predicted whole.
- ``features``: frozen-encoder features + closed-form fit (the HEST-style linear probe); writes a checkpoint in
  the same self-describing format, so it predicts alone.
- ``retrieval``: spot-level contrastive training (BLEEP) through the ``spot_region`` fitter, after the training
  labels the prediction retrieves from were stored in the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from hifusion import constants as C
from hifusion.config import ModelConfig, TrainConfig
from hifusion.data.datasets import EpochSampler, SectionDataset, SpotDataset
from hifusion.data.splitdata import SplitData
from hifusion.errors import ConfigError
from hifusion.train.fit import (
    _FITTERS,
    FitResult,
    make_meta,
    normalisation_for,
    register_fitter,
    resolve_workers,
    rows_predictor,
    run_lightning,
    stain_list,
)

__all__ = ["predict_section", "save_model_checkpoint"]


def save_model_checkpoint(model: torch.nn.Module, meta: dict[str, Any], path: Path) -> Path:
    """Write weights + metadata in the trainer's checkpoint layout (atomic, with SHA-256), for `load_checkpoint`."""
    from hifusion.train.checkpoint import AtomicCheckpointIO
    from hifusion.train.module import CKPT_META_KEY

    state = {f"model.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    AtomicCheckpointIO().save_checkpoint({"state_dict": state, CKPT_META_KEY: meta, "epoch": 0}, path)
    return path


# ----------------------------------------------------------------------------------------------- whole sections
def _section_dataset(data: SplitData, rows: dict[str, np.ndarray], with_labels: bool, with_region: bool,
                     augment: bool = False, seed: int = 0) -> SectionDataset | None:
    secs = [s for s in rows if len(rows[s])]
    if not secs:
        return None
    return SectionDataset(
        [data.patches[s] for s in secs],
        [rows[s] for s in secs],
        [data.array_coords(s, rows[s]) for s in secs],
        [data.label_rows(s, rows[s]) for s in secs] if with_labels else None,
        spot_px=data.spot_px, region_px=data.region_px, augment=augment, seed=seed, with_region=with_region,
        stain_stats=stain_list(data, secs),
    )


def _section_datamodule(train_ds: SectionDataset, val_ds: SectionDataset | None, cfg: TrainConfig) -> Any:
    import lightning as L

    workers = resolve_workers(cfg)

    def loader(ds: SectionDataset, shuffle: bool, rank: int, world: int) -> torch.utils.data.DataLoader:
        sampler = EpochSampler(len(ds), shuffle=shuffle, seed=cfg.seed, rank=rank, world_size=world)
        return torch.utils.data.DataLoader(ds, batch_size=None, sampler=sampler, num_workers=min(workers, len(ds)),
                                           pin_memory=torch.cuda.is_available(), persistent_workers=False)

    class SectionDataModule(L.LightningDataModule):
        def train_dataloader(self) -> Any:
            return loader(train_ds, True, self.trainer.global_rank, self.trainer.world_size)

        def val_dataloader(self) -> Any:
            if val_ds is None:
                return []
            return loader(val_ds, False, self.trainer.global_rank, self.trainer.world_size)

    return SectionDataModule()


@register_fitter("section")
def _fit_section_model(model: torch.nn.Module, model_cfg: ModelConfig, cfg: TrainConfig, data: SplitData,
                       run_dir: Path, resume: bool) -> FitResult:
    from hifusion.train.module import SectionModule

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with_region = bool(getattr(model, "uses_region", True))
    train_ds = _section_dataset(data, data.train_rows, True, with_region, augment=cfg.augment, seed=cfg.seed)
    if train_ds is None:
        raise ConfigError(f"split {data.split.name}: no training spots")
    val_ds = _section_dataset(data, data.val_rows, True, with_region)
    meta = make_meta(model_cfg, data, normalisation_for(model_cfg, data))
    init_bias = getattr(model, "init_output_bias", None)
    if callable(init_bias):  # gene heads start at the mean training label (training spots only), as spot models do
        init_bias(torch.as_tensor(data.train_labels().mean(0), dtype=torch.float32))
    module = SectionModule(model, cfg, meta)
    trainer, chosen, history = run_lightning(module, _section_datamodule(train_ds, val_ds, cfg), cfg, run_dir,
                                             has_val=val_ds is not None, steps_per_epoch=len(train_ds),
                                             resume=resume)
    preds, predict = {}, None
    if trainer.is_global_zero:

        def predict(section: str, rows: np.ndarray, adabn: bool = False, tta: bool = False) -> np.ndarray:
            return predict_section(module, data.patches[section], rows, data.array_coords(section, rows),
                                   data.spot_px, data.region_px, stain_src=data.stain_source(section),
                                   adabn=adabn, tta=tta)

        preds = {s: predict(s, data.rows[s]) for s in data.test_sections}
    return FitResult(predictions=preds, history=history, checkpoint=chosen,
                     info={"checkpoint_used": chosen.name, "epochs_run": int(trainer.current_epoch)},
                     global_rank=int(trainer.global_rank), predict=predict)


@torch.no_grad()
def predict_section(module: Any, patches: Any, rows: np.ndarray, coords: np.ndarray, spot_px: int,
                    region_px: int, *, stain_src: np.ndarray | None = None, adabn: bool = False,
                    tta: bool = False) -> np.ndarray:
    """Predict the given rows of one section in one pass (eval mode, no augmentation): (len(rows), G) float32."""
    from hifusion.train.fit import predict_loader

    ds = SectionDataset([patches], [rows], [coords], None, spot_px=spot_px, region_px=region_px,
                        with_region=bool(getattr(module.model, "uses_region", True)),
                        stain_stats=None if stain_src is None else [stain_src])
    batch = [ds[0]]
    return predict_loader(module, batch, adabn_batches=batch if adabn else None, tta=tta)


# ------------------------------------------------------------------------------------ frozen features, closed form
@torch.no_grad()
def _features(module: Any, data: SplitData, rows: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    secs = [s for s in rows if len(rows[s])]
    ds = SpotDataset([data.patches[s] for s in secs], [rows[s] for s in secs], None, spot_px=data.spot_px,
                     region_px=data.region_px, stain_stats=stain_list(data, secs))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    device = next(module.parameters()).device
    out = []
    for batch in loader:
        spot, _ = module.preprocess({k: v.to(device) for k, v in batch.items()})  # eval mode: no augmentation
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            out.append(module.model.features(spot).float().cpu().numpy())
    return np.concatenate(out)


@register_fitter("features")
def _fit_features_model(model: torch.nn.Module, model_cfg: ModelConfig, cfg: TrainConfig, data: SplitData,
                        run_dir: Path, resume: bool) -> FitResult:
    """Frozen features of the training spot patches (no augmentation) -> `model.fit_features` -> checkpoint."""
    from hifusion.train.module import ExpressionModule

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    train_secs = [s for s in data.train_rows if len(data.train_rows[s])]
    meta = make_meta(model_cfg, data, normalisation_for(model_cfg, data))
    module = ExpressionModule(model, cfg, meta)
    if torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda"):
        module = module.cuda()
    module.eval()
    bs = max(cfg.batch_size, 32)
    x = _features(module, data, {s: data.train_rows[s] for s in train_secs}, bs)
    model.fit_features(x, data.train_labels())
    ckpt = save_model_checkpoint(model, meta, run_dir / C.CKPT_DIR / C.CKPT_LAST)
    predict = rows_predictor(module, data, bs)
    preds = {s: predict(s, data.rows[s]) for s in data.test_sections}
    return FitResult(predictions=preds, checkpoint=ckpt, predict=predict,
                     info={"checkpoint_used": ckpt.name, "n_features": int(x.shape[1]),
                           "alpha": float(getattr(model, "alpha_used", float("nan")))})


# ------------------------------------------------------------------------------------------------------ retrieval
@register_fitter("retrieval")
def _fit_retrieval_model(model: torch.nn.Module, model_cfg: ModelConfig, cfg: TrainConfig, data: SplitData,
                         run_dir: Path, resume: bool) -> FitResult:
    """Store the training labels (training spots only, validation excluded), then train like a spot model."""
    model.set_reference(data.train_labels())
    return _FITTERS["spot_region"](model, model_cfg, cfg, data, run_dir, resume)

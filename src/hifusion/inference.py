"""The one inference path: uint8 patch batches -> shared preprocessing -> plain model -> predictions.

Training (validation, benchmark test sections, frozen features), the benchmark's test-time variants and whole-slide
prediction all run through here, so a spot predicted by `predict` and the same spot scored in a benchmark see the
same pixels and the same model call. Nothing here imports Lightning, training or orchestration code: `Predictor` is
a plain `nn.Module` holding the model and its checkpoint metadata.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from hifusion.data.datasets import SectionDataset, SpotDataset
from hifusion.preprocess import adabn, input_sources, memory_format, preprocess_images, tta_mean

Batch = dict[str, torch.Tensor]


def used_inputs(model: nn.Module) -> tuple[str, ...]:
    """The image inputs a model reads: the spot always, the region unless `uses_region` is False."""
    return ("spot", "region") if getattr(model, "uses_region", True) else ("spot",)


def model_inputs(model: nn.Module, meta: dict[str, Any], batch: Batch, *, augment: bool,
                 channels_last: bool | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 batch -> model inputs: preset encoder views, stain normalisation, colour augmentation (when `augment`),
    standardisation.

    The region patch is only prepared for models that use it (`uses_region`, default True), and read for others
    only where a preset encoder's field of view is larger than the spot patch (`meta['inputs']`)."""
    fmt = memory_format(channels_last, batch["spot"].device)
    used = used_inputs(model)
    region = batch.get("region") if "region" in input_sources(meta, used) else None
    spot, region = preprocess_images([batch["spot"], region], meta, source=batch.get("stain_src"), augment=augment,
                                     fmt=fmt, keep=used)
    return spot, region


def call_model(model: nn.Module, spot: torch.Tensor, region: torch.Tensor | None, batch: Batch) -> Any:
    """Call a model the way its input kind needs: whole-section models also receive the array coordinates."""
    if getattr(model, "input_kind", "spot_region") == "section":
        return model(spot, region, batch["coords"])
    return model(spot, region)


def _label_scale(meta: dict[str, Any], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    scale = meta.get("label_scale")
    if not scale:
        return None
    return tuple(torch.as_tensor(scale[k], dtype=like.dtype, device=like.device) for k in ("mean", "std"))


def to_label_units(pred: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
    """Model outputs in label units: a model trained on gene-standardised labels (`train.scale_labels: gene`, the
    checkpoint's `label_scale`) outputs per-gene z-scores, mapped back here for every prediction path."""
    ms = _label_scale(meta, pred)
    return pred if ms is None else pred * ms[1] + ms[0]


def to_model_units(y: torch.Tensor, meta: dict[str, Any]) -> torch.Tensor:
    """Labels as the model is trained on them (the inverse of `to_label_units`)."""
    ms = _label_scale(meta, y)
    return y if ms is None else (y - ms[0]) / ms[1]


def predict_views(model: nn.Module, meta: dict[str, Any], batch: Batch, spot: torch.Tensor,
                  region: torch.Tensor | None, tta: bool) -> torch.Tensor:
    """Predictions of prepared inputs in label units, averaged over the D4 views when `tta`: the one model call
    that `Predictor` and the Lightning module share."""
    pred = tta_mean(lambda s, r: call_model(model, s, r, batch).pred, spot, region, tta)
    return to_label_units(pred, meta)


class Predictor(nn.Module):
    """A plain model + its checkpoint metadata + the shared preprocessing: what prediction needs, no trainer.

    Parameter names are `model.*`, as in training checkpoints. `preprocess`, `predict_batch` and the `.model`
    attribute are the interface `predict_loader` and `preprocess.adabn` use, which the Lightning module shares.
    """

    def __init__(self, model: nn.Module, meta: dict[str, Any], channels_last: bool | None = True) -> None:
        super().__init__()
        self.model = model
        self.meta = meta
        self.channels_last = channels_last

    def preprocess(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        return model_inputs(self.model, self.meta, batch, augment=False, channels_last=self.channels_last)

    def predict_batch(self, batch: Batch, tta: bool = False) -> torch.Tensor:
        """Predictions of a uint8 batch (eval mode expected), averaged over the D4 views when `tta`."""
        spot, region = self.preprocess(batch)
        return predict_views(self.model, self.meta, batch, spot, region, tta)


@torch.no_grad()
def predict_loader(module: Any, loader: Iterable[Batch], *, adabn_batches: Iterable[Batch] | None = None,
                   tta: bool = False, features: bool = False) -> np.ndarray:
    """Run a module (`Predictor` or the Lightning module) over uint8 (spot, region) batches; autocast on CUDA.

    `adabn_batches`: BatchNorm statistics re-estimated on these first; `tta`: mean over the 8 D4 views;
    `features`: the model's frozen spot features (`model.features`) instead of predictions."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device

    def on_device(batch: Batch) -> Batch:
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    def forward(batch: Batch) -> torch.Tensor:
        if features:
            spot, _ = module.preprocess(on_device(batch))
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                return module.model.features(spot)
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


def predict_rows(module: Any, patches: Any, rows: np.ndarray, spot_px: int, region_px: int,
                 batch_size: int = 64, *, stain_src: np.ndarray | None = None, adabn: bool = False,
                 tta: bool = False) -> np.ndarray:
    """Predict the given cache rows of one section in order, spot batch by spot batch (eval mode, no augmentation)."""
    ds = SpotDataset([patches], [rows], None, spot_px=spot_px, region_px=region_px,
                     stain_stats=None if stain_src is None else [stain_src])
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    return predict_loader(module, loader, adabn_batches=loader if adabn else None, tta=tta)


def predict_section(module: Any, patches: Any, rows: np.ndarray, coords: np.ndarray, spot_px: int,
                    region_px: int, *, stain_src: np.ndarray | None = None, adabn: bool = False,
                    tta: bool = False) -> np.ndarray:
    """Predict the given rows of one section in one pass (whole-section models): (len(rows), G) float32."""
    used = used_inputs(module.model)
    ds = SectionDataset([patches], [rows], [coords], None, spot_px=spot_px, region_px=region_px,
                        with_region="region" in input_sources(module.meta, used),
                        stain_stats=None if stain_src is None else [stain_src])
    batch = [ds[0]]
    return predict_loader(module, batch, adabn_batches=batch if adabn else None, tta=tta)


def calibration_key(adabn: bool, tta: bool, smooth_um: float = 0.0, gene_pcs: int = 0) -> str:
    """Key of a shrink factor in `calibration.json`, per set of test-time options (smoothing and the gene
    projection only when on)."""
    key = f"adabn={int(bool(adabn))},tta={int(bool(tta))}"
    if smooth_um:
        key += f",smooth_um={float(smooth_um):g}"
    return key if not gene_pcs else f"{key},gene_pcs={int(gene_pcs)}"

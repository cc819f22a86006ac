"""The one inference path: uint8 patch batches -> shared preprocessing -> plain model -> predictions.

Training (validation, benchmark test sections, frozen features), the benchmark's test-time variants and whole-slide
prediction all run through here, so a spot predicted by `predict` and the same spot scored in a benchmark see the
same pixels and the same model call. Nothing here imports Lightning, training or orchestration code: `Predictor` is
a plain `nn.Module` holding the model and its checkpoint metadata.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hifusion import constants as C
from hifusion.checkpoint_meta import CheckpointMeta
from hifusion.contracts import BatchPredictor, ExpressionModel
from hifusion.data.cache.embeddings import embeddings_path, patch_fingerprint, read_embeddings, write_embeddings
from hifusion.data.torch_datasets import SectionDataset, SpotDataset
from hifusion.geometry import PatchGeometry
from hifusion.preprocess import D4_SIZE, adabn, d4, input_sources, memory_format, preprocess_images, tta_mean
from hifusion.recipe import PLAIN, Recipe

Batch = dict[str, torch.Tensor]


def used_inputs(model: nn.Module) -> tuple[str, ...]:
    """The image inputs a model reads: the spot always, the region unless `uses_region` is False."""
    return ("spot", "region") if getattr(model, "uses_region", True) else ("spot",)


def model_inputs(model: nn.Module, meta: CheckpointMeta, batch: Batch, *, augment: bool,
                 channels_last: bool | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 batch -> model inputs: preset encoder views, stain normalisation, colour augmentation (when `augment`),
    standardisation.

    The region patch is only prepared for models that use it (`uses_region`, default True), and read for others
    only where a preset encoder's field of view is larger than the spot patch (`meta.views`)."""
    fmt = memory_format(channels_last, batch["spot"].device)
    used = used_inputs(model)
    region = batch.get("region") if "region" in input_sources(meta.views, used) else None
    spot, region = preprocess_images([batch["spot"], region], meta, source=batch.get("stain_src"), augment=augment,
                                     fmt=fmt, keep=used)
    return spot, region


def call_model(model: ExpressionModel, spot: torch.Tensor, region: torch.Tensor | None, batch: Batch) -> Any:
    """Call a model the way its input kind needs: whole-section models also receive the array coordinates."""
    if model.input_kind == "section":
        return model(spot, region, batch["coords"])
    return model(spot, region)


def _label_scale(meta: CheckpointMeta, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    scale = meta.label_scale
    if not scale:
        return None
    return tuple(torch.as_tensor(scale[k], dtype=like.dtype, device=like.device) for k in ("mean", "std"))


def to_label_units(pred: torch.Tensor, meta: CheckpointMeta) -> torch.Tensor:
    """Model outputs in label units: a model trained on gene-standardised labels (`train.scale_labels: gene`, the
    checkpoint's `label_scale`) outputs per-gene z-scores, mapped back here for every prediction path."""
    ms = _label_scale(meta, pred)
    return pred if ms is None else pred * ms[1] + ms[0]


def to_model_units(y: torch.Tensor, meta: CheckpointMeta) -> torch.Tensor:
    """Labels as the model is trained on them (the inverse of `to_label_units`)."""
    ms = _label_scale(meta, y)
    return y if ms is None else (y - ms[0]) / ms[1]


def predict_views(model: ExpressionModel, meta: CheckpointMeta, batch: Batch, spot: torch.Tensor,
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

    def __init__(self, model: nn.Module, meta: CheckpointMeta, channels_last: bool | None = True) -> None:
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
def predict_loader(module: BatchPredictor, loader: Iterable[Batch], *, adabn_batches: Iterable[Batch] | None = None,
                   tta: bool = False, features: bool = False, view: int = 0) -> np.ndarray:
    """Run a module (`Predictor` or the Lightning module) over uint8 (spot, region) batches; autocast on CUDA.

    `adabn_batches`: BatchNorm statistics re-estimated on these first; `tta`: mean over the 8 D4 views;
    `features`: the model's frozen spot features (`model.features`) instead of predictions, of the D4 `view` of the
    prepared spot (0: as stored), the view `tta` gives the model."""
    was_training = module.training
    module.eval()
    device = next(module.parameters()).device

    def on_device(batch: Batch) -> Batch:
        return {k: v.to(device, non_blocking=True) for k, v in batch.items()}

    def forward(batch: Batch) -> torch.Tensor:
        if features:
            spot, _ = module.preprocess(on_device(batch))
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                return module.model.features(d4(spot, view))
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


def predict_rows(module: BatchPredictor, patches: Any, rows: np.ndarray, geometry: PatchGeometry,
                 batch_size: int = 64, *, stain_src: np.ndarray | None = None, recipe: Recipe = PLAIN) -> np.ndarray:
    """Predict the given cache rows of one section in order, spot batch by spot batch (eval mode, no augmentation),
    under the recipe's inference part (AdaBN, D4 views)."""
    ds = SpotDataset([patches], [rows], None, spot_px=geometry.spot_px, region_px=geometry.region_px,
                     stain_stats=None if stain_src is None else [stain_src])
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0)
    return predict_loader(module, loader, adabn_batches=loader if recipe.adabn else None, tta=recipe.tta)


def predict_section(module: BatchPredictor, patches: Any, rows: np.ndarray, coords: np.ndarray,
                    geometry: PatchGeometry, *, stain_src: np.ndarray | None = None,
                    recipe: Recipe = PLAIN) -> np.ndarray:
    """Predict the given rows of one section in one pass (whole-section models): (len(rows), G) float32."""
    used = used_inputs(module.model)
    ds = SectionDataset([patches], [rows], [coords], None, spot_px=geometry.spot_px, region_px=geometry.region_px,
                        with_region="region" in input_sources(module.meta.views, used),
                        stain_stats=None if stain_src is None else [stain_src])
    batch = [ds[0]]
    return predict_loader(module, batch, adabn_batches=batch if recipe.adabn else None, tta=recipe.tta)


# ------------------------------------------------------------------------------------- the embedding cache
# Checkpoint metadata that does not change what reaches the encoder (`CheckpointMeta.encoder_inputs` leaves it out)
# stays out of the embedding key, so that every model on the same frozen encoder and preprocessing (any panel, probe
# size, ridge alpha) shares the embeddings. Everything else in the metadata (normalisation, stain normalisation,
# patch scale, package version, and whatever later preprocessing records there) is part of the key.


def embedding_base(module: Predictor) -> dict[str, Any] | None:
    """The part of an embedding key that every section and view of a fitted frozen-encoder model shares; None for a
    model that does not describe its encoder (`embedding_identity`), whose embeddings are then never cached.

    Computed once per fit (it hashes the encoder's weights file, or its tensors when they are random)."""
    model = module.model
    identity = getattr(model, "embedding_identity", None)
    if not callable(identity) or not callable(getattr(model, "features", None)):
        return None
    encoder = identity()
    if encoder is None:  # the encoder trains: its embeddings change
        return None
    device = next(module.parameters()).device
    meta = module.meta.encoder_inputs()
    compute = {"device": device.type, "autocast": device.type == "cuda", "torch": torch.__version__,
               "channels_last": memory_format(module.channels_last, device) == torch.channels_last,
               "batch": C.EMBEDDING_BATCH}
    return {"format": C.EMBEDDING_FORMAT, "encoder": encoder, "meta": meta, "compute": compute}


def embedding_key(base: dict[str, Any], section: str, patches: Any, view: int,
                  stain_src: np.ndarray | None) -> dict[str, Any]:
    """The full key of one section's embeddings under one D4 view (0-7; 0 is the patch as stored)."""
    src = None if stain_src is None else np.asarray(stain_src, np.float64).tolist()
    return {**base, "section": str(section), "patches": patch_fingerprint(patches.path), "n_spots": len(patches),
            "stain_source": src, "view": int(view)}


class SectionEmbeddings:
    """Frozen-encoder embeddings of every spot of a section, per D4 view, for one fitted `Predictor`: computed once
    (fixed batches of `EMBEDDING_BATCH` spots, in cache order) and, with `cache`, stored beside the patch cache and
    read back by every later fit, fold and run with the same key (`hifusion.data.cache.embeddings`).

    With or without the cache the same numbers reach the model's head, so predictions are identical either way.
    `stats` counts the (section, view) pairs that ran the encoder (`encoded`) and those read from the cache (`read`):
    one dict, updated in place, so a run's record made before its test-time views were predicted stays current."""

    def __init__(self, module: Predictor, *, cache: bool = True) -> None:
        self.module = module
        self.base = embedding_base(module) if cache else None  # hashing the weights only where a key is needed
        self.cache = self.base is not None
        self.stats = {"cache": self.cache, "encoded": 0, "read": 0}
        self._memo: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()  # most recent last, bounded in bytes

    def get(self, section: str, patches: Any, view: int = 0, stain_src: np.ndarray | None = None) -> np.ndarray:
        """(len(patches), C) float32 embeddings of the section's spots under D4 view `view`."""
        if (section, view) in self._memo:
            self._memo.move_to_end((section, view))
            return self._memo[(section, view)]
        path = key = None
        x = None
        if self.cache:
            key = embedding_key(self.base, section, patches, view, stain_src)  # type: ignore[arg-type]
            path = embeddings_path(Path(patches.path).parent, section, key)
            x = read_embeddings(path, key, len(patches))
        if x is None:
            x = self._encode(patches, view, stain_src)
            self.stats["encoded"] += 1
            if path is not None:
                write_embeddings(path, key, x)  # type: ignore[arg-type]
        else:
            self.stats["read"] += 1
        self._memo[(section, view)] = x
        while len(self._memo) > 1 and sum(a.nbytes for a in self._memo.values()) > C.EMBEDDING_MEMO_BYTES:
            self._memo.popitem(last=False)  # a large cohort: read (or, without the cache, compute) it again later
        return x

    def _encode(self, patches: Any, view: int, stain_src: np.ndarray | None) -> np.ndarray:
        patch = self.module.meta.patch
        ds = SpotDataset([patches], [np.arange(len(patches))], None, spot_px=patch.spot_px,
                         region_px=patch.region_px, stain_stats=None if stain_src is None else [stain_src])
        loader = torch.utils.data.DataLoader(ds, batch_size=C.EMBEDDING_BATCH, shuffle=False, num_workers=0)
        x = predict_loader(self.module, loader, features=True, view=view)
        return np.ascontiguousarray(x.reshape(len(patches), -1), dtype=np.float32)

    @torch.no_grad()
    def predict(self, section: str, patches: Any, rows: np.ndarray, *, stain_src: np.ndarray | None = None,
                tta: bool = False, batch_size: int = 64, module: BatchPredictor | None = None) -> np.ndarray:
        """Predictions (len(rows), G) in label units from the embeddings through the model's `from_features`,
        averaged over the 8 D4 views when `tta` (the same sum, in the same order, as `preprocess.tta_mean`).

        `module`: another fitted copy of the same frozen encoder (e.g. the weights of another epoch) whose head
        reads these embeddings; by default the one they were made with."""
        module = self.module if module is None else module
        model, meta, rows = module.model, module.meta, np.asarray(rows, np.int64)
        device = next(module.parameters()).device
        was_training = model.training
        model.eval()
        total: np.ndarray | None = None
        for k in range(D4_SIZE) if tta else (0,):
            x = self.get(section, patches, k, stain_src)
            parts = []
            for i in range(0, max(len(rows), 1), batch_size):  # no rows: one empty batch, (0, G) out
                f = torch.from_numpy(x[rows[i : i + batch_size]]).to(device)
                with torch.autocast(device.type, enabled=device.type == "cuda"):
                    parts.append(model.from_features(f).pred.float())
            p = torch.cat(parts)
            total = p if total is None else total + p
        model.train(was_training)
        pred = total / D4_SIZE if tta else total
        return to_label_units(pred, meta).float().cpu().numpy()

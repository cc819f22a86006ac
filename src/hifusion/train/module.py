"""The Lightning wrapper around a plain model: preprocessing on the device, losses, optimiser and schedule.

The model itself stays a plain `nn.Module` (importable and usable without Lightning); this module only adds the
training recipe of the paper (Adam, cosine decay per epoch) and the self-describing checkpoint metadata.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from hifusion.checkpoint_meta import CheckpointMeta
from hifusion.config import TrainConfig
from hifusion.constants import CKPT_META_KEY
from hifusion.inference import call_model, model_inputs, predict_views, to_label_units, to_model_units
from hifusion.metrics import pcc_gene
from hifusion.models.losses import get_loss

__all__ = ["EmbeddingModule", "ExpressionModule", "SectionModule"]


class ExpressionModule(L.LightningModule):
    """Trains any spot-level model of the registry on (spot, region) patches and expression labels."""

    def __init__(self, model: nn.Module, train_cfg: TrainConfig, meta: CheckpointMeta) -> None:
        super().__init__()
        self.model = model
        self.cfg = train_cfg
        self.meta = meta  # written into every checkpoint: model options, panel, labels, patch scale, normalisation
        self.loss_fn = get_loss(getattr(model, "loss_name", "mse"))
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    # ---------------------------------------------------------------------------------------------------- helpers
    def preprocess(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 batch -> model inputs (`inference.model_inputs`); colour augmentation only while training."""
        return model_inputs(self.model, self.meta, batch, augment=self.training and self.cfg.augment,
                            channels_last=self.cfg.channels_last)

    def forward(self, spot: torch.Tensor, region: torch.Tensor | None, coords: torch.Tensor | None = None) -> Any:
        return self.model(spot, region) if coords is None else self.model(spot, region, coords)

    def predict_batch(self, batch: dict[str, torch.Tensor], tta: bool = False) -> torch.Tensor:
        """Predictions of a uint8 batch (eval mode expected), averaged over the D4 views when `tta`."""
        spot, region = self.preprocess(batch)
        return predict_views(self.model, self.meta, batch, spot, region, tta)

    # --------------------------------------------------------------------------------------------------- training
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Dropout and any other torch randomness: a function of (seed, epoch, batch), so a resumed run replays
        # exactly, whatever else (loader set-up, Lightning's restore) drew from the global generator in between.
        state = np.random.SeedSequence([self.cfg.seed, self.current_epoch, batch_idx, self.global_rank])
        torch.manual_seed(int(state.generate_state(1)[0]))

    def run_model(self, batch: dict[str, torch.Tensor]) -> Any:
        """Preprocess a uint8 batch and call the model the way its input kind needs."""
        spot, region = self.preprocess(batch)
        return call_model(self.model, spot, region, batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.run_model(batch)
        total, parts = self.loss_fn(self.model, out, to_model_units(batch["y"].float(), self.meta))
        bs = batch["y"].shape[0]
        self.log("train_loss", total.detach(), on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        for k, v in parts.items():
            self.log(f"train_{k}", v.detach(), on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        return total

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        pred = to_label_units(self.run_model(batch).pred.float(), self.meta)
        self._val_outputs.append((batch["index"], pred.detach(), batch["y"].float()))

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        idx = torch.cat([o[0] for o in self._val_outputs])
        pred = torch.cat([o[1] for o in self._val_outputs])
        y = torch.cat([o[2] for o in self._val_outputs])
        self._val_outputs.clear()
        if self.trainer.world_size > 1:  # PCC-gene needs every validation spot, not per-rank averages
            idx, pred, y = (self.all_gather(t).flatten(0, 1) for t in (idx, pred, y))
        order = torch.argsort(idx)
        idx, pred, y = idx[order], pred[order], y[order]
        keep = torch.ones_like(idx, dtype=torch.bool)
        keep[1:] = idx[1:] != idx[:-1]  # padded duplicates of the distributed sampler
        pred, y = pred[keep], y[keep]
        self.log("val_mse", torch.mean((pred - y) ** 2), sync_dist=False, rank_zero_only=False)
        r = pcc_gene(pred.double().cpu().numpy(), y.double().cpu().numpy())  # needs every spot: not per batch
        self.log("val_pcc_gene", r, sync_dist=False, rank_zero_only=False)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=self.cfg.lr, betas=tuple(self.cfg.betas), weight_decay=self.cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.cfg.epochs, eta_min=self.cfg.min_lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # ------------------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CKPT_META_KEY] = self.meta.to_dict()
        checkpoint.pop("hyper_parameters", None)


class SectionModule(ExpressionModule):
    """Whole-section models (input kind ``section``): one batch is every spot of one section, with the array
    coordinates the model receives as ``coords`` (`inference.call_model` dispatches on the model's input kind)."""


class EmbeddingModule(ExpressionModule):
    """Models with a frozen encoder (`trains_on_embeddings`): batches hold the encoder's stored embeddings
    (`data.torch_datasets.EmbeddingDataset`), which go straight to the model's `from_features`; the encoder never
    runs during training, and prediction reads the same embeddings (`inference.SectionEmbeddings`)."""

    def run_model(self, batch: dict[str, torch.Tensor]) -> Any:
        return self.model.from_features(batch["features"].float())

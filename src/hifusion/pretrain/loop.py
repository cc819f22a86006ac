"""The pretraining loop: a plain PyTorch loop with an exact resume and a wall-clock budget.

Plain PyTorch rather than Lightning because the loop must stop on a time budget in the middle of an epoch, write
its state every few minutes and at every epoch, and replay after a kill exactly what an uninterrupted run does:
- the tile order of epoch e is a permutation drawn from (seed, e); the state records the epoch and the step in it;
- every step reseeds the global torch generator from (seed, step), so the augmented views of a step do not depend on
  what ran before it in the process (no generator state to save);
- the state file holds the online and target networks, the optimizer, the position, the running epoch's loss and
  the log, written atomically with its SHA-256 (`checkpoint.write_checkpoint`).
With a fixed number of epochs a killed and resumed run gives bit-identical weights on CPU with fixed threads. With
`minutes`, the learning-rate and momentum schedules follow the share of the budget spent, so they depend on the
machine's speed: such runs are reproducible in their recipe, not bit for bit.

Output: `<out>/encoder.safetensors` (the online encoder's trunk, timm key layout; what every model's
`encoder_weights` option loads) with metadata describing what it saw, and `<out>/pretrain_log.csv`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hifusion import __version__
from hifusion import constants as C
from hifusion.checkpoint import read_checkpoint, write_checkpoint
from hifusion.config import PretrainConfig
from hifusion.errors import CheckpointError, InputError
from hifusion.io import atomic_path, atomic_write_text, make_dir
from hifusion.pretrain.tiles import TileSet
from hifusion.pretrain.views import two_views
from hifusion.progress import format_seconds, say

LOG_COLUMNS = ("epoch", "steps", "loss", "lr", "momentum", "tiles_seen", "seconds")


@dataclass
class _Position:
    """Where a run is; saved in the state file and restored on resume."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    elapsed: float = 0.0
    loss_sum: float = 0.0  # the running epoch's summed loss and steps (a resume mid-epoch continues them)
    loss_steps: int = 0
    lr: float = 0.0
    momentum: float = 0.0
    finished: bool = False
    log: list[dict[str, float]] = field(default_factory=list)


def signature(tiles: TileSet, encoder: str, cfg: PretrainConfig, view_px: int) -> dict[str, Any]:
    """Everything that decides the weights; a resume with any of it changed is refused."""
    settings = cfg.model_dump(mode="json", exclude={"encoders", "threads", "device", "checkpoint_minutes", "slides",
                                                    "include_test_images", "max_tiles_per_slide", "min_tissue"})
    return {**settings, "encoder": encoder, "sources": tiles.counts(), "mpp": tiles.mpp, "tile_px": tiles.tile_px,
            "view_px": view_px}


def tile_stats(tiles: TileSet, seed: int, n: int = 512) -> tuple[list[float], list[float]]:
    """Channel mean and std in [0, 1] over (up to `n`, a fixed sample of) the tiles: dataset standardisation."""
    idx = np.sort(np.random.default_rng(seed).permutation(len(tiles))[:n])
    x = tiles.batch(idx).reshape(-1, 3).astype(np.float64) / 255.0
    return x.mean(axis=0).tolist(), np.maximum(x.std(axis=0), 1e-3).tolist()


def lr_at(progress: float, cfg: PretrainConfig) -> float:
    """Linear warm-up over `cfg.warmup` of the run, then a half cosine down to 0."""
    p = min(max(progress, 0.0), 1.0)
    if cfg.warmup > 0 and p < cfg.warmup:
        return cfg.lr * (p + 1e-3) / cfg.warmup
    q = (p - cfg.warmup) / max(1e-12, 1.0 - cfg.warmup)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * q))


class _Run:
    """One encoder's pretraining: model, optimizer, schedule and state I/O."""

    def __init__(self, tiles: TileSet, out: Path, encoder: str, cfg: PretrainConfig, view_px: int) -> None:
        from hifusion.models.encoders import create_encoder
        from hifusion.models.ssl import create_ssl

        self.tiles, self.out, self.encoder_name, self.cfg, self.view_px = tiles, out, encoder, cfg, view_px
        from hifusion.predict.engine import resolve_device

        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)  # the networks' initial weights
        self.model = create_ssl(cfg.method, create_encoder(encoder), hidden_dim=cfg.hidden_dim,
                                proj_dim=cfg.proj_dim, base_momentum=cfg.base_momentum).to(self.device)
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
        self.batch = min(cfg.batch_size, len(tiles))
        self.steps_per_epoch = len(tiles) // self.batch  # incomplete last batches are dropped (BatchNorm heads)
        epochs = cfg.planned_epochs
        self.total_steps = None if epochs is None else epochs * self.steps_per_epoch
        self.budget = None if cfg.minutes is None else cfg.minutes * 60.0
        self.stats = tile_stats(tiles, cfg.seed) if cfg.normalise == "dataset" else None
        self.sig = signature(tiles, encoder, cfg, view_px)
        self.pos = _Position()

    # ------------------------------------------------------------------------------------------------ state I/O
    def save_state(self) -> None:
        state = {"state_dict": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "position": json.dumps(self.pos.__dict__), "signature": json.dumps(self.sig, sort_keys=True)}
        write_checkpoint(state, self.out / C.PRETRAIN_STATE)

    def load_state(self) -> None:
        path = self.out / C.PRETRAIN_STATE
        state = read_checkpoint(path)  # on the CPU; load_state_dict copies onto the model's device
        if json.loads(state["signature"]) != json.loads(json.dumps(self.sig, sort_keys=True)):
            raise CheckpointError("cannot resume: this pretraining was started with other tiles or settings; use "
                                  "the original ones or a new --out", path)
        self.model.load_state_dict(state["state_dict"])
        self.opt.load_state_dict(state["optimizer"])
        self.pos = _Position(**json.loads(state["position"]))

    def progress(self) -> float:
        parts = [0.0]
        if self.total_steps:
            parts.append(self.pos.global_step / self.total_steps)
        if self.budget:
            parts.append(self.pos.elapsed / self.budget)
        return max(parts)

    def out_of_time(self, step_s: float = 0.0) -> bool:
        """True when the budget is spent, or would be overrun by more than half a step by one more step."""
        return self.budget is not None and self.pos.elapsed + 0.5 * step_s >= self.budget

    # -------------------------------------------------------------------------------------------------- training
    def step(self, idx: np.ndarray) -> float:
        self.pos.lr = lr_at(self.progress(), self.cfg)
        for g in self.opt.param_groups:
            g["lr"] = self.pos.lr
        torch.manual_seed(self.cfg.seed * 1_000_003 + self.pos.global_step)
        x = torch.from_numpy(self.tiles.batch(idx)).to(self.device).permute(0, 3, 1, 2)
        v1, v2 = two_views(x, self.cfg.augment, self.view_px, self.tiles.mpp, self.stats)
        loss = self.model.loss(v1, v2)
        if not torch.isfinite(loss):
            raise InputError(f"pretraining loss became {loss.item()} at step {self.pos.global_step}; lower the "
                             "learning rate", self.out)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.pos.global_step += 1
        self.pos.momentum = self.model.after_step(self.progress())
        return float(loss.item())

    def end_epoch(self, progress: bool) -> None:
        p = self.pos
        row = {"epoch": p.epoch + 1, "steps": p.loss_steps, "loss": p.loss_sum / max(1, p.loss_steps), "lr": p.lr,
               "momentum": p.momentum, "tiles_seen": p.global_step * self.batch, "seconds": round(p.elapsed, 2)}
        p.log.append(row)
        p.epoch, p.step_in_epoch, p.loss_sum, p.loss_steps = p.epoch + 1, 0, 0.0, 0
        lines = [",".join(LOG_COLUMNS)] + [",".join(f"{r[c]:.6g}" for c in LOG_COLUMNS) for r in p.log]
        atomic_write_text(self.out / C.PRETRAIN_LOG, "\n".join(lines) + "\n")
        if progress:
            total = self.cfg.planned_epochs or "?"
            say(f"pretrain {self.encoder_name} ({self.cfg.method}): epoch {row['epoch']}/{total}, loss "
                f"{row['loss']:.4f}, lr {row['lr']:.2e}, momentum {row['momentum']:.4f}, {row['steps']} steps, "
                f"{format_seconds(p.elapsed)}")

    def train(self, progress: bool) -> None:
        epochs = self.cfg.planned_epochs
        t_last, t0, elapsed0, step_s = time.perf_counter(), time.perf_counter(), self.pos.elapsed, 0.0
        # the outer test uses the last step's duration too: with only `elapsed >= budget` it would spin forever once
        # the inner loop stops half a step short of the budget (no step taken, state written, again)
        while (epochs is None or self.pos.epoch < epochs) and not self.out_of_time(step_s):
            perm = np.random.default_rng([self.cfg.seed, self.pos.epoch]).permutation(len(self.tiles))
            while self.pos.step_in_epoch < self.steps_per_epoch and not self.out_of_time(step_s):
                i, t_step = self.pos.step_in_epoch, time.perf_counter()
                self.pos.loss_sum += self.step(perm[i * self.batch : (i + 1) * self.batch])
                self.pos.loss_steps += 1
                self.pos.step_in_epoch += 1
                self.pos.elapsed = elapsed0 + time.perf_counter() - t0
                step_s = time.perf_counter() - t_step
                if time.perf_counter() - t_last >= self.cfg.checkpoint_minutes * 60.0:
                    self.save_state()
                    t_last = time.perf_counter()
            if self.pos.loss_steps:  # a whole epoch, or the part of one the time budget allowed
                self.end_epoch(progress)
            self.save_state()
            t_last = time.perf_counter()

    def write_weights(self) -> Path:
        """The online encoder's trunk as safetensors, with what the run saw as metadata (JSON under one key)."""
        from safetensors.torch import save_file

        p = self.pos
        meta = {"method": self.cfg.method, "encoder": self.encoder_name, "sources": self.tiles.sources,
                "tiles_per_source": self.tiles.counts(), "tiles": len(self.tiles), "mpp": self.tiles.mpp,
                "tile_px": self.tiles.tile_px, "view_px": self.view_px, "normalise": self.cfg.normalise or "patch",
                "normalise_stats": self.stats, "epochs": len(p.log),
                "epochs_planned": self.cfg.planned_epochs, "steps": p.global_step, "batch_size": self.batch,
                "minutes": self.cfg.minutes, "seconds": round(p.elapsed, 2), "seed": self.cfg.seed,
                "final_loss": p.log[-1]["loss"] if p.log else None, "package_version": __version__,
                "config": self.cfg.model_dump(mode="json"),
                "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        trunk = self.model.encoder.trunk.state_dict()
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in trunk.items()}
        path = self.out / C.PRETRAIN_WEIGHTS
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={C.PRETRAIN_META_KEY: json.dumps(meta)})
        return path


def read_pretrain_meta(path: str | Path) -> dict[str, Any]:
    """What a pretrained encoder file records about its pretraining (empty for other safetensors files)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(C.PRETRAIN_META_KEY)
    except Exception as exc:  # any read failure: a bad file for the user
        raise CheckpointError(f"cannot read encoder weights ({type(exc).__name__}: {exc})", path) from None
    return json.loads(raw) if raw else {}


def run_pretrain(tiles: TileSet, out: str | Path, encoder: str, cfg: PretrainConfig, *, view_px: int,
                 resume: bool = False, progress: bool = True) -> Path:
    """Pretrain `encoder` on `tiles` into `out`; with `resume`, continue (or reuse) the run already there."""
    out = make_dir(out)
    if len(tiles) < 2:
        raise InputError(f"pretraining needs at least 2 tiles, got {len(tiles)} from "
                         f"{', '.join(tiles.sources) or 'no source'}", out)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        run = _Run(tiles, out, encoder, cfg, view_px)
        if resume and (out / C.PRETRAIN_STATE).is_file():
            run.load_state()
            if run.pos.finished and (out / C.PRETRAIN_WEIGHTS).is_file():
                return out / C.PRETRAIN_WEIGHTS
        if progress:
            say(f"pretrain {encoder} ({cfg.method}): {len(tiles)} tiles of {tiles.tile_px} px at {tiles.mpp:g} um/px "
                f"from {len(tiles.sources)} source(s), views {view_px} px, batch {run.batch}, "
                f"{run.steps_per_epoch} steps/epoch" + (f", budget {cfg.minutes:g} min" if cfg.minutes else ""))
        run.train(progress)
        path = run.write_weights()
        run.pos.finished = True
        run.save_state()
        return path
    finally:
        torch.set_num_threads(threads)

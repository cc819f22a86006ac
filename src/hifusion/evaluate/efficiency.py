"""Model cost table (the paper's efficiency comparison): parameters, GMAC per spot, inference time, peak memory.

Each registered model is built at the input sizes of a profile (paper: 224 px spot / 448 px region and the
papers' model sizes; cpu: 112 px / 224 px and the CPU-profile sizes of configs/) and run on random inputs in
eval mode. FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (matmul/conv/attention kernels; elementwise
ops are not counted, as is usual for GMAC figures); GMAC = FLOPs / 2. Whole-section models see one section of
`section_spots` spots and their cost is divided by the spot count. Peak memory (weights + inference activations) is
CUDA's max allocated bytes, or on CPU the peak of the process RSS (sampled every 2 ms) during inference minus the RSS
before the model was built: approximate.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hifusion.errors import ConfigError
from hifusion.evaluate.report import md_table
from hifusion.io import atomic_write_text

N_GENES = 250
REFERENCE_SPOTS = 256  # retrieval models: training spots stored for the k-NN lookup


@dataclass(frozen=True)
class Profile:
    """Input sizes and per-model options of one column group of the table."""

    name: str
    spot_px: int
    region_factor: float = 2.0
    batch: int = 4  # spots per forward pass for spot models
    section_spots: int = 32  # spots of the synthetic section for whole-section models
    options: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def region_px(self) -> int:
        return int(round(self.spot_px * self.region_factor / 2.0) * 2)


PROFILES: dict[str, Profile] = {
    "paper": Profile("paper", 224, batch=4, options={"hifusion": {"levels": [1, 4, 49], "tokens": 2}}),
    "cpu": Profile(
        "cpu",
        112,
        batch=8,
        options={
            "hifusion": {"levels": [1, 4, 16], "tokens": 2},
            "histogene": {"patch_px": 56, "dim": 128, "depth": 4, "heads": 4},
            "hist2st": {"patch_px": 56, "channels": 32, "dim": 128, "depth": 2, "heads": 4, "gnn_depth": 2},
            "triplex": {"dim": 128, "heads": 4, "neighbour_depth": 1, "global_depth": 1},
            "linear_probe": {"encoder": "resnet18"},
            "bleep": {"encoder": "resnet18"},
        },
    ),
}


class _PeakRSS:
    """Samples the process RSS in a thread: the peak rise over the value at entry (bytes)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.base, self.peak = interval, 0, 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def rss(self) -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * self._page
        except OSError:  # not Linux: lifetime peak only (an upper bound that never decreases)
            import resource

            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * (1 if sys.platform == "darwin" else 1024)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.interval)

    def __enter__(self) -> _PeakRSS:
        self.base = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def rise(self) -> int:
        return max(0, self.peak - self.base)


def _release_memory() -> None:
    """Give freed memory back to the OS between models so each RSS rise starts from a clean baseline."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _prepare(model: torch.nn.Module, kind: str) -> str:
    """Make a model callable for inference without training data; returns the note shown in the table."""
    if kind == "fit":
        model.fit(np.zeros((2, N_GENES), np.float32))  # type: ignore[operator]
        return "closed form (training mean); no image input"
    if kind == "features":
        model.fitted.fill_(True)  # type: ignore[union-attr, operator]
        return "frozen encoder + closed-form ridge (0 trained by SGD)"
    if kind == "retrieval":
        model.set_reference(np.random.default_rng(0).normal(size=(REFERENCE_SPOTS, N_GENES)))  # type: ignore[operator]
        return f"prediction = k-NN over {REFERENCE_SPOTS} stored training spots"
    return ""


def measure(
    name: str, options: dict[str, Any], profile: Profile, *, device: str = "cpu", iters: int = 2
) -> dict[str, Any]:
    """One model at one profile: build, count FLOPs on a first forward, warm up once more, time `iters` passes."""
    from torch.utils.flop_counter import FlopCounterMode

    from hifusion.models import create_model, model_entry

    dev = torch.device(device)
    kind = model_entry(name).input_kind
    _release_memory()
    rss = _PeakRSS()
    base = rss.rss()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    torch.manual_seed(0)
    model = create_model(name, n_genes=N_GENES, **options)
    note = _prepare(model, kind)
    model = model.to(dev).eval()
    section = kind == "section"
    n = profile.section_spots if section else profile.batch
    g = torch.Generator().manual_seed(0)
    spot = torch.randn(n, 3, profile.spot_px, profile.spot_px, generator=g).to(dev)
    region = None
    if getattr(model, "uses_region", True) and kind != "fit":
        region = torch.randn(n, 3, profile.region_px, profile.region_px, generator=g).to(dev)
    args: tuple[Any, ...] = (spot, region)
    if section:
        side = int(np.ceil(np.sqrt(n)))
        coords = torch.tensor([(i % side, i // side) for i in range(n)], dtype=torch.long, device=dev)
        args = (spot, region, coords)
        note = f"whole section of {n} spots; per spot = section / {n}"

    def forward() -> None:
        model(*args)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    # FLOPs with autograd on (eval mode): PyTorch's fused inference kernels for transformer layers and attention
    # are invisible to the counter, and they are only taken when no gradient is needed. Doubles as the warm-up.
    counter = FlopCounterMode(display=False)
    with counter, torch.enable_grad():
        forward()
    flops = counter.get_total_flops()
    _release_memory()  # drop the autograd graph before memory is measured
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with rss, torch.inference_mode():
        forward()  # inference-mode warm-up (kernels chosen, buffers allocated)
        t0 = time.perf_counter()
        for _ in range(iters):
            forward()
        seconds = (time.perf_counter() - t0) / max(1, iters)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else max(0, rss.peak - base)
    params = sum(p.numel() for p in model.parameters())
    trainable = 0 if kind in ("fit", "features") else sum(p.numel() for p in model.parameters() if p.requires_grad)
    has_region = region is not None
    return {
        "model": name,
        "kind": kind,
        "profile": profile.name,
        "spot_px": profile.spot_px,
        "region_px": profile.region_px if has_region else 0,
        "spots_per_forward": n,
        "options": json.dumps(options, sort_keys=True),
        "params_m": params / 1e6,
        "trainable_m": trainable / 1e6,
        "gmac_per_spot": flops / 2 / 1e9 / n,
        "ms_per_spot": 1000.0 * seconds / n,
        "peak_mem_mb": peak / 2**20,
        "device": str(dev),
        "iters": iters,
        "note": note,
    }


def efficiency_table(
    models: Sequence[str] | None = None,
    profiles: Sequence[str | Profile] | None = None,
    *,
    device: str = "cpu",
    iters: int = 2,
    progress: bool = False,
) -> pd.DataFrame:
    """Rows (model x profile) of `measure`, for every registered model unless `models` names some."""
    from hifusion.models import list_models

    names = list(models) if models else list_models()
    profs: list[Profile] = []
    for p in profiles or ["paper", "cpu"]:
        if isinstance(p, Profile):
            profs.append(p)
        elif p in PROFILES:
            profs.append(PROFILES[p])
        else:
            raise ConfigError(f"unknown profile '{p}' (known: {', '.join(PROFILES)})")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    rows = []
    for prof in profs:
        for name in names:
            t0 = time.perf_counter()
            row = measure(name, dict(prof.options.get(name, {})), prof, device=device, iters=iters)
            if progress:
                print(
                    f"[hifusion] efficiency {prof.name:6s} {name:13s} {row['gmac_per_spot']:8.3f} GMAC/spot "
                    f"{row['ms_per_spot']:9.2f} ms/spot ({time.perf_counter() - t0:.1f} s)",
                    file=sys.stderr,
                )
            rows.append(row)
    return pd.DataFrame(rows)


def markdown_table(table: pd.DataFrame) -> str:
    """Profiles side by side: one row per model, column groups per profile."""
    profs = list(dict.fromkeys(table["profile"]))
    header = ["Model", "Kind"]
    for p in profs:
        sizes = table[table["profile"] == p].iloc[0]
        tag = f"{p} ({sizes['spot_px']} px)"
        header += [f"Params (M) {tag}", f"GMAC/spot {tag}", f"ms/spot {tag}", f"Peak MB {tag}"]
    body, notes = [], []
    for name in dict.fromkeys(table["model"]):
        sub = table[table["model"] == name].set_index("profile")
        cells = [name, str(sub["kind"].iloc[0])]
        for p in profs:
            if p not in sub.index:
                cells += ["-"] * 4
                continue
            r = sub.loc[p]
            cells += [
                f"{r['params_m']:.2f}",
                f"{r['gmac_per_spot']:.3f}",
                f"{r['ms_per_spot']:.1f}",
                f"{r['peak_mem_mb']:.0f}",
            ]
        body.append(cells)
        note = "; ".join(dict.fromkeys(n for n in sub["note"] if n))
        if note:
            notes.append(f"- {name}: {note}")
    lines = md_table(header, body)
    r0 = table.iloc[0]
    cpu_mem = "peak process RSS during inference minus RSS before the build (approximate)"
    mem = "CUDA max allocated" if str(r0["device"]).startswith("cuda") else cpu_mem
    foot = [
        "",
        f"Device: {r0['device']} ({torch.get_num_threads()} threads). Inference in eval mode, fp32; spots per "
        "forward pass "
        + ", ".join(f"{p}: {_spots(table, p)}" for p in profs)
        + f"; time = mean of {int(r0['iters'])} forward passes after two warm-ups. GMAC = FLOPs / 2 from "
        f"torch.utils.flop_counter (matmul, conv, attention). Peak MB: {mem}, weights included.",
        "",
        *notes,
    ]
    return "\n".join(lines + foot) + "\n"


def _spots(table: pd.DataFrame, profile: str) -> str:
    sub = table[table["profile"] == profile]
    spot = sub[sub["kind"] != "section"]["spots_per_forward"]
    sec = sub[sub["kind"] == "section"]["spots_per_forward"]
    parts = ([f"{int(spot.iloc[0])}"] if len(spot) else []) + ([f"sections of {int(sec.iloc[0])}"] if len(sec) else [])
    return " / ".join(parts)


def write_efficiency(table: pd.DataFrame, out: str | Path) -> tuple[Path, Path]:
    """Write the Markdown table and its CSV twin (long format: one row per model and profile)."""
    md = Path(out)
    csv = md.with_suffix(".csv")
    if md.parent != Path(""):
        md.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(md, markdown_table(table))
    atomic_write_text(csv, table.to_csv(index=False))
    return md, csv

#!/usr/bin/env python3
"""HiFusion speed and scale: parameters, GMAC per spot, loader / training / inference spots/s, peak memory, roofline.

Usage: python benchmarks/throughput.py [--profiles paper,cpu] [--steps 3] [--quick] [--json out.json]

Profiles: `paper` (224 px spot, 448 px region, levels [1, 4, 49]) and `cpu` (112 / 224 px, levels [1, 4, 16]); both
ResNet-18 spot / ResNet-10 region encoders, 250 genes, random weights (figures measure compute, not accuracy).
Patches come from a real patch cache: HER2ST C2 from ../shared/data/her2st when present, else the sample shipped in
the package, prepared into a temporary folder at each profile's scale.

Every speed is also given as a fraction of a roofline measured in the same run: the larger of the GFLOP/s of a
large fp32 `torch.matmul` and of a ResNet-shaped 3x3 convolution, on the same threads (bf16 on CUDA), times the
model's FLOPs per spot (training counted as 3x the forward pass). The convolution is there because on some CPUs
(AMD EPYC with MKL) sgemm runs at well under half the speed of oneDNN's convolution kernels, so a matmul-only
roofline would put the model above 100 %.

Side by side in the same run, so the effect of each optimisation is a measured change:
- channels_last on vs off (training and inference),
- HISM tiles of a level encoded in one batched call vs a per-tile Python loop (a reference kept only here),
- patches kept uint8 through the loader and normalised on the device vs converted to normalised float on the host,
- training without vs with every stain option (HED, brightness, contrast, saturation jitter, resolution augmentation
  and Reinhard mapping, on the device, inside the timed step; the loader is unchanged by them).
On CUDA the model runs under bf16 autocast (fp16 where bf16 is unsupported) and peak GPU memory is reported.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_HER2ST = REPO.parent / "shared" / "data" / "her2st"
N_GENES = 250
# LAB mean / std of two H&E sections (the order of HER2ST's): the Reinhard mapping's cost does not depend on them
STAIN_SOURCE = [[68.0, 18.0, -9.0], [14.0, 9.0, 7.0]]
STAIN_REFERENCE = [[71.0, 16.0, -7.0], [13.0, 8.0, 6.0]]
PROFILES: dict[str, dict[str, Any]] = {
    "paper": {"spot_px": 224, "levels": [1, 4, 49], "train_batch": 8, "infer_batch": 16},
    "cpu": {"spot_px": 112, "levels": [1, 4, 16], "train_batch": 16, "infer_batch": 32},
}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device) -> Any:
    """bf16 (else fp16) autocast on CUDA, as training uses there; a no-op on CPU."""
    if device.type != "cuda":
        return torch.autocast("cpu", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def matmul_gflops(device: torch.device, n: int, reps: int) -> float:
    """Measured matmul throughput: the roofline every model figure is compared with."""
    dtype = torch.float32 if device.type == "cpu" else (torch.bfloat16 if torch.cuda.is_bf16_supported()
                                                         else torch.float16)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.matmul(a, b)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.matmul(a, b)
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


@torch.no_grad()
def conv_gflops(device: torch.device, reps: int) -> float:
    """Measured 3x3 convolution throughput (ResNet stage-4 shape): a second roofline, since on some CPUs (AMD with
    MKL) the convolution kernels run well above the sgemm that `torch.matmul` calls."""
    conv = torch.nn.Conv2d(512, 512, 3, padding=1, bias=False).to(device, memory_format=torch.channels_last)
    x = torch.randn(32, 512, 14, 14, device=device).contiguous(memory_format=torch.channels_last)
    with autocast(device):
        conv(x)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            conv(x)
        sync(device)
    return 2 * 32 * 512 * 512 * 9 * 14 * 14 * reps / (time.perf_counter() - t0) / 1e9


def build_cache(profile: str, spot_px: int, workdir: Path) -> tuple[Any, str]:
    """Prepare one real section at the profile's scale into a temporary cache; returns (PatchFile, source)."""
    from hifusion.config import PrepareConfig
    from hifusion.data.cache.reader import load_cache
    from hifusion.data.prepare import prepare_sections
    from hifusion.data.sample import her2st_sample

    root = SHARED_HER2ST if (SHARED_HER2ST / "ST-cnts" / "C2.tsv.gz").is_file() else her2st_sample()
    cache = workdir / f"cache_{profile}"
    prepare_sections(PrepareConfig(format="her2st", root=root, sections=["C2"], spot_px=spot_px), cache,
                     progress=False)
    _, patches = load_cache(cache, "C2")
    return patches, f"{root}/C2"


def make_model(levels: list[int], device: torch.device) -> torch.nn.Module:
    from hifusion.models import create_model

    torch.manual_seed(0)
    return create_model("hifusion", n_genes=N_GENES, levels=levels, tokens=2).to(device)


def count_gmac(model: torch.nn.Module, spot_px: int, device: torch.device) -> float:
    """Multiply-accumulates of one forward pass at batch 1 (FlopCounterMode counts 2 FLOPs per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    spot = torch.randn(1, 3, spot_px, spot_px, device=device)
    region = torch.randn(1, 3, 2 * spot_px, 2 * spot_px, device=device)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(spot, region)
    return counter.get_total_flops() / 2 / 1e9


# ----------------------------------------------------------------------------------------------------- data path
def spot_loader(patches: Any, batch: int, workers: int, host_float: bool = False) -> torch.utils.data.DataLoader:
    """The training loader (SpotDataset, D4 augmentation); `host_float` converts and normalises in the loader."""
    from hifusion.data.torch_datasets import SpotDataset

    ds: Any = SpotDataset([patches], [np.arange(len(patches))], [np.zeros((len(patches), 1), np.float32)],
                          spot_px=int(patches.attrs["spot_px"]), region_px=int(patches.attrs["region_px"]),
                          augment=True, seed=0)
    if host_float:
        ds = _HostFloat(ds)
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=64 * batch)  # any section size
    return torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                                       pin_memory=torch.cuda.is_available(), persistent_workers=False)


class _HostFloat(torch.utils.data.Dataset):
    """Reference: float32 normalised patches made in the loader (4x the bytes through the loader and the copy)."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        from hifusion.preprocess import normalise_images

        item = self.ds[i]
        for k in ("spot", "region"):
            item[k] = normalise_images(item[k][None], "patch", None, None)[0]
        return item


def time_loader(loader: torch.utils.data.DataLoader, batches: int, device: torch.device,
                consume: Callable[[dict[str, torch.Tensor]], Any] | None = None) -> float:
    """Spots/s over `batches` batches, each moved to the device (and consumed), after the batches the workers had
    prefetched by then (start-up excluded, steady state measured)."""
    it: Iterator[dict[str, torch.Tensor]] = iter(loader)
    for _ in range(1 + loader.num_workers * (loader.prefetch_factor or 0)):
        next(it)
    n = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        b = {k: v.to(device, non_blocking=True) for k, v in next(it).items()}
        if consume is not None:
            consume(b)
        n += len(b["spot"])
    sync(device)
    return n / (time.perf_counter() - t0)


def preprocess(b: dict[str, torch.Tensor], channels_last: bool,
               stain: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What ExpressionModule.preprocess does: uint8 -> per-patch standardised float on the device; with `stain`
    (the checkpoint's stain metadata), Reinhard mapping and colour augmentation first, as in training."""
    from hifusion.checkpoint_meta import CheckpointMeta
    from hifusion.geometry import PatchGeometry
    from hifusion.preprocess import normalise_images, preprocess_images

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if stain is not None:
        source = torch.as_tensor(STAIN_SOURCE, dtype=torch.float32).expand(len(b["spot"]), 2, 3)
        side = b["spot"].shape[-1]
        meta = CheckpointMeta("-", {}, ["-"], PatchGeometry(1.0, side, b["region"].shape[-1]), {"mode": "patch"},
                              stain=stain)
        spot, region = preprocess_images([b["spot"], b["region"]], meta, source=source, augment=True, fmt=fmt)
        assert spot is not None and region is not None
        return spot, region
    out = []
    for k in ("spot", "region"):
        x = b[k] if b[k].is_floating_point() else normalise_images(b[k], "patch", None, None)
        out.append(x.contiguous(memory_format=fmt))
    return out[0], out[1]


def stain_options() -> dict[str, Any]:
    """Every stain option on (the README's example): HED + brightness/contrast/saturation jitter, resolution
    augmentation and Reinhard."""
    from hifusion.stain import stain_meta

    augment = {"hed": 0.05, "brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "resolution": 1.5}
    return stain_meta(augment, "reinhard", np.asarray(STAIN_REFERENCE))


# -------------------------------------------------------------------------------------------- HISM loop reference
def looped_level_map(self: Any, spot: torch.Tensor, level: int) -> torch.Tensor:
    """Reference HISM: one encoder call per tile in a Python loop, maps concatenated back into the grid."""
    n = math.isqrt(level)
    if n == 1:
        return self.spot_proj(self.spot_encoder(spot))
    sh, sw = spot.shape[-2] // n, spot.shape[-1] // n
    rows = []
    for i in range(n):
        cols = [self.spot_proj(self.spot_encoder(spot[:, :, i * sh:(i + 1) * sh, j * sw:(j + 1) * sw]))
                for j in range(n)]
        rows.append(torch.cat(cols, dim=3))
    return torch.cat(rows, dim=2)


# ---------------------------------------------------------------------------------------------- model timings
class Variant:
    """One setting of a side-by-side comparison: its own model copy (same weights), optimiser and step times."""

    def __init__(self, model: torch.nn.Module, channels_last: bool, looped: bool = False,
                 stain: dict[str, Any] | None = None) -> None:
        self.model = copy.deepcopy(model)
        self.model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        if looped:
            self.model.level_map = types.MethodType(looped_level_map, self.model)  # type: ignore[method-assign]
        self.channels_last = channels_last
        self.stain = stain
        self.opt: torch.optim.Optimizer | None = None
        self.times: list[float] = []
        self.first: torch.Tensor | None = None

    def train_step(self, b: dict[str, torch.Tensor], device: torch.device) -> None:
        from hifusion.models.losses import get_loss

        if self.opt is None:
            self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.model.train()
        sync(device)
        t0 = time.perf_counter()
        spot, region = preprocess(b, self.channels_last, self.stain)
        with autocast(device):
            out = self.model(spot, region)
        loss, _ = get_loss("hifusion")(self.model, out, torch.zeros(len(spot), N_GENES, device=device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        sync(device)
        self.times.append(time.perf_counter() - t0)

    @torch.no_grad()
    def infer_step(self, b: dict[str, torch.Tensor], device: torch.device) -> None:
        self.model.eval()
        sync(device)
        t0 = time.perf_counter()
        spot, region = preprocess(b, self.channels_last)
        with autocast(device):
            pred = self.model(spot, region).pred
        sync(device)
        self.times.append(time.perf_counter() - t0)
        if self.first is None:
            self.first = pred.float().cpu()

    def spots_s(self, batch: int) -> float:
        """Best step after the warm-up one: the least disturbed by other processes on a shared machine."""
        return batch / min(self.times[1:])


def interleaved(variants: dict[str, Variant], batches: list[dict[str, torch.Tensor]], steps: int, train: bool,
                device: torch.device) -> dict[str, float]:
    """Run the variants step by step in turn (warm-up step + `steps`), so load from elsewhere hits all alike."""
    for step in range(steps + 1):
        for v in variants.values():
            b = batches[step % len(batches)]
            (v.train_step if train else v.infer_step)(b, device)
    return {k: v.spots_s(len(batches[0]["spot"])) for k, v in variants.items()}


def take_batches(patches: Any, batch: int, count: int, device: torch.device) -> list[dict[str, torch.Tensor]]:
    it = iter(spot_loader(patches, batch, 0))
    return [{k: v.to(device) for k, v in next(it).items()} for _ in range(count)]


# --------------------------------------------------------------------------------------------------- a profile
def run_profile(name: str, args: argparse.Namespace, device: torch.device, peak_gflops: float,
                workdir: Path) -> dict[str, Any]:
    p = PROFILES[name]
    spot_px = p["spot_px"]
    t_start = time.perf_counter()
    res: dict[str, Any] = {"profile": name, "spot_px": spot_px, "region_px": 2 * spot_px, "levels": p["levels"]}
    model = make_model(p["levels"], device)
    res["params_m"] = sum(q.numel() for q in model.parameters()) / 1e6
    gmac = count_gmac(model, spot_px, device)
    res["gmac_per_spot"] = gmac
    fwd_gflop = 2 * gmac

    t0 = time.perf_counter()
    patches, source = build_cache(name, spot_px, workdir)
    res["cache"] = {"source": source, "spots": len(patches), "prepare_s": time.perf_counter() - t0}

    lb = 16
    loader_batches = 4 if args.quick else 10
    loader: dict[str, Any] = {}
    for workers in (0, 1):
        sps = time_loader(spot_loader(patches, lb, workers), loader_batches, device)
        loader[f"workers{workers}_spots_s"] = sps
        loader[f"workers{workers}_ms_per_spot_per_worker"] = 1000.0 * max(1, workers) / sps
    # uint8 through the loader + normalise on the device (the code's path) vs float32 normalised on the host
    loader["uint8_device_norm_spots_s"] = time_loader(spot_loader(patches, lb, 1), loader_batches, device,
                                                      consume=lambda b: preprocess(b, True))
    loader["host_float_spots_s"] = time_loader(spot_loader(patches, lb, 1, host_float=True), loader_batches, device,
                                               consume=lambda b: preprocess(b, True))
    res["loader"] = loader

    tb, ib = p["train_batch"], p["infer_batch"]
    steps = args.steps
    train_batches = take_batches(patches, tb, min(steps + 1, 4), device)
    infer_batches = take_batches(patches, ib, min(steps + 1, 4), device)
    res["train_batch"], res["infer_batch"], res["steps"] = tb, ib, steps
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    train = interleaved({"channels_last_on": Variant(model, True), "channels_last_off": Variant(model, False),
                         "stain_options": Variant(model, True, stain=stain_options())},
                        train_batches, steps, True, device)
    iv = {"channels_last_on": Variant(model, True), "channels_last_off": Variant(model, False),
          "hism_tile_loop": Variant(model, True, looped=True)}
    infer = interleaved(iv, infer_batches, steps, False, device)
    assert iv["hism_tile_loop"].first is not None and iv["channels_last_on"].first is not None
    res["hism_loop_max_abs_diff"] = float((iv["hism_tile_loop"].first - iv["channels_last_on"].first).abs().max())
    res["train_spots_s"], res["infer_spots_s"] = train, infer
    del iv

    best_train = max(v for k, v in train.items() if k != "stain_options")
    best_infer = max(v for k, v in infer.items() if k != "hism_tile_loop")
    res["train_roofline_fraction"] = 3 * fwd_gflop * best_train / peak_gflops
    res["infer_roofline_fraction"] = fwd_gflop * best_infer / peak_gflops
    res["train_s_per_spot"] = 1.0 / best_train
    res["peak_rss_mb"] = peak_rss_mb()
    if device.type == "cuda":
        res["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    res["seconds"] = time.perf_counter() - t_start
    patches.close()
    return res


def table(results: list[dict[str, Any]], env: dict[str, Any]) -> str:
    """A plain-text table of the headline figures and the side-by-side optimisation effects."""
    lines = [f"device {env['device']}, {env['threads']} threads, torch {env['torch']}; roofline "
             f"{env['roofline_gflops']:.0f} GFLOP/s = max(matmul {env['matmul_gflops']:.0f}, 3x3 conv "
             f"{env['conv3x3_gflops']:.0f}) ({env['matmul_dtype']}); RL = achieved model FLOP/s / roofline "
             f"(RL vs matmul alone: x{env['roofline_gflops'] / env['matmul_gflops']:.2f}); load average "
             f"{env['load_average_1min_at_start']:.1f} -> {env['load_average_1min_at_end']:.1f} on "
             f"{os.cpu_count()} CPUs",
             "speeds: best step after a warm-up one (train/infer), steady state after prefetch (loader)"]
    head = f"{'profile':<8}{'params M':>9}{'GMAC/spot':>10}{'load w0':>9}{'load w1':>9}{'ms/spot/w':>10}" \
           f"{'train/s':>9}{'train RL':>9}{'infer/s':>9}{'infer RL':>9}{'RSS MB':>8}"
    lines += [head, "-" * len(head)]
    for r in results:
        lo = r["loader"]
        lines.append(
            f"{r['profile']:<8}{r['params_m']:>9.2f}{r['gmac_per_spot']:>10.2f}{lo['workers0_spots_s']:>9.1f}"
            f"{lo['workers1_spots_s']:>9.1f}{lo['workers0_ms_per_spot_per_worker']:>10.2f}"
            f"{max(v for k, v in r['train_spots_s'].items() if k != 'stain_options'):>9.2f}"
            f"{r['train_roofline_fraction']:>9.1%}"
            f"{max(v for k, v in r['infer_spots_s'].items() if k != 'hism_tile_loop'):>9.2f}"
            f"{r['infer_roofline_fraction']:>9.1%}{r['peak_rss_mb']:>8.0f}"
            + (f"  GPU {r['peak_gpu_mb']:.0f} MB" if "peak_gpu_mb" in r else ""))
    lines += ["", "side by side (spots/s; change = second vs first)"]
    for r in results:
        tr, inf, lo = r["train_spots_s"], r["infer_spots_s"], r["loader"]
        pairs = [
            ("train channels_last off -> on", tr["channels_last_off"], tr["channels_last_on"]),
            ("train stain options off -> on", tr["channels_last_on"], tr["stain_options"]),
            ("infer channels_last off -> on", inf["channels_last_off"], inf["channels_last_on"]),
            ("infer HISM tile loop -> batched", inf["hism_tile_loop"], inf["channels_last_on"]),
            ("loader+norm host float -> uint8/device", lo["host_float_spots_s"], lo["uint8_device_norm_spots_s"]),
        ]
        for label, a, b in pairs:
            lines.append(f"  {r['profile']:<6} {label:<40}{a:>9.2f} -> {b:>8.2f}  ({b / a - 1:+.0%})")
        lines.append(f"  {r['profile']:<6} {'HISM loop vs batched max |diff|':<40}{r['hism_loop_max_abs_diff']:>9.2e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="paper,cpu", help="comma-separated: paper, cpu")
    ap.add_argument("--steps", type=int, default=3, help="timed training / inference steps per setting (after 1 "
                                                          "warm-up step)")
    ap.add_argument("--quick", action="store_true", help="1 step, fewer loader batches, smaller matmul")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps = 1
    from hifusion.preprocess import normalise_images  # noqa: F401  (imports Lightning: keep it out of timings)

    names = [s.strip() for s in args.profiles.split(",") if s.strip()]
    unknown = [s for s in names if s not in PROFILES]
    if unknown:
        ap.error(f"unknown profile(s) {unknown}; known: {sorted(PROFILES)}")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    n = 1024 if args.quick else 2048
    mm = matmul_gflops(device, n, reps=3 if device.type == "cpu" else 50)
    conv = conv_gflops(device, reps=3 if device.type == "cpu" else 50)
    gflops = max(mm, conv)
    env = {"device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
           "threads": torch.get_num_threads(), "matmul_gflops": mm, "matmul_n": n, "conv3x3_gflops": conv,
           "roofline_gflops": gflops,
           "matmul_dtype": "fp32" if device.type == "cpu" else "bf16/fp16", "torch": torch.__version__,
           "load_average_1min_at_start": os.getloadavg()[0],
           "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}
    results = []
    with tempfile.TemporaryDirectory(prefix="hifusion-throughput-") as tmp:
        for name in names:
            results.append(run_profile(name, args, device, gflops, Path(tmp)))
            print(f"[throughput] {name} done in {results[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)
    env["load_average_1min_at_end"] = os.getloadavg()[0]
    out = {"env": env, "profiles": results}
    text = json.dumps(out, indent=2)
    print(text)
    print()
    print(table(results, env))
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

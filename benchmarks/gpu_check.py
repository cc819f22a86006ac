#!/usr/bin/env python3
"""Python steps of `benchmarks/gpu_check.sh`: model throughput, a CLI run with its peak memory, and the final table.

Usage (the shell script calls these; each writes one JSON file):
  python benchmarks/gpu_check.py throughput --device cuda --profile paper --steps 5 --json T.json
  python benchmarks/gpu_check.py cli --label train --json R.json -- train CONFIG --set ... --out DIR
  python benchmarks/gpu_check.py table --work DIR --device cuda

Why a separate helper: peak GPU memory (`torch.cuda.max_memory_allocated`) is only visible inside the process that
allocated it, so the CLI commands are run in-process here rather than as subprocesses. The roofline fraction is the
achieved model FLOP/s (forward FLOPs per spot from `torch.utils.flop_counter`, training counted as 3x) over the GPU's
dense bf16 peak from a table of known GPUs (override with `GPU_PEAK_TFLOPS`); on CPU it is n/a.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets.
BF16_PEAK_TFLOPS: dict[str, float] = {
    "H200": 989.0, "H100": 989.0, "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "A800": 312.0, "A30": 165.0,
    "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10": 125.0, "A40": 150.0, "RTX 6000 Ada": 364.0,
    "RTX 4090": 165.0, "RTX 3090": 71.0,
}
# the model configurations the script uses: `paper` is the paper profile, `tiny` the CI-sized one
PROFILES: dict[str, dict[str, Any]] = {
    "paper": {"spot_px": 224, "options": {"levels": [1, 4, 49], "tokens": 2}, "train_batch": 32, "infer_batch": 64},
    "tiny": {"spot_px": 32, "options": {"levels": [1, 4], "tokens": 2, "spot_encoder": "resnet10", "embed_dim": 64,
                                        "heads": 4}, "train_batch": 8, "infer_batch": 8},
}


def model_options(profile: str) -> str:
    """The profile's HiFusion options as a YAML flow mapping, for `--set model.options=...` in the shell script."""
    return json.dumps(PROFILES[profile]["options"])


def peak_tflops(device_name: str) -> float | None:
    """The GPU's dense bf16 peak: GPU_PEAK_TFLOPS if set, else the longest matching name in the table."""
    env = os.environ.get("GPU_PEAK_TFLOPS")
    if env:
        return float(env)
    hits = [k for k in BF16_PEAK_TFLOPS if k.lower() in device_name.lower()]
    return BF16_PEAK_TFLOPS[max(hits, key=len)] if hits else None


def _device(name: str) -> Any:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda but torch sees no CUDA device (use --device cpu)")
    return torch.device(name)


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Training and inference spots/s of HiFusion at a profile's size, channels_last on and off, bf16 on CUDA."""
    import torch

    sys.path.insert(0, str(HERE))
    import throughput as tp  # benchmarks/throughput.py: the same model, step and autocast code

    device = _device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    from hifusion.models import create_model

    p = PROFILES[args.profile]
    torch.manual_seed(0)
    model = create_model("hifusion", n_genes=tp.N_GENES, **p["options"]).to(device)
    gmac = tp.count_gmac(model, p["spot_px"], device)
    rows: list[dict[str, Any]] = []
    for mode, batch in (("train", p["train_batch"]), ("infer", p["infer_batch"])):
        gen = torch.Generator().manual_seed(0)
        b = {"spot": torch.randint(0, 256, (batch, 3, p["spot_px"], p["spot_px"]), dtype=torch.uint8, generator=gen),
             "region": torch.randint(0, 256, (batch, 3, 2 * p["spot_px"], 2 * p["spot_px"]), dtype=torch.uint8,
                                     generator=gen)}
        b = {k: v.to(device) for k, v in b.items()}
        for cl in (True, False):
            v = tp.Variant(model, cl)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            for _ in range(args.steps + 1):
                (v.train_step if mode == "train" else v.infer_step)(b, device)
            sps = v.spots_s(batch)
            rows.append({"step": f"throughput {mode} channels_last {'on' if cl else 'off'}", "spots_s": sps,
                         "flops_per_spot": (3 if mode == "train" else 1) * 2 * gmac * 1e9, "batch": batch,
                         "peak_gpu_mb": (torch.cuda.max_memory_allocated(device) / 2**20
                                         if device.type == "cuda" else None)})
            del v
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device.type == "cuda" else "fp32"
    return {"device_name": name, "precision": precision, "profile": args.profile, "gmac_per_spot": gmac, "rows": rows}


def cli(args: argparse.Namespace) -> dict[str, Any]:
    """Run one `hifusion` command in this process; record exit code, wall time, peak RSS and peak GPU memory."""
    import torch

    from hifusion.cli import main

    sys.argv = ["hifusion", *args.rest]
    t0 = time.perf_counter()
    rc = 0
    try:
        main()
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    wall = time.perf_counter() - t0
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() and torch.cuda.is_initialized() \
        else None
    return {"label": args.label, "rc": rc, "wall_s": wall, "peak_gpu_mb": gpu,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _train_rate(run_dir: Path) -> tuple[float | None, int]:
    """(training spots/s, training spots) of the HiFusion fit in a `hifusion train` results folder."""
    import h5py
    import pandas as pd

    meta = json.loads((run_dir / "run.json").read_text())
    split = meta["splits"][0]
    cache = Path(meta["config"]["data"]["cache"])
    n = 0
    for s in split["train"]:
        with h5py.File(cache / f"{s}.patches.h5", "r") as f:
            n += int(f["img"].shape[0])
    curve = pd.read_csv(run_dir / "runs" / split["name"] / "hifusion" / "metrics.csv")
    seconds = float(curve["seconds"].sum())
    return (n * len(curve) / seconds if seconds > 0 else None), n


def _predicted_spots(pred_dir: Path) -> int | None:
    import h5py

    path = pred_dir / "predictions.h5ad"
    if not path.is_file():
        return None
    with h5py.File(path, "r") as f:
        obs = f["obs"]
        return int(obs[obs.attrs.get("_index", "_index")].shape[0])


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def table(args: argparse.Namespace) -> str:
    """One Markdown table over every step the script ran (missing or failed steps are shown as such)."""
    work = Path(args.work)
    tp_path = work / "throughput.json"
    tpj = json.loads(tp_path.read_text()) if tp_path.is_file() else None
    peak = peak_tflops(tpj["device_name"]) if tpj and args.device == "cuda" else None
    gmac = tpj["gmac_per_spot"] if tpj else None

    def rl(spots_s: float | None, flops_per_spot: float | None) -> str:
        if peak is None or spots_s is None or flops_per_spot is None:
            return "n/a"
        return f"{spots_s * flops_per_spot / (peak * 1e12):.2%}"

    rows = []
    if tpj is None:
        rows.append(("throughput", "n/a", "n/a", "n/a", "n/a", "missing"))
    else:
        for r in tpj["rows"]:
            rows.append((f"{r['step']} ({tpj['profile']}, {tpj['precision']}, batch {r['batch']})",
                         _fmt(r["spots_s"], ".1f"), _fmt(r["peak_gpu_mb"], ".0f"),
                         rl(r["spots_s"], r["flops_per_spot"]), "n/a", "ok"))
    for label, what in (("train", f"train {args.epochs} epoch(s)"), ("predict", "predict one slide"),
                        ("ddp", "fit, strategy ddp, 1 device")):
        rj = work / f"{label}.json"
        if not rj.is_file():
            rows.append((what, "n/a", "n/a", "n/a", "n/a", "missing"))
            continue
        r = json.loads(rj.read_text())
        sps: float | None = None
        flops: float | None = None
        try:
            if label == "predict":
                n = _predicted_spots(work / "predict")
                sps = n / r["wall_s"] if n else None
                what += f" ({n} spots, end to end)"
                flops = 2 * gmac * 1e9 if gmac else None
            else:
                sps, n = _train_rate(work / label)
                what += f" ({n} training spots)"
                flops = 3 * 2 * gmac * 1e9 if gmac else None
        except (OSError, KeyError, ValueError) as exc:
            what += f" (no figures: {exc.__class__.__name__})"
        rows.append((what, _fmt(sps, ".1f"), _fmt(r["peak_gpu_mb"], ".0f"), rl(sps, flops), f"{r['wall_s']:.1f}",
                     "ok" if r["rc"] == 0 else f"exit {r['rc']}"))
    name = tpj["device_name"] if tpj else args.device
    head = [f"gpu_check on {name} (--device {args.device}); bf16 peak "
            f"{_fmt(peak, '.0f')} TFLOP/s; HiFusion {_fmt(gmac, '.3f')} GMAC/spot forward", "",
            "| step | spots/s | peak GPU MB | bf16 roofline | wall s | status |", "|---|---|---|---|---|---|"]
    return "\n".join(head + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--device", default="cuda")
    t.add_argument("--profile", default="paper", choices=sorted(PROFILES))
    t.add_argument("--steps", type=int, default=5)
    t.add_argument("--json", type=Path, required=True)
    c = sub.add_parser("cli")
    c.add_argument("--label", required=True)
    c.add_argument("--json", type=Path, required=True)
    c.add_argument("rest", nargs=argparse.REMAINDER)
    o = sub.add_parser("options")
    o.add_argument("profile", choices=sorted(PROFILES))
    s = sub.add_parser("table")
    s.add_argument("--work", type=Path, required=True)
    s.add_argument("--device", default="cuda")
    s.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args(argv)
    if args.cmd == "options":
        print(model_options(args.profile))
        return 0
    if args.cmd == "table":
        print(table(args))
        return 0
    if args.cmd == "cli":
        args.rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
        res = cli(args)
    else:
        res = throughput(args)
    args.json.write_text(json.dumps(res, indent=2) + "\n")
    return int(res.get("rc", 0))


if __name__ == "__main__":
    sys.exit(main())

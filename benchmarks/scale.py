#!/usr/bin/env python3
"""How time, memory, open files and disk grow with the number of sections: `prepare` and a 2D `benchmark` at N.

Usage: python benchmarks/scale.py [--sizes 10,100,1000] [--spots 196] [--genes 2000] [--work DIR] [--k 2]
                                  [--plot docs/images/scale.png] [--json scale.json] [--stages prepare,benchmark]
                                  [--max-steps 50]

Per N it generates (once; reused while `cohort.json` matches) a synthetic HEST-style cohort: `<S>.h5ad` (sparse
negative-binomial counts, `obsm['spatial']` in full-resolution pixels, `obs['patient']`, two sections per patient),
`<S>.png` beside it (an H&E-like texture whose darkness follows the same latent field as the counts) and
`metadata/<S>.json` with `pixel_size_um_estimated` (1 um/px). Spots sit on a square grid 32 px apart and patches are
cut at 32 px / 32 um (no resampling), region 64 px. Then it runs, each as a fresh process:

  hifusion prepare --format h5ad --root COHORT --out CACHE --spot-um 32 --spot-px 32 --workers 2
  hifusion benchmark CONFIG   (protocol 2d, k folds over patients, a small HiFusion for 1 epoch of at most
                              --max-steps batches, and the mean profile; every test spot is predicted and scored)

and prints wall time, peak RSS (the largest single process, from getrusage of a fresh parent, and the sum over the
process tree sampled every 0.2 s), the most open file descriptors of the tree (sampled), and output sizes, against N.
A figure is measured, never asserted: the issue's targets (peak RSS at N=1000 within 2x of N=10 for prepare and 4x
for the benchmark, time no worse than linear) are checked by reading the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PITCH_PX = 32  # spot centres 32 px apart; patches 32 px at 1 um/px
MARGIN_PX = 64
MPP = 1.0
GEN_VERSION = 1
TINY_HIFUSION = {"levels": [1], "tokens": 1, "spot_encoder": "resnet10", "region_encoder": "resnet10",
                 "embed_dim": 32, "heads": 4}


# ------------------------------------------------------------------------------------------------- the cohort
def _smooth_field(rng: np.random.Generator, g: int) -> np.ndarray:
    """A smooth (g, g) latent field in [0, 1]: coarse noise upsampled, so neighbouring spots look alike."""
    c = max(2, g // 4)
    coarse = rng.random((c, c))
    idx = np.minimum((np.arange(g) * c) // g, c - 1)
    f = coarse[np.ix_(idx, idx)]
    return (f - f.min()) / max(float(np.ptp(f)), 1e-6)


def write_section(folder: Path, name: str, patient: str, g: int, n_genes: int, rng: np.random.Generator,
                  gene_mu: np.ndarray, loading: np.ndarray) -> None:
    """One section: counts h5ad, PNG image and HEST metadata JSON (vectorised; ~20 ms)."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp
    from PIL import Image

    z = _smooth_field(rng, g).ravel()  # per-spot latent state: tumour-like (1) vs stroma-like (0)
    n = g * g
    depth = rng.lognormal(0.0, 0.3, size=n)
    mu = depth[:, None] * gene_mu[None, :] * np.exp(loading[None, :] * (z[:, None] - 0.5))
    r = 2.0  # NB dispersion
    counts = rng.negative_binomial(r, r / (r + mu)).astype(np.int32)
    x = sp.csr_matrix(counts)
    ix, iy = np.meshgrid(np.arange(g), np.arange(g))
    centres = np.stack([ix.ravel(), iy.ravel()], 1) * PITCH_PX + MARGIN_PX + PITCH_PX // 2
    obs = pd.DataFrame({"patient": patient, "array_col": ix.ravel(), "array_row": iy.ravel()},
                       index=[f"{name}_{i}" for i in range(n)])
    a = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"G{j:04d}" for j in range(n_genes)]))
    a.obsm["spatial"] = centres.astype(np.float64)
    a.write_h5ad(folder / f"{name}.h5ad")
    side = g * PITCH_PX + 2 * MARGIN_PX
    zi = np.kron(z.reshape(g, g), np.ones((PITCH_PX, PITCH_PX)))
    zi = np.pad(zi, MARGIN_PX, mode="edge")
    base = np.array([225.0, 150.0, 200.0])  # eosin pink; darker, bluer (haematoxylin) where z is high
    dark = np.array([-90.0, -80.0, -40.0])
    img = base[None, None, :] + zi[..., None] * dark[None, None, :] + rng.normal(0, 12, (side, side, 3))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{name}.png", compress_level=1)
    (folder / "metadata" / f"{name}.json").write_text(json.dumps({"pixel_size_um_estimated": MPP}))


def make_cohort(folder: Path, n: int, spots: int, n_genes: int, seed: int = 0) -> float:
    """Write an N-section cohort unless one with the same parameters is there; returns seconds spent."""
    manifest = {"version": GEN_VERSION, "n": n, "spots": spots, "genes": n_genes, "seed": seed}
    mpath = folder / "cohort.json"
    if mpath.is_file() and json.loads(mpath.read_text()) == manifest:
        return 0.0
    t0 = time.perf_counter()
    (folder / "metadata").mkdir(parents=True, exist_ok=True)
    g = int(round(np.sqrt(spots)))
    rng = np.random.default_rng(seed)
    gene_mu = rng.lognormal(-1.5, 1.2, size=n_genes)  # mostly low counts: a sparse matrix, as in real ST
    loading = rng.normal(0.0, 1.0, size=n_genes)
    for i in range(n):
        write_section(folder, f"S{i:04d}", f"P{i // 2:04d}", g, n_genes, np.random.default_rng([seed, i]),
                      gene_mu, loading)
    mpath.write_text(json.dumps(manifest))
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- measuring a run
def _tree(root: int) -> list[int]:
    """The pid and all its descendants (from /proc/<pid>/stat parent ids)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as fh:
                    parent[int(d)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [root], [root]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def measure(cmd: list[str], log: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run `cmd` under a fresh Python parent (so getrusage(RUSAGE_CHILDREN) covers this run only) and sample it."""
    wrapper = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)")
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", wrapper, *cmd], stdout=fh, stderr=subprocess.PIPE, env=env,
                                text=True)
        peak = {"tree_rss_kb": 0, "fds": 0, "procs": 0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                pids = _tree(proc.pid)[1:]  # the wrapper itself is not part of the measured command
                peak["tree_rss_kb"] = max(peak["tree_rss_kb"], sum(_rss_kb(p) for p in pids))
                peak["fds"] = max(peak["fds"], sum(_fds(p) for p in pids))
                peak["procs"] = max(peak["procs"], len(pids))
                stop.wait(0.2)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _, err = proc.communicate()
        stop.set()
        th.join()
    wall = time.perf_counter() - t0
    lines = err.strip().splitlines()
    with open(log, "a") as fh:
        fh.write(err)
    maxrss_kb = int(lines[-1]) if lines and lines[-1].isdigit() else 0
    return {"rc": proc.returncode, "wall_s": wall, "peak_rss_mb": maxrss_kb / 1024,
            "tree_rss_mb": peak["tree_rss_kb"] / 1024, "max_fds": peak["fds"], "max_procs": peak["procs"]}


def du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.exists() else 0.0


LOADER_SCRIPT = """
import sys, time
import numpy as np, torch
from pathlib import Path
from hifusion.data.torch_datasets import SpotDataset
from hifusion.data.cache.layout import cache_sections
from hifusion.data.cache.reader import PatchFile
cache, spots, workers = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
names = cache_sections(cache)
files = [PatchFile(cache / f"{s}.patches.h5") for s in names]
rows = [np.arange(len(f)) for f in files]
ds = SpotDataset(files, rows, None, spot_px=files[0].spot_px, region_px=files[0].region_px, augment=True)
sampler = torch.utils.data.RandomSampler(ds, replacement=False, num_samples=min(spots, len(ds)))
loader = torch.utils.data.DataLoader(ds, batch_size=32, sampler=sampler, num_workers=workers)
t0 = time.perf_counter()
n = sum(len(b["spot"]) for b in loader)
print(f"{n} spots from {len(files)} patch files in {time.perf_counter() - t0:.1f} s")
"""


def bench_config(path: Path, cache: Path, k: int, genes: int, batch: int, models: list[str],
                 max_steps: int | None = None) -> None:
    import yaml

    cfg = {
        "name": "scale", "output": str(path.parent),
        "data": {"cache": str(cache), "genes": {"method": "top_mean", "n": genes}, "label": "logprop",
                 "normalise": "patch"},
        "protocol": {"name": "2d", "k": k},
        "models": [{"name": m, **({"options": TINY_HIFUSION} if m == "hifusion" else {})} for m in models],
        "train": {"epochs": 1, "batch_size": batch, "threads": 1, "augment": True, "seed": 0, "accelerator": "cpu",
                  "max_steps_per_epoch": max_steps},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


# ---------------------------------------------------------------------------------------------------- reporting
def table(rows: list[dict[str, Any]]) -> str:
    head = ("| N | spots | prepare s | prepare peak RSS MB (largest proc / tree) | prepare max fds | cache MB | "
            "loader s | loader RSS MB (tree) | loader max fds | "
            "benchmark s | benchmark peak RSS MB (largest proc / tree) | benchmark max fds | results MB |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        p, b, lo = r.get("prepare", {}), r.get("benchmark", {}), r.get("loader", {})

        def cell(d: dict[str, Any], key: str, spec: str) -> str:
            return format(d[key], spec) if key in d else "-"

        out.append(
            f"| {r['n']} | {r['spots_total']} | {cell(p, 'wall_s', '.0f')} | {cell(p, 'peak_rss_mb', '.0f')} / "
            f"{cell(p, 'tree_rss_mb', '.0f')} | {cell(p, 'max_fds', 'd')} | {cell(p, 'out_mb', '.0f')} | "
            f"{cell(lo, 'wall_s', '.0f')} | {cell(lo, 'tree_rss_mb', '.0f')} | {cell(lo, 'max_fds', 'd')} | "
            f"{cell(b, 'wall_s', '.0f')} | {cell(b, 'peak_rss_mb', '.0f')} / {cell(b, 'tree_rss_mb', '.0f')} | "
            f"{cell(b, 'max_fds', 'd')} | {cell(b, 'out_mb', '.0f')} |")
    return "\n".join(out)


def plot(rows: list[dict[str, Any]], path: Path, before: list[dict[str, Any]] | None = None) -> None:
    """Time, peak RSS and open descriptors against N (log x), with a linear-time guide and, if given, an earlier
    measurement (`--before`) drawn in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def points(rs: list[dict[str, Any]], stage: str) -> tuple[np.ndarray, list[dict[str, Any]]]:
        pts = [(r["n"], r[stage]) for r in rs if stage in r and r[stage].get("rc") == 0]
        return np.array([n for n, _ in pts], float), [d for _, d in pts]

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for stage, colour in (("prepare", "tab:blue"), ("benchmark", "tab:orange")):
        ns, ds = points(rows, stage)
        if not len(ns):
            continue
        axes[0].plot(ns, [d["wall_s"] for d in ds], "o-", color=colour, label=stage)
        axes[0].plot(ns, ds[0]["wall_s"] * ns / ns[0], ":", color=colour, alpha=0.5,
                     label=f"{stage}: linear from N={int(ns[0])}")
        axes[1].plot(ns, [d["peak_rss_mb"] for d in ds], "o-", color=colour, label=f"{stage} (largest process)")
        axes[1].plot(ns, [d["tree_rss_mb"] for d in ds], "s--", color=colour, alpha=0.6,
                     label=f"{stage} (process tree)")
        bn, bd = points(before or [], stage)
        if stage == "benchmark" and len(bn):
            axes[0].plot(bn, [d["wall_s"] for d in bd], "x--", color="grey", label="benchmark before")
            axes[1].plot(bn, [d["peak_rss_mb"] for d in bd], "x--", color="grey", label="benchmark before")
    for rs, style, colour, label in ((rows, "o-", "tab:green", "loader"), (before or [], "x--", "grey", "before")):
        ns, ds = points(rs, "loader")
        if len(ns):
            axes[2].plot(ns, [d["max_fds"] for d in ds], style, color=colour, label=f"{label}: descriptors")
    axes[0].set(xscale="log", yscale="log", xlabel="sections N", ylabel="wall time (s)", title="time")
    axes[1].set(xscale="log", xlabel="sections N", ylabel="peak RSS (MB)", title="memory")
    axes[1].set_ylim(bottom=0)
    axes[2].set(xscale="log", xlabel="sections N", ylabel="open file descriptors (tree)",
                title="data loading: 4 workers, 4,000 spots")
    axes[2].set_ylim(bottom=0)
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000", help="comma-separated section counts N")
    ap.add_argument("--spots", type=int, default=196, help="spots per section (a square grid)")
    ap.add_argument("--genes", type=int, default=2000, help="genes in the counts")
    ap.add_argument("--panel", type=int, default=100, help="genes the benchmark predicts (top by mean)")
    ap.add_argument("--k", type=int, default=2, help="folds of the 2D cross-validation over patients")
    ap.add_argument("--batch", type=int, default=64, help="training batch size")
    ap.add_argument("--max-steps", type=int, default=50,
                    help="training batches per epoch of the image model (0: all); keeps N = 1,000 within CPU reach "
                         "while every test spot is still predicted and scored")
    ap.add_argument("--workers", type=int, default=2, help="prepare --workers")
    ap.add_argument("--stages", default="prepare,loader,benchmark")
    ap.add_argument("--models", default="hifusion,mean_profile",
                    help="benchmark models: a small HiFusion (1 epoch) and/or mean_profile (no image work)")
    ap.add_argument("--loader-spots", type=int, default=4000, help="spots the loader stage draws at random")
    ap.add_argument("--loader-workers", type=int, default=4, help="DataLoader workers of the loader stage")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "hifusion-scale")
    ap.add_argument("--plot", type=Path, default=None, help="write the time / RSS plot here (PNG)")
    ap.add_argument("--json", type=Path, default=None, help="write (and merge into) the measurements here")
    ap.add_argument("--fresh", action="store_true", help="redo the cache and results (the cohort is kept)")
    ap.add_argument("--before", type=Path, default=None, help="an earlier --json to draw in grey on the plot")
    args = ap.parse_args(argv)
    stages = {s.strip() for s in args.stages.split(",")}
    env = {**os.environ, "HIFUSION_PROGRESS": "0"}
    cli = [sys.executable, "-m", "hifusion.cli"]
    old = json.loads(args.json.read_text()) if args.json and args.json.is_file() else {}
    results: dict[str, Any] = dict(old.get("rows", {}))
    for n in [int(s) for s in args.sizes.split(",") if s.strip()]:
        base = args.work / f"n{n}"
        cohort, cache, out = base / "cohort", base / "cache", base / "results"
        gen_s = make_cohort(cohort, n, args.spots, args.genes)
        g = int(round(np.sqrt(args.spots)))
        row: dict[str, Any] = {"n": n, "spots_total": n * g * g, "generate_s": gen_s, "cohort_mb": du_mb(cohort)}
        if args.fresh:
            subprocess.run(["rm", "-rf", str(cache), str(out)], check=True)
        if "prepare" in stages:
            subprocess.run(["rm", "-rf", str(cache)], check=True)
            cmd = [*cli, "prepare", "--format", "h5ad", "--root", str(cohort), "--out", str(cache), "--spot-um",
                   str(PITCH_PX * MPP), "--spot-px", str(PITCH_PX), "--workers", str(args.workers)]
            row["prepare"] = {**measure(cmd, base / "prepare.log", env), "out_mb": du_mb(cache),
                              "command": " ".join(cmd[2:])}
            print(f"[scale] N={n} prepare: {row['prepare']}", file=sys.stderr, flush=True)
        if "loader" in stages:
            cmd = [sys.executable, "-c", LOADER_SCRIPT, str(cache), str(args.loader_spots), str(args.loader_workers)]
            row["loader"] = {**measure(cmd, base / "loader.log", env), "spots": args.loader_spots,
                             "workers": args.loader_workers}
            print(f"[scale] N={n} loader: {row['loader']}", file=sys.stderr, flush=True)
        if "benchmark" in stages:
            subprocess.run(["rm", "-rf", str(out)], check=True)
            cfg = base / "scale.yaml"
            models = [m.strip() for m in args.models.split(",") if m.strip()]
            bench_config(cfg, cache, args.k, args.panel, args.batch, models, args.max_steps or None)
            cmd = [*cli, "benchmark", str(cfg), "--out", str(out)]
            row["benchmark"] = {**measure(cmd, base / "benchmark.log", env), "out_mb": du_mb(out),
                                "command": " ".join(cmd[2:]), "models": models}
            print(f"[scale] N={n} benchmark: {row['benchmark']}", file=sys.stderr, flush=True)
        results[str(n)] = {**results.get(str(n), {}), **row}
    rows = [results[k] for k in sorted(results, key=int)]
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"rows": results, "args": {k: str(v) for k, v in vars(args).items()}},
                                        indent=2) + "\n")
    if args.plot:
        before = json.loads(args.before.read_text())["rows"] if args.before else {}
        plot(rows, args.plot, [before[k] for k in sorted(before, key=int)])
    return 0 if all(r.get(s, {}).get("rc", 0) == 0 for r in rows for s in ("prepare", "benchmark")) else 1


if __name__ == "__main__":
    sys.exit(main())

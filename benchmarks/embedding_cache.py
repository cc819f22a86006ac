#!/usr/bin/env python3
"""The embedding cache: a frozen-encoder benchmark run twice as fresh processes, first run vs cached run.

Usage: python benchmarks/embedding_cache.py [--model linear_probe|stnet|bleep] [--epochs 10] [--encoder resnet50]
                                            [--no-tta] [--root ../shared/data/her2st] [--cache cache/her2st_cpu]
                                            [--work runs/embedding_cache_bench]

What it does:
1. makes sure the CPU-profile patch cache of HER2ST C2, C3, C4 exists (112 px spot / 224 px region at 154.6 um, as
   configs/her2st_c_3d_cpu.yaml), preparing it with `hifusion prepare` if absent (not timed);
2. in a new folder under --work: links that cache's files (hard links, else copies keeping their times) so the
   embedding cache starts empty there, and writes random weights of the encoder to a local file (seeded), so the
   cache key (which holds the file's SHA-256) is the same for both runs;
3. runs `hifusion benchmark` twice, each a fresh process, on the 3D split (train C2, test C3, C4) with a model on
   that frozen encoder (the linear probe; or ST-Net or BLEEP with `freeze_encoder`, trained `--epochs` epochs on
   the stored embeddings of the 8 D4 views of C2) and test-time D4 views (`adapt.tta`, unless --no-tta): the first
   run computes and stores the embeddings (C2: the plain view, or 8 for the trained models; C3, C4: 8 views each),
   the second reads them;
4. prints both wall times side by side, how many (section, view) embeddings each run computed or read, and whether
   the two runs' predictions are identical (max abs difference).
Both runs pay the same process start, imports, cache reading, scoring, report and figures; only the encoder differs.
That fixed part was ~60 s of a cached run on the loaded 2-core development machine (Lightning and training imports
~25-40 s, maps ~25 s), so the speed-up grows with the encoder's cost: ResNet-18 at 112 px gave 6.5x there.
The machine's load average is printed with the figures: on a shared machine the times move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("C2", "C3", "C4")


def _hifusion(*args: str) -> list[str]:
    """The `hifusion` command in this interpreter (PYTHONPATH, if set, picks the source tree)."""
    return [sys.executable, "-m", "hifusion.cli", *args]


def ensure_cache(cache: Path, root: Path) -> None:
    """The CPU-profile cache of C2-C4, prepared once (not part of any timing)."""
    if all((cache / f"{s}.patches.h5").is_file() and (cache / f"{s}.h5ad").is_file() for s in SECTIONS):
        return
    if not root.is_dir():
        sys.exit(f"HER2ST not found at {root}: pass --root, or --cache with a prepared CPU-profile cache")
    print(f"preparing {cache} from {root} (once, not timed)", flush=True)
    subprocess.run(_hifusion("prepare", "--out", str(cache), "--root", str(root), "--format", "her2st",
                             "--sections", ",".join(SECTIONS), "--spot-um", "154.6", "--spot-px", "112",
                             "--region-factor", "2.0"), check=True)


def link_cache(cache: Path, dest: Path) -> None:
    """The cache's files under `dest` with their sizes and times (hence the same embedding keys), but no
    embeddings yet: hard links where the file system allows, else copies."""
    dest.mkdir(parents=True)
    names = ["cache.json"] + [f"{s}{suffix}" for s in SECTIONS for suffix in (".h5ad", ".patches.h5")]
    for name in names:
        if not (cache / name).exists():
            continue
        try:
            os.link(cache / name, dest / name)
        except OSError:
            shutil.copy2(cache / name, dest / name)


def write_weights(encoder: str, path: Path, seed: int) -> None:
    """Random weights of the encoder in a local file: a stable key without downloading anything."""
    import torch

    from hifusion.models.encoders import create_encoder

    torch.manual_seed(seed)
    torch.save(create_encoder(encoder).trunk.state_dict(), path)


def write_config(work: Path, model: str, encoder: str, weights: Path, tta: bool, epochs: int) -> Path:
    import yaml

    options: dict = {"encoder": encoder, "encoder_weights": str(weights)}
    if model != "linear_probe":
        options["freeze_encoder"] = True
    cfg = {
        "name": "embedding_cache_bench",
        "output": str(work),
        "data": {"cache": str(work / "cache"), "genes": {"method": "top_mean", "n": 250}, "label": "logprop",
                 "normalise": "dataset", "embedding_cache": True},
        "protocol": {"name": "fixed", "train": ["C2"], "test": ["C3", "C4"]},
        "models": [{"name": model, "options": options}],
        "train": {"seed": 0, "batch_size": 32, "num_workers": 0, "epochs": epochs},
        "adapt": {"tta": tta},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def timed_run(config: Path, out: Path, model: str) -> tuple[float, dict, dict[str, np.ndarray]]:
    """Wall seconds of one `hifusion benchmark` process, the model's embedding counts and its predictions."""
    env = {**os.environ, "HIFUSION_PROGRESS": "0"}
    start = time.perf_counter()
    subprocess.run(_hifusion("benchmark", str(config), "--out", str(out)), check=True, env=env,
                   stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    mdir = out / "runs" / "fixed" / model
    info = json.loads((mdir / "done.json").read_text())
    with np.load(mdir / "predictions.npz") as z:
        preds = {k: z[k] for k in z.files}
    return seconds, info.get("embeddings", {}), preds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="linear_probe", choices=("linear_probe", "stnet", "bleep"),
                    help="the frozen-encoder model (stnet and bleep with freeze_encoder)")
    ap.add_argument("--epochs", type=int, default=10, help="training epochs of stnet/bleep (on stored embeddings)")
    ap.add_argument("--encoder", default="resnet50", help="registered or timm encoder name (frozen, random weights)")
    ap.add_argument("--no-tta", dest="tta", action="store_false", help="plain view only (no D4 test-time views)")
    ap.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "her2st")
    ap.add_argument("--cache", type=Path, default=REPO / "cache" / "her2st_cpu")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "embedding_cache_bench")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random encoder weights")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    ensure_cache(args.cache, args.root)
    work = args.work / f"{args.model}-{args.encoder}-{time.strftime('%Y%m%d-%H%M%S')}"
    link_cache(args.cache, work / "cache")
    weights = work / f"{args.encoder}.pth"
    write_weights(args.encoder, weights, args.seed)
    config = write_config(work, args.model, args.encoder, weights, args.tta, args.epochs)
    load_before = os.getloadavg()
    runs = [timed_run(config, work / name, args.model) for name in ("first", "second")]
    load_after = os.getloadavg()

    (t1, e1, p1), (t2, e2, p2) = runs
    same_keys = set(p1) == set(p2)
    diff = max(float(np.abs(p1[k] - p2[k]).max()) for k in p1) if same_keys else float("inf")
    identical = same_keys and all(np.array_equal(p1[k], p2[k]) for k in p1)
    trained = "" if args.model == "linear_probe" else f" ({args.epochs} epochs on stored embeddings)"
    print(f"{args.model}{trained}, frozen {args.encoder} (random weights in a local file), train C2 / test C3, C4, "
          f"CPU profile 112 px, tta={args.tta}; {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after")
    print(f"{'run':<8} {'wall s':>8} {'encoded':>8} {'read':>6}")
    for name, t, e in (("first", t1, e1), ("cached", t2, e2)):
        print(f"{name:<8} {t:8.1f} {e.get('encoded', '?'):>8} {e.get('read', '?'):>6}")
    print(f"speed-up {t1 / t2:.1f}x; predictions identical: {'yes' if identical else 'NO'} (max abs diff {diff:g})")
    print(f"results: {work}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "epochs": args.epochs, "encoder": args.encoder,
                                         "tta": args.tta, "first_s": t1, "cached_s": t2,
                                         "speedup": t1 / t2, "identical": identical, "max_abs_diff": diff,
                                         "first": e1, "cached": e2, "load": [load_before[0], load_after[0]]},
                                        indent=2))


if __name__ == "__main__":
    main()

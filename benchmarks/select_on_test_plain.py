#!/usr/bin/env python3
"""Plain scores (no test-time recipe) of the honest and the test-selected checkpoints of a `select_on_test` run.

Usage: python benchmarks/select_on_test_plain.py RUN_DIR [--config RUN_DIR/config.yaml] [--cache CACHE]
                                                 [--models hifusion,stnet]

A benchmark run with `--set train.select_on_test=mse` reports the test-selected epoch under the config's main
test-time recipe only. The HiFusion reference code scores its models plain, so this script loads both checkpoints
of every split and model (the one its report scored, the honest choice, and `best_test_FLATTERING.ckpt`), predicts the
split's test sections plainly through the package's one inference path and prints MSE, MAE, PCC-spot and PCC-gene,
mean over test sections, as the report computes them. The honest rows reproduce the run's own `[plain]` rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from hifusion import constants as C

KEYS = ("mse", "mae", "pcc_spot", "pcc_gene")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="the benchmark's --out folder")
    ap.add_argument("--config", type=Path, default=None, help="default: RUN/config.yaml (the resolved config)")
    ap.add_argument("--cache", type=Path, default=None, help="default: the config's data.cache")
    ap.add_argument("--models", default="hifusion,stnet", help="model labels, comma-separated")
    args = ap.parse_args()

    from hifusion.config import load_config
    from hifusion.data.splitdata import load_split
    from hifusion.evaluate.protocols import _make_splits
    from hifusion.inference import Predictor, predict_rows
    from hifusion.metrics import section_metrics
    from hifusion.models.loading import load_checkpoint

    cfg = load_config(args.config or args.run / "config.yaml")
    cache = args.cache or Path(cfg.data.cache)
    print(f"{'split':<8} {'model':<10} {'checkpoint':<28} " + " ".join(f"{k:>8}" for k in KEYS))
    for split in _make_splits(cfg, cache):
        data = load_split(cache, split, cfg.data, cfg.train.val, seed=cfg.train.seed)
        for model in args.models.split(","):
            mdir = args.run / "runs" / split.name / model
            if not (mdir / C.DONE_JSON).exists():
                continue
            honest = Path(json.loads((mdir / C.DONE_JSON).read_text())["checkpoint"])  # the one the report scored
            for path in (honest, mdir / C.CKPT_DIR / C.CKPT_BEST_TEST):
                if not path.exists():
                    continue
                net, meta = load_checkpoint(path)
                predictor = Predictor(net, meta).eval()
                scores = []
                for s in data.test_sections:
                    pred = predict_rows(predictor, data.patches[s], data.rows[s], data.geometry,
                                        stain_src=data.stain_source(s))
                    scores.append(section_metrics(pred, data.labels[s]))
                means = [float(np.mean([r[k] for r in scores])) for k in KEYS]
                print(f"{split.name:<8} {model:<10} {path.name:<28} " + " ".join(f"{v:8.4f}" for v in means),
                      flush=True)


if __name__ == "__main__":
    main()

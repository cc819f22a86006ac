"""Two-process DDP on CPU (gloo) through `hifusion train --devices 2 --strategy ddp --accelerator cpu`.

Checks that both ranks end with identical weights (those of last.ckpt), that the validation metrics gathered over
ranks equal a single-process computation on the same weights and spots, and that rank 0 alone writes the results.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from hifusion import constants as C
from tests.synthetic import tiny_config, write_dataset

# A driver that runs the CLI unchanged, except that every rank records a hash of its weights at the end of
# training. Lightning's DDP launcher re-executes this same script for rank 1, so the hook is in every rank.
DRIVER = textwrap.dedent('''
    import hashlib, os, sys
    from pathlib import Path

    from hifusion.train.module import ExpressionModule

    def state_hash(state):
        h = hashlib.sha256()
        for k in sorted(state):
            h.update(k.encode())
            h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def on_train_end(self):
        params = {k: v for k, v in self.model.named_parameters()}
        buffers = {k: v for k, v in self.model.named_buffers()}
        out = Path(os.environ["HF_TEST_HASH_DIR"]) / f"rank{self.global_rank}.txt"
        out.write_text(f"{state_hash(params)} {state_hash(buffers)} {self.trainer.world_size}")

    ExpressionModule.on_train_end = on_train_end
    from hifusion.cli import main
    main()
''')

RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS",
             "JSM_NAMESPACE_RANK", "MASTER_ADDR", "MASTER_PORT")


def _state_hash(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_ddp_two_cpu_ranks(tmp_path: Path) -> None:
    from hifusion.config import TrainConfig, parse_config
    from hifusion.data.splitdata import load_split
    from hifusion.data.splits import make_splits, with_validation_sections
    from hifusion.inference import predict_rows
    from hifusion.metrics import section_metrics
    from hifusion.models.loading import load_checkpoint
    from hifusion.train.module import ExpressionModule

    root = write_dataset(tmp_path / "raw")
    mapping = tiny_config(root, tmp_path / "cache", tmp_path / "runs", epochs=1, threads=1,
                          val={"mode": "spatial_block", "fraction": 0.25})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(mapping))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    hashes = tmp_path / "hashes"
    hashes.mkdir()
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARS}
    env.update(HF_TEST_HASH_DIR=str(hashes), HIFUSION_PROGRESS="0", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(driver), "train", str(cfg_path), "--out", str(out), "--devices", "2",
         "--strategy", "ddp", "--accelerator", "cpu"],
        env=env, capture_output=True, text=True, timeout=220, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    # both ranks trained in one 2-process group and ended with the same parameters and buffers
    ranks = {p.name: p.read_text().split() for p in hashes.iterdir()}
    assert sorted(ranks) == ["rank0.txt", "rank1.txt"]
    assert ranks["rank0.txt"] == ranks["rank1.txt"]
    assert ranks["rank0.txt"][2] == "2"

    # ... which are the weights of last.ckpt
    run = out / "runs" / "fixed" / "hifusion"
    model, meta = load_checkpoint(run / C.CKPT_DIR / C.CKPT_LAST)
    assert _state_hash(dict(model.named_parameters())) == ranks["rank0.txt"][0]
    assert _state_hash(dict(model.named_buffers())) == ranks["rank0.txt"][1]

    # rank 0 alone wrote the results: one report, predictions for every test spot
    assert (out / "report.md").is_file() and (out / "metrics.csv").is_file()
    with np.load(run / "predictions.npz") as z:
        assert z["P2"].shape == (36, 20) and z["Q1"].shape == (36, 20)

    # validation metrics gathered over both ranks == one process on the same weights and validation spots
    cfg = parse_config(mapping)
    from hifusion.data.cache.reader import cache_patients

    p = cfg.protocol
    split = make_splits(p.name, cache_patients(cfg.data.cache), train=p.train, test=p.test, folds=p.folds, k=p.k,
                        only_patients=p.patients)[0]
    data = load_split(cfg.data.cache, with_validation_sections(split, cfg.train.val), cfg.data, cfg.train.val,
                      seed=cfg.train.seed)
    module = ExpressionModule(model, TrainConfig(), meta)
    val = {s: r for s, r in data.val_rows.items() if len(r)}
    assert list(val) == ["P1"] and len(val["P1"]) % 2 == 1  # odd: rank 1's shard is padded with a duplicate
    rows, n = val["P1"], len(val["P1"])
    # PCC-gene of a barely trained model is ill-conditioned (near-constant predictions), so reproduce each rank's
    # batches exactly (EpochSampler: order[rank::2], padded by repeating the first spots; batch size 8; 1 thread)
    order = np.concatenate([np.arange(n), np.arange(2 * ((n + 1) // 2) - n)])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        per_rank = [(order[r::2], predict_rows(module, data.patches["P1"], rows[order[r::2]], meta.patch,
                                               batch_size=8)) for r in range(2)]
    finally:
        torch.set_num_threads(threads)
    idx = np.concatenate([i for i, _ in per_rank])
    stacked = np.concatenate([q for _, q in per_rank])
    first = np.unique(idx, return_index=True)[1]
    assert len(first) == n  # every validation spot once
    pred = stacked[first]
    y = data.label_rows("P1", rows).astype(np.float32)
    history = pd.read_csv(run / C.RUN_METRICS)
    last = history.iloc[-1]
    np.testing.assert_allclose(last["val_mse"], np.mean((pred.astype(np.float64) - y) ** 2), rtol=1e-5)
    expected_pcc = section_metrics(pred.astype(np.float64), y.astype(np.float64))["pcc_gene"]
    np.testing.assert_allclose(last["val_pcc_gene"], expected_pcc, rtol=1e-5, atol=1e-7)

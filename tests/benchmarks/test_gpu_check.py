"""`benchmarks/gpu_check.sh --device cpu --quick` runs every step and prints the table, so the GPU script cannot rot.

The script is meant for a GPU (paper profile, bf16, DDP over NCCL); on CPU with `--quick` it runs the same four steps
(throughput, a training run, a whole-slide prediction, a DDP-strategy fit) with a small HiFusion on 32 px patches.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_cpu_quick(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "HIFUSION_PROGRESS": "0",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--quick",
                           "--out", str(tmp_path / "work")], capture_output=True, text=True, env=env, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("|")]
    assert lines[0] == "| step | spots/s | peak GPU MB | bf16 roofline | wall s | status |"
    body = lines[2:]
    for step in ("throughput train channels_last on", "throughput train channels_last off",
                 "throughput infer channels_last on", "throughput infer channels_last off", "train 1 epoch(s)",
                 "predict one slide", "fit, strategy ddp, 1 device"):
        row = next((r for r in body if r.startswith(f"| {step}")), None)
        assert row is not None, f"{step} missing from\n{proc.stdout}"
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[-1] == "ok"
        assert float(cells[1]) > 0  # spots/s measured
        assert cells[2] == "n/a" and cells[3] == "n/a"  # no GPU memory or bf16 roofline on CPU
    assert (tmp_path / "work" / "predict" / "predictions.h5ad").is_file()
    assert (tmp_path / "work" / "ddp" / "runs" / "fixed" / "hifusion" / "checkpoints" / "last.ckpt").is_file()

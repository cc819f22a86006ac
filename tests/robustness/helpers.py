"""Builders of small, editable input folders and a way to run the real CLI in-process or as a subprocess.

Every builder writes plain files a user could have (HER2ST legacy layout, AnnData, YAML configs), so a bad-input
case is a small edit of a good folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from hifusion import constants as C

PITCH = 100.0  # px between array positions -> 200 um / 100 px = 2.0 um/px
MPP = 2.0
SPOT_PX = 16
SPOT_UM = SPOT_PX * MPP  # patches at the image's own scale: an exact crop, no resampling
MARKER = (255, 0, 0)
PARTIAL_SUFFIXES = (".h5ad", ".h5", ".tmp", ".ckpt", ".npz")


@dataclass
class Her2stFolder:
    """Paths of one HER2ST-layout section written by `write_her2st`."""

    root: Path
    section: str
    counts: Path
    spots: Path
    image: Path


def spot_table(nx: int = 4, ny: int = 3, pitch: float = PITCH, origin: tuple[float, float] = (150.0, 130.0)
               ) -> pd.DataFrame:
    rows = []
    for y in range(1, ny + 1):
        for x in range(1, nx + 1):
            rows.append({"x": x, "y": y, "new_x": float(x), "new_y": float(y),
                         "pixel_x": origin[0] + (x - 1) * pitch, "pixel_y": origin[1] + (y - 1) * pitch,
                         "selected": 1})
    return pd.DataFrame(rows)


def draw(centres: np.ndarray, size: tuple[int, int], marker: int = 2) -> np.ndarray:
    """White image (w, h) = size with a red square on the pixel nearest each centre."""
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    for cx, cy in np.floor(np.asarray(centres, dtype=np.float64) + 0.5).astype(int):
        img[max(cy - marker, 0): cy + marker + 1, max(cx - marker, 0): cx + marker + 1] = MARKER
    return img


def write_her2st(
    root: Path,
    section: str = "T1",
    *,
    spots: pd.DataFrame | None = None,
    counts: pd.DataFrame | np.ndarray | None = None,
    genes: list[str] | None = None,
    size: tuple[int, int] | None = None,
    suffix: str = ".png",
    seed: int = 0,
) -> Her2stFolder:
    """One section in the HER2ST legacy layout; counts default to random integers 100..149 (8 genes)."""
    sp_df = spot_table() if spots is None else spots
    barcodes = [f"{int(x)}x{int(y)}" for x, y in zip(sp_df.x, sp_df.y, strict=True)]
    if not isinstance(counts, pd.DataFrame):
        values = np.random.default_rng(seed).integers(100, 150, size=(len(sp_df), 8)) if counts is None else counts
        names = genes or [f"G{i}" for i in range(values.shape[1])]
        counts = pd.DataFrame(values, index=barcodes, columns=names)
    patient = section.rstrip("0123456789")
    paths = Her2stFolder(root, section, root / "ST-cnts" / f"{section}.tsv.gz",
                         root / "ST-spotfiles" / f"{section}_selection.tsv",
                         root / "ST-imgs" / patient / section / f"{section}_HE{suffix}")
    for p in (paths.counts, paths.spots, paths.image):
        p.parent.mkdir(parents=True, exist_ok=True)
    counts.to_csv(paths.counts, sep="\t")
    sp_df.to_csv(paths.spots, sep="\t", index=False)
    centres = sp_df[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    if size is None:
        size = (int(centres[:, 0].max() + 150), int(centres[:, 1].max() + 150))
    img = Image.fromarray(draw(centres, size))
    if suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(paths.image, np.asarray(img))
    else:
        img.save(paths.image, **({"quality": 95} if suffix == ".jpg" else {}))
    return paths


def prepare_args(folder: Her2stFolder, out: Path, *extra: str) -> list[str]:
    return ["prepare", "--format", "her2st", "--root", str(folder.root), "--sections", folder.section,
            "--out", str(out), "--spot-um", str(SPOT_UM), "--spot-px", str(SPOT_PX), *extra]


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_inprocess(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> CliResult:
    """`hifusion ARGS` through `hifusion.cli.main` (the console entry point) in this process."""
    from hifusion.cli import main

    monkeypatch.setattr(sys, "argv", ["hifusion", *args])
    monkeypatch.setenv("HIFUSION_PROGRESS", "0")
    capsys.readouterr()
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out = capsys.readouterr()
    return CliResult(code, out.out, out.err)


def run_subprocess(args: list[str], cwd: Path | None = None, timeout: float = 300) -> CliResult:
    """`python -m hifusion.cli ARGS` in a fresh interpreter."""
    env = {**os.environ, "HIFUSION_PROGRESS": "0"}
    res = subprocess.run([sys.executable, "-m", "hifusion.cli", *args], capture_output=True, text=True, cwd=cwd,
                         env=env, timeout=timeout)
    return CliResult(res.returncode, res.stdout, res.stderr)


def partial_files(folder: Path) -> list[Path]:
    """Files under `folder` that only a (partly) successful write leaves: data, checkpoints, temporaries."""
    if not folder.exists() or folder.is_file():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(PARTIAL_SUFFIXES))


def assert_clean_error(res: CliResult, out: Path | None, *needles: str) -> str:
    """Exit 2, one `error:` line on stderr (no traceback) containing every needle, and no partial output under `out`."""
    # progress notes ("[hifusion] fixed: fitting ...") may precede the error; nothing else may
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip() and not ln.startswith("[hifusion] ")]
    assert res.code == 2, f"exit {res.code}\nstderr:\n{res.stderr}"
    assert "Traceback" not in res.stderr, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one error line on stderr, got:\n{res.stderr}"
    line = lines[0]
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    if out is not None:
        assert partial_files(out) == [], partial_files(out)
    return line


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def last_checkpoint(run: Path) -> Path:
    """The HiFusion `last.ckpt` of a results folder made with the tiny config's fixed protocol."""
    return run / "runs" / "fixed" / "hifusion" / C.CKPT_DIR / C.CKPT_LAST


def sigkill_when(args: list[str], ready: Callable[[], bool], what: str, timeout: float = 240) -> None:
    """Start `hifusion ARGS` in a fresh process and SIGKILL it as soon as `ready()` holds (a crash mid-run); fail if
    it ends first or `ready` never holds within `timeout` seconds. `what` names the run in the failure message."""
    proc = subprocess.Popen([sys.executable, "-m", "hifusion.cli", *args], env={**os.environ, "HIFUSION_PROGRESS": "0"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"{what} ended (exit {proc.returncode}) before it could be killed: {proc.stderr.read()}")
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        else:
            pytest.fail(f"{what} did not reach the point to kill it in time")
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()

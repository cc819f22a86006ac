"""Bad inputs through the real CLI: exit code 2, one `error:` line naming the file and the problem, no traceback,
and no partial output (.h5ad, .h5, .tmp, .ckpt, .npz) left behind.

Each case builds a small folder a user could have, breaks one thing, and runs `hifusion ...` either in-process
(`hifusion.cli.main`, the console entry point) or, for a few, in a fresh interpreter.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from hifusion.checkpoint import HASH_SUFFIX
from tests.robustness.helpers import (
    CliResult,
    Her2stFolder,
    assert_clean_error,
    last_checkpoint,
    partial_files,
    prepare_args,
    run_inprocess,
    run_subprocess,
    spot_table,
    write_config,
    write_her2st,
)
from tests.synthetic import tiny_config, write_section


def _predict_registered() -> bool:
    from hifusion.cli import app

    names = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    return "predict" in names


needs_predict = pytest.mark.skipif(not _predict_registered(), reason="`hifusion predict` is not registered yet")


@dataclass
class Call:
    """What to run and what the one error line must contain."""

    args: list[str]
    out: Path | None
    needles: list[str]
    subprocess: bool = False
    keep: set[Path] = field(default_factory=set)  # partial-looking files that existed before (earlier runs)


class Ctx:
    """A case's tmp folder plus lazy access to the shared fixtures (only cases that need them pay for them)."""

    def __init__(self, tmp: Path, request: pytest.FixtureRequest) -> None:
        self.tmp, self._request = tmp, request

    def fixture(self, name: str) -> Path:
        return self._request.getfixturevalue(name)

    def her2st(self, **kw: object) -> Her2stFolder:
        return write_her2st(self.tmp / "her2st", **kw)  # type: ignore[arg-type]

    def counts(self, f: Her2stFolder) -> list[list[str]]:
        with gzip.open(f.counts, "rt") as fh:
            return [ln.rstrip("\n").split("\t") for ln in fh]

    def write_counts(self, f: Her2stFolder, rows: list[list[str]]) -> None:
        with gzip.open(f.counts, "wt") as fh:
            fh.write("".join("\t".join(r) + "\n" for r in rows))

    def set_count(self, f: Her2stFolder, value: str, row: int = 1, col: int = 2) -> Her2stFolder:
        rows = self.counts(f)
        rows[row][col] = value
        self.write_counts(f, rows)
        return f

    def tiny_cfg(self, **train: object) -> dict:
        return tiny_config(self.fixture("tiny_dataset"), self.fixture("tiny_cache"), self.tmp / "runs", **train)

    def resumable_copy(self) -> tuple[Path, Path]:
        """A copy of the trained run that looks interrupted after its last checkpoint (no done.json)."""
        run = self.tmp / "run"
        shutil.copytree(self.fixture("trained_run"), run)
        (run / "runs" / "fixed" / "hifusion" / "done.json").unlink()
        (run / "runs" / "fixed" / "hifusion" / "predictions.npz").unlink()
        return run, last_checkpoint(run)


def _prepare(ctx: Ctx, f: Her2stFolder, *extra: str) -> list[str]:
    return prepare_args(f, ctx.tmp / "cache", *extra)


# ------------------------------------------------------------------------------------------------- prepare
def missing_image(ctx: Ctx) -> Call:
    f = ctx.her2st()
    f.image.unlink()
    return Call(_prepare(ctx, f), ctx.tmp / "cache", [str(f.image.parent), "no image file"])


def corrupt_jpeg(ctx: Ctx) -> Call:
    f = ctx.her2st(suffix=".jpg")
    f.image.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return Call(_prepare(ctx, f), ctx.tmp / "cache", [str(f.image), "cannot open image"])


def truncated_jpeg(ctx: Ctx) -> Call:
    f = ctx.her2st(suffix=".jpg")
    data = f.image.read_bytes()
    f.image.write_bytes(data[: len(data) // 2])
    return Call(_prepare(ctx, f), ctx.tmp / "cache", [str(f.image), "truncated"], subprocess=True)


def truncated_tiff(ctx: Ctx) -> Call:
    f = ctx.her2st(suffix=".tif")
    data = f.image.read_bytes()
    f.image.write_bytes(data[: len(data) // 2])
    return Call(_prepare(ctx, f), ctx.tmp / "cache", [str(f.image), "truncated or corrupt"])


def image_too_small(ctx: Ctx) -> Call:
    f = ctx.her2st(size=(300, 250))  # the spots span 150..450 x 130..330 px
    return Call(_prepare(ctx, f), ctx.tmp / "cache", [str(f.spots), "outside the image", "--coord-scale T1="])


def coords_10x_too_large(ctx: Ctx) -> Call:
    f = ctx.her2st()
    table = spot_table()
    table[["pixel_x", "pixel_y"]] *= 10  # e.g. coordinates of the full-resolution scan, image a 10x smaller copy
    table.to_csv(f.spots, sep="\t", index=False)
    return Call(_prepare(ctx, f), ctx.tmp / "cache", [str(f.spots), "outside the image", "--coord-scale T1="])


def no_shared_barcodes(ctx: Ctx) -> Call:
    f = ctx.her2st()
    rows = ctx.counts(f)
    for i, r in enumerate(rows[1:]):
        r[0] = f"spot{i}"
    ctx.write_counts(f, rows)
    return Call(_prepare(ctx, f), ctx.tmp / "cache", [str(f.counts), "share no spot barcode"])


def duplicate_barcodes(ctx: Ctx) -> Call:
    f = ctx.her2st()
    rows = ctx.counts(f)
    rows[2][0] = rows[1][0]
    ctx.write_counts(f, rows)
    return Call(_prepare(ctx, f), ctx.tmp / "cache", [str(f.counts), "duplicate spot barcodes", rows[1][0]])


def duplicate_spot_rows(ctx: Ctx) -> Call:
    table = spot_table()
    table.loc[1, ["x", "y"]] = table.loc[0, ["x", "y"]].to_numpy()
    f = ctx.her2st(spots=table)
    return Call(_prepare(ctx, f), ctx.tmp / "cache", [str(f.spots), "duplicate spots"])


def negative_counts(ctx: Ctx) -> Call:
    f = ctx.set_count(ctx.her2st(), "-3")
    return Call(_prepare(ctx, f), ctx.tmp / "cache", [str(f.counts), "negative"])


def non_integer_counts(ctx: Ctx) -> Call:
    f = ctx.set_count(ctx.her2st(), "2.5")
    return Call(_prepare(ctx, f), ctx.tmp / "cache", [str(f.counts), "not integers"])


def nan_counts(ctx: Ctx) -> Call:
    f = ctx.set_count(ctx.her2st(), "NaN")
    return Call(_prepare(ctx, f), ctx.tmp / "cache", [str(f.counts), "missing values"])


def text_in_counts(ctx: Ctx) -> Call:
    f = ctx.set_count(ctx.her2st(), "n/a?")
    return Call(_prepare(ctx, f), ctx.tmp / "cache", [str(f.counts), "non-numeric counts"])


def zero_spots_selected(ctx: Ctx) -> Call:
    table = spot_table()
    table["selected"] = 0
    f = ctx.her2st(spots=table)
    return Call(_prepare(ctx, f), ctx.tmp / "cache", [str(f.spots), "selected == 1"])


def h5ad_without_scale(ctx: Ctx) -> Call:
    folder = ctx.tmp / "h5ad"
    f = write_her2st(ctx.tmp / "src")
    table = spot_table()
    a = ad.AnnData(X=np.random.default_rng(0).integers(0, 9, (len(table), 5)).astype(np.float32))
    a.obs_names = [f"s{i}" for i in range(len(table))]
    a.var_names = [f"G{i}" for i in range(5)]
    a.obsm["spatial"] = table[["pixel_x", "pixel_y"]].to_numpy()
    folder.mkdir()
    a.write_h5ad(folder / "S1.h5ad")
    shutil.copy(f.image, folder / "S1.png")
    args = ["prepare", "--format", "h5ad", "--root", str(folder), "--out", str(ctx.tmp / "cache")]
    return Call(args, ctx.tmp / "cache", [str(folder / "S1.h5ad"), "um/px unknown", "--mpp S1="])


def missing_data_root(ctx: Ctx) -> Call:
    f = Her2stFolder(ctx.tmp / "nowhere", "T1", Path(), Path(), Path())
    return Call(_prepare(ctx, f), ctx.tmp / "cache", [str(ctx.tmp / "nowhere"), "not found"])


def prepare_out_not_writable(ctx: Ctx) -> Call:
    f = ctx.her2st()
    blocker = ctx.tmp / "a_file"
    blocker.write_text("not a folder")
    return Call(prepare_args(f, blocker / "cache"), ctx.tmp, [str(blocker), "cannot write"])


# ------------------------------------------------------------------------------------------- train, benchmark
def config_unknown_key(ctx: Ctx) -> Call:
    cfg = ctx.tiny_cfg()
    cfg["train"]["epoch"] = 3  # typo of `epochs`
    path = write_config(ctx.tmp / "typo.yaml", cfg)
    return Call(["train", str(path), "--out", str(ctx.tmp / "res")], ctx.tmp / "res", [str(path), "train.epoch"],
                subprocess=True)


def config_wrong_type(ctx: Ctx) -> Call:
    cfg = ctx.tiny_cfg()
    cfg["train"]["batch_size"] = "large"
    path = write_config(ctx.tmp / "types.yaml", cfg)
    return Call(["benchmark", str(path), "--out", str(ctx.tmp / "res")], ctx.tmp / "res",
                [str(path), "train.batch_size"])


def config_not_yaml(ctx: Ctx) -> Call:
    path = ctx.tmp / "broken.yaml"
    path.write_text("data: {cache: [unclosed\n")
    return Call(["train", str(path), "--out", str(ctx.tmp / "res")], ctx.tmp / "res", [str(path), "not valid YAML"])


def cache_missing(ctx: Ctx) -> Call:
    cfg = ctx.tiny_cfg()
    cfg["data"]["cache"] = str(ctx.tmp / "no_cache")
    del cfg["data"]["prepare"]
    path = write_config(ctx.tmp / "nocache.yaml", cfg)
    return Call(["benchmark", str(path), "--out", str(ctx.tmp / "res")], ctx.tmp / "res",
                [str(ctx.tmp / "no_cache"), "not found"])


def panel_gene_missing_in_test(ctx: Ctx) -> Call:
    root = ctx.tmp / "raw"
    write_section(root, "P1", seed=1)
    write_section(root, "Q1", seed=2, n_genes=10)  # lacks G10..G29, the most expressed genes of P1
    cfg = tiny_config(root, ctx.tmp / "cache", ctx.tmp / "runs")
    cfg["protocol"]["test"] = ["Q1"]
    path = write_config(ctx.tmp / "panel.yaml", cfg)
    res = ctx.tmp / "res"
    return Call(["train", str(path), "--out", str(res)], res, [str(ctx.tmp / "cache" / "Q1.h5ad"), "panel gene"])


def train_out_not_writable(ctx: Ctx) -> Call:
    blocker = ctx.tmp / "a_file"
    blocker.write_text("not a folder")
    path = write_config(ctx.tmp / "ok.yaml", ctx.tiny_cfg())
    return Call(["train", str(path), "--out", str(blocker / "res")], ctx.tmp, [str(blocker), "cannot write"])


def _resume(ctx: Ctx, *sets: str) -> tuple[list[str], Path, Path]:
    run, ckpt = ctx.resumable_copy()
    path = write_config(ctx.tmp / "resume.yaml", ctx.tiny_cfg(epochs=1))
    args = ["train", str(path), "--out", str(run), "--resume"]
    for s in sets:
        args += ["--set", s]
    return args, run, ckpt


def resume_other_panel(ctx: Ctx) -> Call:
    args, run, ckpt = _resume(ctx, "data.genes.n=10")
    return Call(args, run, [str(ckpt), "gene panel"], keep=set(partial_files(run)))


def resume_other_patch_scale(ctx: Ctx) -> Call:
    cache = ctx.tmp / "cache8"
    args, run, ckpt = _resume(ctx, f"data.cache={cache}", "data.prepare.spot_px=8", "data.prepare.spot_um=40")
    return Call(args, run, [str(ckpt), "patch scale"], keep=set(partial_files(run)))


def resume_finished_run_other_panel(ctx: Ctx) -> Call:
    run = ctx.tmp / "run"
    shutil.copytree(ctx.fixture("trained_run"), run)
    path = write_config(ctx.tmp / "resume.yaml", ctx.tiny_cfg(epochs=1))
    args = ["train", str(path), "--out", str(run), "--resume", "--set", "data.genes.n=10"]
    return Call(args, run, [str(run / "runs" / "fixed" / "hifusion" / "predictions.npz"), "another config"],
                keep=set(partial_files(run)))


def resume_modified_checkpoint(ctx: Ctx) -> Call:
    args, run, ckpt = _resume(ctx)
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    return Call(args, run, [str(ckpt), "SHA-256"], keep=set(partial_files(run)))


def resume_not_a_checkpoint(ctx: Ctx) -> Call:
    args, run, ckpt = _resume(ctx)
    ckpt.write_text("this is not a checkpoint\n")
    ckpt.with_name(ckpt.name + HASH_SUFFIX).unlink()
    return Call(args, run, [str(ckpt), "not a readable hifusion checkpoint"], keep=set(partial_files(run)))


# ------------------------------------------------------------------------------------------------- predict
def _slide(ctx: Ctx) -> Path:
    return ctx.her2st().image


def predict_not_a_checkpoint(ctx: Ctx) -> Call:
    fake = ctx.tmp / "model.ckpt"
    fake.write_bytes(b"PK\x03\x04 definitely not a torch archive")
    out = ctx.tmp / "pred"
    args = ["predict", "--checkpoint", str(fake), "--slide", str(_slide(ctx)), "--out", str(out), "--mpp", "2"]
    return Call(args, out, [str(fake), "not a readable hifusion checkpoint"], subprocess=True)


def predict_modified_checkpoint(ctx: Ctx) -> Call:
    src = last_checkpoint(ctx.fixture("trained_run"))
    ckpt = ctx.tmp / "last.ckpt"
    shutil.copy(src, ckpt)
    shutil.copy(src.with_name(src.name + HASH_SUFFIX), ckpt.with_name(ckpt.name + HASH_SUFFIX))
    data = bytearray(ckpt.read_bytes())
    data[-100] ^= 0x01
    ckpt.write_bytes(bytes(data))
    out = ctx.tmp / "pred"
    args = ["predict", "--checkpoint", str(ckpt), "--slide", str(_slide(ctx)), "--out", str(out), "--mpp", "2"]
    return Call(args, out, [str(ckpt), "SHA-256"])


def predict_missing_slide(ctx: Ctx) -> Call:
    ckpt = last_checkpoint(ctx.fixture("trained_run"))
    slide, out = ctx.tmp / "slide.svs", ctx.tmp / "pred"
    args = ["predict", "--checkpoint", str(ckpt), "--slide", str(slide), "--out", str(out), "--mpp", "2"]
    return Call(args, out, [str(slide), "not found"])


CASES: dict[str, Callable[[Ctx], Call]] = {
    f.__name__: f
    for f in (
        missing_image, corrupt_jpeg, truncated_jpeg, truncated_tiff, image_too_small, coords_10x_too_large,
        no_shared_barcodes, duplicate_barcodes, duplicate_spot_rows, negative_counts, non_integer_counts, nan_counts,
        text_in_counts, zero_spots_selected, h5ad_without_scale, missing_data_root, prepare_out_not_writable,
        config_unknown_key, config_wrong_type, config_not_yaml, cache_missing, panel_gene_missing_in_test,
        train_out_not_writable, resume_other_panel, resume_finished_run_other_panel, resume_other_patch_scale,
        resume_modified_checkpoint, resume_not_a_checkpoint,
    )
}
PREDICT_CASES: dict[str, Callable[[Ctx], Call]] = {
    f.__name__: f for f in (predict_not_a_checkpoint, predict_modified_checkpoint, predict_missing_slide)
}
MESSAGES: dict[str, str] = {}  # case -> the line the user saw (printed at the end of the session with -s)


def _check(name: str, build: Callable[[Ctx], Call], tmp_path: Path, request: pytest.FixtureRequest,
           monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    call = build(Ctx(tmp_path, request))
    res: CliResult = run_subprocess(call.args) if call.subprocess else run_inprocess(call.args, monkeypatch, capsys)
    before = call.keep
    line = assert_clean_error(res, None, *call.needles)
    if call.out is not None:
        new = set(partial_files(call.out)) - before
        assert not new, f"partial output left: {sorted(new)}"
    MESSAGES[name] = line
    print(f"\n[{name}] {line}")  # shown with -s: the exact line a user sees


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_clean_line(name: str, tmp_path: Path, request: pytest.FixtureRequest,
                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _check(name, CASES[name], tmp_path, request, monkeypatch, capsys)


@needs_predict
@pytest.mark.parametrize("name", list(PREDICT_CASES))
def test_bad_predict_input_is_one_clean_line(name: str, tmp_path: Path, request: pytest.FixtureRequest,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    _check(name, PREDICT_CASES[name], tmp_path, request, monkeypatch, capsys)

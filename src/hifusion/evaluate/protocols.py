"""The benchmark: every model on every split of a protocol, scored per test section, in one results folder.

Rules that make the numbers trustworthy are enforced here and in `data.splitdata`: the panel and label statistics
come from training sections; model selection (if any) uses validation carved from training sections; the
mean-profile floor is always in the table; every figure is computed from predictions written to disk.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hifusion import __version__
from hifusion import constants as C
from hifusion.config import Config, DataConfig, ModelConfig
from hifusion.errors import ConfigError
from hifusion.io import atomic_path, atomic_write_text, check_results_folder, make_dir
from hifusion.ranks import is_global_zero, wait_until
from hifusion.recipe import Recipe

MAX_MAP_SECTIONS = 8  # marker-map figures for the first test sections only: one per section does not scale


@dataclass
class BenchmarkResult:
    out: Path
    metrics: pd.DataFrame
    per_gene: pd.DataFrame
    report: Path | None
    seconds: float
    # published papers' scores per (model, split), section `report.POOLED`; metrics.csv and the report hold both
    conventions: pd.DataFrame = field(default_factory=pd.DataFrame)


def ensure_cache(data_cfg: DataConfig, *, progress: bool = True) -> Path:
    """Build (or reuse) the patch cache a config points to; reusing one made with other parameters is an error."""
    cache = Path(data_cfg.cache)
    if data_cfg.prepare is None:
        if not cache.is_dir():
            raise ConfigError("patch cache folder not found; run `hifusion prepare` or add data.prepare", cache)
        return cache
    from hifusion.data.cache.layout import is_done
    from hifusion.data.prepare import dataset_root, prepare_sections
    from hifusion.data.readers import list_sections

    p = data_cfg.prepare
    if not is_global_zero():  # under torchrun / SLURM every rank starts here at once: only rank 0 prepares
        names = list(p.sections) if p.sections else list_sections(p.format, dataset_root(p))
        wait_until(lambda: all(is_done(cache, s) for s in names), "the patch cache", cache)
        return cache
    prepare_sections(p, cache, overwrite=False, progress=progress)
    return cache


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _save_predictions(path: Path, preds: dict[str, np.ndarray]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **preds)


def _load_predictions(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def prediction_adata(data: Any, section: str, pred: np.ndarray, info: dict[str, Any] | None = None) -> Any:
    """Predictions of one section as AnnData with the spatial layout of the source, so scanpy plots it as is: the
    prediction in X and layers['predicted'], the measured label in layers['truth'], provenance in uns['hifusion']."""
    import anndata as ad

    from hifusion.predict.outputs import label_unit, set_prediction

    src = data.adatas[section]
    rows = data.rows[section]
    out = ad.AnnData(obs=src.obs.iloc[rows].copy(), var=pd.DataFrame(index=pd.Index(data.panel, name="gene")))
    mpp = src.uns.get(C.UNS_HIFUSION, {}).get("mpp")
    set_prediction(out, pred, {C.UNS_UNIT: label_unit(data.label), "label": data.label, "section": section,
                               "mpp": None if mpp is None else float(mpp), **(info or {})})
    out.layers[C.LAYER_TRUTH] = data.labels[section].astype(np.float32)
    out.obsm[C.OBSM_SPATIAL] = np.asarray(src.obsm[C.OBSM_SPATIAL])[rows]
    if C.UNS_SPATIAL in src.uns:
        from hifusion.data.cache.lean import spatial_uns

        out.uns[C.UNS_SPATIAL] = spatial_uns(src)  # with the H&E thumbnail, re-read from the cache if dropped
    out.uns["label_transform"] = data.label
    return out


def write_prediction_zarr(adata: Any, path: Path) -> Path:
    """A benchmark prediction as SpatialData: the cache's H&E thumbnail, spots at their diameter, in microns."""
    from hifusion.predict.spatialdata import build_spatialdata, write_spatialdata

    lib = next(iter(adata.uns.get(C.UNS_SPATIAL) or {}), None)
    mpp = adata.uns[C.UNS_HIFUSION].get("mpp")
    if lib is None or mpp is None:
        raise ConfigError("SpatialData output needs the section's image and um/px in the cache; prepare it again",
                          path)
    spatial = adata.uns[C.UNS_SPATIAL][lib]
    scalef = float(spatial["scalefactors"][C.UNS_HIRES_SCALEF])
    diameter_um = float(spatial["scalefactors"][C.UNS_SPOT_DIAMETER]) * float(mpp)
    sdata = build_spatialdata(adata, spatial["images"][C.UNS_HIRES], float(mpp) / scalef,
                              np.asarray(adata.obsm[C.OBSM_SPATIAL]) * float(mpp), diameter_um)
    return write_spatialdata(sdata, path)


def _join_variants(variant_preds: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One flat mapping for the predictions file: `<section>` for the main row, `<section>@<variant>` for others."""
    return {(s if not v else f"{s}@{v}"): p for v, preds in variant_preds.items() for s, p in preds.items()}


def _split_variants(flat: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {"": {}}
    for key, p in flat.items():
        s, _, v = key.partition("@")
        out.setdefault(v, {})[s] = p
    return out


def _fit_members(m: ModelConfig, train_cfg: Any, data: Any, mdir: Path, resume: bool,
                 variants: dict[str, Recipe]) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]] | None:
    """Fit a model (or, with `train.ensemble` = n > 1, n seeds of it in `seed<S>/` folders) and predict its test
    sections under every test-time variant; an ensemble averages its members' predictions. None on ranks > 0."""
    from hifusion.train.fit import fit_and_predict, predict_variants, save_recipe

    n = train_cfg.ensemble
    members: list[dict[str, dict[str, np.ndarray]]] = []
    info: dict[str, Any] = {"seconds": 0.0, "members": []}
    for i in range(n):
        tcfg = train_cfg if n == 1 else train_cfg.model_copy(update={"seed": train_cfg.seed + i})
        res = fit_and_predict(m, tcfg, data, mdir if n == 1 else mdir / f"seed{tcfg.seed}", resume=resume)
        if res.global_rank != 0 or not is_global_zero():
            return None
        preds = {"": res.predictions}
        test_time = res.info.get("test_time", True)  # False: a model with nothing to adapt (e.g. the mean profile)
        if res.checkpoint is not None and test_time:
            save_recipe(Path(res.checkpoint).parent, variants[""], data)
        if test_time and res.predict is not None and not all(v.plain for v in variants.values()):
            preds = predict_variants(res, data, variants)
        if res.flattering is not None:  # train.select_on_test: the same run's test-selected epoch, main recipe
            fl = res.flattering
            plain = variants[""].plain or not test_time
            main = {"": variants[""]}
            preds[C.FLATTERING_VARIANT] = fl.predictions if plain else predict_variants(fl, data, main)[""]
            if not plain:  # also plain, as the reference code scores it
                preds[C.PLAIN_FLATTERING_VARIANT] = fl.predictions
            res.info["flattering"] = {k: v for k, v in fl.info.items() if k != "checkpoint_used"}
        members.append(preds)
        if n > 1:  # each member's own predictions stay beside its checkpoint
            _save_predictions(mdir / f"seed{tcfg.seed}" / C.MEMBER_NPZ, _join_variants(preds))
        info["seconds"] += res.seconds
        info["members"].append({"seed": tcfg.seed, "checkpoint": str(res.checkpoint) if res.checkpoint else None,
                                **res.info})
    if n == 1:
        info = {"seconds": info["seconds"], "checkpoint": info["members"][0]["checkpoint"],
                **{k: v for k, v in info["members"][0].items() if k not in ("seed", "checkpoint")}}
    avg = {v: {s: np.mean([mem[v][s] for mem in members], axis=0).astype(np.float32) for s in members[0][v]}
           for v in members[0]}
    return avg, info


def _score(out: Path, data: Any, split: str, section: str, label: str, pred: np.ndarray, got: _Collected,
           per_split: bool = False, info: dict[str, Any] | None = None, spatialdata: bool = False) -> None:
    """Score one model's predictions of one test section (rows into `got`); write them as AnnData beside the tables
    (`predictions/<model>/<section>.h5ad`, or `.../<split>/<section>.h5ad` when the protocol tests the section in
    several splits, as the rotation does)."""
    from hifusion.metrics import per_gene_metrics, section_metrics

    truth = data.labels[section]
    sm = section_metrics(pred, truth, hvg_top50_idx=data.top50)
    got.metric_rows.extend({"model": label, "split": split, "section": section, "metric": k, "value": float(v)}
                           for k, v in sm.items())
    g = per_gene_metrics(pred, truth, data.panel)
    g.insert(0, "section", section)
    g.insert(0, "split", split)
    g.insert(0, "model", label)
    got.gene_frames.append(g)
    pdir = out / C.PREDICTIONS_DIR / label / (split if per_split else "")
    pdir.mkdir(parents=True, exist_ok=True)
    adata = prediction_adata(data, section, pred, {"display": label, "split": split, **(info or {})})
    with atomic_path(pdir / f"{section}{C.H5AD_SUFFIX}") as tmp:
        adata.write_h5ad(tmp)
    if spatialdata:
        write_prediction_zarr(adata, pdir / f"{section}{C.ZARR_SUFFIX}")


def _most_expressed(data: Any) -> np.ndarray:
    """The 50 genes with the highest mean training label (TRIPLEX's PCC(M) subset), chosen once per split."""
    return np.argsort(-data.train_labels().mean(0), kind="stable")[: min(50, len(data.panel))]


def _score_conventions(data: Any, split: Any, label: str, preds: dict[str, np.ndarray], heg: np.ndarray,
                       metric_rows: list[dict[str, Any]]) -> None:
    """Published papers' scores of one model on one split's test sections together (`metrics.convention_metrics`),
    as rows of section `report.POOLED` (the fold, not a section). Gene subsets are chosen on training labels."""
    from hifusion.evaluate.report import POOLED
    from hifusion.metrics import convention_metrics

    cm = convention_metrics([preds[s] for s in split.test], [data.labels[s] for s in split.test],
                            heg_idx=heg, hvg_idx=data.top50 if len(data.top50) else None)
    metric_rows += [{"model": label, "split": split.name, "section": POOLED, "metric": key, "value": float(v)}
                    for key, v in cm.items()]


@dataclass
class _Collected:
    """Everything a benchmark gathers over splits and models before it writes tables, figures and the report."""

    metric_rows: list[dict[str, Any]] = field(default_factory=list)
    convention_rows: list[dict[str, Any]] = field(default_factory=list)
    gene_frames: list[pd.DataFrame] = field(default_factory=list)
    curves: dict[str, pd.DataFrame] = field(default_factory=dict)
    timings: list[dict[str, Any]] = field(default_factory=list)
    panels: dict[str, list[str]] = field(default_factory=dict)
    map_inputs: list[tuple[Any, ...]] = field(default_factory=list)
    pretrained: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> encoder -> what it saw


def _make_splits(cfg: Config, cache: Path) -> list[Any]:
    """The protocol's splits over the cache's patients, each with its validation carved from training sections."""
    from hifusion.data.cache.reader import cache_patients
    from hifusion.data.splits import make_splits, with_validation_sections

    patients = cache_patients(cache)
    p = cfg.protocol
    splits = make_splits(p.name, patients, train=p.train, test=p.test, folds=p.folds, k=p.k,
                         only_patients=p.patients)
    return [with_validation_sections(s, cfg.train.val, patients) for s in splits]


def _resumed(mdir: Path, split: Any, data: Any) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """A finished model's predictions and info, checked against this run's panel and spots."""
    variant_preds = _split_variants(_load_predictions(mdir / C.PREDICTIONS_NPZ))
    info = json.loads((mdir / C.DONE_JSON).read_text())
    stale = [s for s in split.test if np.shape(variant_preds[""].get(s)) != (len(data.rows[s]), len(data.panel))]
    if stale:
        raise ConfigError(f"cannot resume: these predictions of {stale[0]} were made with another config "
                          "(gene panel or spots); use the original config or a new --out", mdir / C.PREDICTIONS_NPZ)
    return variant_preds, info


def _model_predictions(cfg: Config, m: ModelConfig, split: Any, mdata: Any, mdir: Path, resume: bool,
                       writer: bool) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]] | None:
    """One model's test predictions on one split: read back when it finished before (`resume`), else fitted now.
    None on ranks > 0 (predictions, files and scores are rank 0's job)."""
    if resume and (mdir / C.DONE_JSON).exists():
        return _resumed(mdir, split, mdata) if writer else None
    print(f"[hifusion] {split.name}: fitting {m.display} on {', '.join(split.train)}", file=sys.stderr)
    fitted = _fit_members(m, cfg.train_for(m), mdata, mdir, resume, cfg.recipes)  # "": each model's main row
    if fitted is not None:
        _save_predictions(mdir / C.PREDICTIONS_NPZ, _join_variants(fitted[0]))
        atomic_write_text(mdir / C.DONE_JSON, json.dumps(fitted[1], indent=2))
    return fitted


def _pretrain(cfg: Config, cache: Path, out: Path, split: Any, models: list[ModelConfig], writer: bool,
              got: _Collected) -> dict[str, Path]:
    """The split's pretrained encoders for the models that ask for them (rank 0 pretrains, other ranks wait)."""
    from hifusion.pretrain.folds import check_requests, pretrain_split, with_normalise
    from hifusion.pretrain.loop import read_pretrain_meta

    encoders = check_requests(cfg.pretrain, models)
    if not encoders or cfg.pretrain is None:
        return {}
    split_dir = out / C.RUNS_DIR / split.name
    if writer:
        weights = pretrain_split(with_normalise(cfg.pretrain, cfg.data.normalise), cache, split_dir, split, encoders)
    else:
        weights = {e: split_dir / C.PRETRAIN_DIR / e / C.PRETRAIN_WEIGHTS for e in encoders}
        wait_until(lambda: all(p.is_file() for p in weights.values()), "the pretrained encoders", split_dir)
    keep = ("sources", "tiles", "epochs", "steps", "seconds", "final_loss")
    got.pretrained[split.name] = {e: {"path": str(p), **{k: v for k, v in read_pretrain_meta(p).items() if k in keep}}
                                  for e, p in weights.items()}
    return weights


def _run_split(cfg: Config, cache: Path, out: Path, split: Any, models: list[ModelConfig], resume: bool,
               writer: bool, region_factors: dict[str, float] | None, got: _Collected,
               repeated: frozenset[str] = frozenset()) -> None:
    """Fit (or read back) and score every model on one split; `repeated`: sections other splits test too."""
    from hifusion.data.splitdata import load_split
    from hifusion.predict.outputs import provenance
    from hifusion.pretrain.folds import with_pretrained

    data = load_split(cache, split, cfg.data, cfg.train.val, seed=cfg.train.seed)
    got.panels[split.name] = data.panel
    split_preds: dict[str, dict[str, np.ndarray]] = {s: {} for s in split.test}
    by_factor: dict[float, Any] = {}
    weights = _pretrain(cfg, cache, out, split, models, writer, got)
    heg = _most_expressed(data)
    for m in models:
        factor = (region_factors or {}).get(m.display)
        mdata = data
        if factor is not None:  # same panel and labels (training sections decide them); other region crop
            if factor not in by_factor:
                by_factor[factor] = load_split(cache, split, cfg.data, cfg.train.val, seed=cfg.train.seed,
                                               region_factor=factor)
            mdata = by_factor[factor]
        mdir = out / C.RUNS_DIR / split.name / m.display
        fitted = _model_predictions(cfg, with_pretrained(m, weights) if weights else m, split, mdata, mdir, resume,
                                    writer)
        if fitted is None:
            continue
        variant_preds, info = fitted
        if (mdir / C.RUN_METRICS).exists():
            got.curves[f"{m.display} ({split.name})"] = pd.read_csv(mdir / C.RUN_METRICS)
        got.timings.append({"model": m.display, "split": split.name, "seconds": info.get("seconds")})
        for vname, preds in variant_preds.items():
            label = m.display if not vname else f"{m.display} [{vname}]"
            # the test-selected row is scored under the main recipe (it is the same model at another epoch), and plain
            own = {"": cfg.adapt, C.FLATTERING_VARIANT: cfg.adapt, C.PLAIN_FLATTERING_VARIANT: type(cfg.adapt)()}
            adapt = own[vname] if vname in own else cfg.adapt_variants[vname]
            prov = provenance(m.name, data.label, info.get("checkpoint"), adapt.model_dump(mode="json"))
            for s in split.test:
                _score(out, data, split.name, s, label, preds[s], got, per_split=s in repeated, info=prov,
                       spatialdata=cfg.prediction_format == "spatialdata")
                if not vname:
                    split_preds[s][label] = preds[s]
            _score_conventions(data, split, label, preds, heg, got.convention_rows)
    for s in split.test[: max(0, MAX_MAP_SECTIONS - len(got.map_inputs))]:  # what a map needs, not the split
        name = f"{s}_{split.name}" if s in repeated else s
        got.map_inputs.append((s, name, data.adatas[s], data.rows[s], data.labels[s], split_preds[s], data.panel,
                               data.label))


def _run_meta(cfg: Config, models: list[ModelConfig], splits: list[Any], got: _Collected, *, title: str,
              command: str | None, region_factors: dict[str, float] | None, seconds: float) -> dict[str, Any]:
    """What `run.json` records: the command, the resolved config, splits, panels, timings and the environment."""
    return {
        "title": title,
        "command": command or " ".join(sys.argv),
        "config": cfg.model_dump(mode="json"),
        "protocol": cfg.protocol.name,
        "splits": [{"name": s.name, "train": s.train, "val": s.val, "test": s.test} for s in splits],
        "gene_panels": got.panels,
        "label_transform": cfg.data.label,
        "seeds": {"train": cfg.train.seed},
        "models": [m.model_dump(mode="json") for m in models],
        "timings": got.timings,
        **({"region_factors": region_factors} if region_factors else {}),
        **({"pretrained": got.pretrained} if got.pretrained else {}),
        "seconds": seconds,
        "package_version": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run_benchmark(
    cfg: Config,
    out: Path,
    *,
    models: list[ModelConfig] | None = None,
    resume: bool = False,
    command: str | None = None,
    figures: bool = True,
    title: str = "Benchmark",
    region_factors: dict[str, float] | None = None,
) -> BenchmarkResult:
    """Train and score `models` (default: the config's, plus the mean profile) on every split of the protocol.

    `region_factors` maps a model's display name to its own neighbour-view factor (centre-cropped from the cache),
    so an ablation over the region size shares one results folder, gene panel and report with the other variants.
    """
    t0 = time.perf_counter()
    models = models or cfg.benchmark_models()
    out = Path(out)
    writer = is_global_zero()  # other ranks of a DDP run (relaunched with the same command) train and write nothing
    if writer:
        check_results_folder(out, resume)
        make_dir(out)
        atomic_write_text(out / C.RUN_CONFIG, cfg.to_yaml())
    from hifusion.pretrain.folds import check_requests

    check_requests(cfg.pretrain, models)  # a model asking for an encoder nobody pretrains fails before any work
    cache = ensure_cache(cfg.data)
    splits = _make_splits(cfg, cache)
    got = _Collected()
    tested = Counter(s for split in splits for s in split.test)
    repeated = frozenset(s for s, n in tested.items() if n > 1)
    for split in splits:
        _run_split(cfg, cache, out, split, models, resume, writer, region_factors, got, repeated)
    metrics, conventions = pd.DataFrame(got.metric_rows), pd.DataFrame(got.convention_rows)
    per_gene = pd.concat(got.gene_frames, ignore_index=True) if got.gene_frames else pd.DataFrame()
    if not writer:
        return BenchmarkResult(out=out, metrics=metrics, per_gene=per_gene, report=None,
                               seconds=time.perf_counter() - t0, conventions=conventions)
    from hifusion.evaluate.report import write_report, write_tables

    table = pd.concat([metrics, conventions], ignore_index=True)  # metrics.csv: sections, then folds
    write_tables(out, table, per_gene)
    fig_paths = _figures(out, got.map_inputs, got.curves) if figures else {}
    reference = next((m.display for m in models if m.name == "hifusion"), models[0].display)
    seconds = time.perf_counter() - t0
    run_meta = _run_meta(cfg, models, splits, got, title=title, command=command, region_factors=region_factors,
                         seconds=seconds)
    atomic_write_text(out / C.RUN_JSON, json.dumps(run_meta, indent=2, default=str))
    report = write_report(out, table, per_gene, reference=reference, figures=fig_paths, meta=run_meta)
    return BenchmarkResult(out=out, metrics=metrics, per_gene=per_gene, report=report, seconds=seconds,
                           conventions=conventions)


def _figures(out: Path, map_inputs: list[tuple[Any, ...]],
             curves: dict[str, pd.DataFrame]) -> dict[str, list[Path]]:
    from hifusion.data.cache.lean import spatial_uns
    from hifusion.plots import plot_marker_maps, plot_training_curves

    figs: dict[str, list[Path]] = {"maps": [], "curves": []}
    fig_dir = out.resolve() / C.FIGURES_DIR  # absolute: the report links them relative to `out`, whatever the cwd
    fig_dir.mkdir(exist_ok=True)
    for s, name, src, rows, labels, preds, panel, label in map_inputs:
        spatial = (spatial_uns(src) or {}).get(s, {})
        thumb = spatial.get("images", {}).get(C.UNS_HIRES)
        sf = spatial.get("scalefactors", {})
        figs["maps"].append(plot_marker_maps(
            fig_dir / C.MAPS_PNG.format(name=name), thumb, float(sf.get(C.UNS_HIRES_SCALEF, 1.0)),
            np.asarray(src.obsm[C.OBSM_SPATIAL])[rows], labels, preds,
            genes=panel, panel=list(C.MARKER_GENES),
            spot_diameter_px=float(sf.get(C.UNS_SPOT_DIAMETER, 100.0)), label=label,
        ))
    if curves:
        figs["curves"].append(plot_training_curves(fig_dir / C.TRAINING_CURVES_PNG, curves))
    return figs

"""The paper's ablations as one command: HiFusion variants that differ from the config's model in one option each.

Every variant runs through the benchmark (`protocols.run_benchmark`): same protocol, gene panel, metrics and
honesty rules, one results folder. The spec is a list of (option, values) (`Config.ablation`, default
`default_axes`); a value equal to the default is not a new variant, so the default is trained once and shared.
The neighbour-view sizes are centre crops of one cache prepared at the largest region factor.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hifusion import constants as C
from hifusion import metrics as M
from hifusion.config import AblationAxis, Config, ModelConfig, with_floor
from hifusion.errors import ConfigError
from hifusion.evaluate.report import fmt_p, fmt_value, md_table
from hifusion.io import atomic_write_text, check_results_folder, make_dir

REGION_FACTOR = "region_factor"
DEFAULT_LABEL = "default"
DEFAULT_TOKENS = [1, 2, 3, 4]
DEFAULT_REGION_FACTORS = [1.0, 1.5, 2.0, 3.0]
LINE_AXES = {"tokens": "spot tokens (t x t)", REGION_FACTOR: "neighbour view side / spot side"}
_TABLE = (
    (M.MSE, "MSE"),
    (M.MAE, "MAE"),
    (M.PCC_SPOT, "PCC-spot"),
    (M.PCC_GENE, "PCC-gene"),
    (M.PCC_GENE_TOP50, "PCC-gene top-50"),
)


@dataclass
class Variant:
    """One HiFusion variant: its report label, the option it changes (None for the default) and how it is built."""

    label: str
    option: str | None
    value: Any
    model: ModelConfig
    region_factor: float
    stands_for: list[tuple[str, Any]] = field(default_factory=list)  # (option, value) pairs this run answers


def hifusion_model(cfg: Config) -> ModelConfig:
    """The HiFusion model the ablation starts from: the config's `model`, else the first hifusion in `models`."""
    if cfg.model.name == "hifusion":
        return cfg.model
    for m in cfg.models or []:
        if m.name == "hifusion":
            return m
    raise ConfigError("ablate needs a HiFusion model in the config (model.name: hifusion)")


def model_defaults() -> dict[str, Any]:
    """HiFusion's builder defaults, so a variant's options can be compared with an omitted (default) option."""
    import inspect

    from hifusion.models import model_entry

    return {
        k: p.default
        for k, p in model_entry("hifusion").parameters().items()
        if p.default is not inspect.Parameter.empty
    }


def _norm(value: Any) -> Any:
    """Comparable, JSON-able form of an option value (tuples -> lists, 2.0 -> 2 for region factors stays float)."""
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def default_axes(cfg: Config) -> list[AblationAxis]:
    """The paper's ablations: token grid t, neighbour size, HISM levels (prefixes of the default), alignment, CCF."""
    opts = {**model_defaults(), **hifusion_model(cfg).options}
    levels = [int(k) for k in opts.get("levels", (1, 4, 49))]
    return [
        AblationAxis(option="tokens", values=list(DEFAULT_TOKENS)),
        AblationAxis(option=REGION_FACTOR, values=list(DEFAULT_REGION_FACTORS)),
        AblationAxis(option="levels", values=[levels[: i + 1] for i in range(len(levels))]),
        AblationAxis(option="use_alignment", values=[True, False]),
        AblationAxis(option="use_ccf", values=[True, False]),
    ]


def default_region_factor(cfg: Config) -> float:
    """The neighbour factor the config trains with: data.region_factor, else the cache's (prepare or cache.json)."""
    if cfg.data.region_factor is not None:
        return float(cfg.data.region_factor)
    if cfg.data.prepare is not None:
        return float(cfg.data.prepare.region_factor)
    from hifusion.data.cache.layout import read_manifest

    manifest = read_manifest(cfg.data.cache) or {}
    if "region_factor" not in manifest:
        raise ConfigError("cannot tell the cache's region factor; set data.region_factor", cfg.data.cache)
    return float(manifest["region_factor"])


def _label(option: str, value: Any) -> str:
    """Short folder-safe label: tokens=3, region=1.5x, levels=1-4, alignment=off."""
    if option == REGION_FACTOR:
        return f"region={float(value):g}x"
    name = option[4:] if option.startswith("use_") else option
    if isinstance(value, bool):
        return f"{name}={'on' if value else 'off'}"
    if isinstance(value, (list, tuple)):
        return f"{name}=" + "-".join(str(v) for v in value)
    return f"{name}={value}"


def select_axes(axes: list[AblationAxis], only: list[str] | None) -> list[AblationAxis]:
    """Keep the axes named in `only` (CLI --only; 'region' and 'alignment'/'ccf' short names accepted)."""
    if not only:
        return axes
    alias = {
        "region": REGION_FACTOR,
        "neighbour": REGION_FACTOR,
        "alignment": "use_alignment",
        "ccf": "use_ccf",
        "align": "use_alignment",
    }
    wanted = [alias.get(o, o) for o in only]
    known = [a.option for a in axes]
    bad = [o for o in wanted if o not in known]
    if bad:
        raise ConfigError(f"--only: unknown ablation option(s) {bad}; the spec has {known}")
    return [a for a in axes if a.option in wanted]


def make_variants(cfg: Config, axes: list[AblationAxis] | None = None) -> list[Variant]:
    """The default first, then one variant per (option, value) that differs from the default in that option only."""
    base = hifusion_model(cfg)
    defaults = model_defaults()
    allowed = set(defaults) - {"n_genes"}
    base_opts = {k: _norm(v) for k, v in {**defaults, **base.options}.items() if k in allowed}
    base_factor = default_region_factor(cfg)
    default = Variant(
        DEFAULT_LABEL,
        None,
        None,
        ModelConfig(name="hifusion", label=DEFAULT_LABEL, options=dict(base.options), train=base.train),
        base_factor,
    )
    out = [default]
    seen = {DEFAULT_LABEL}
    for axis in axes if axes is not None else (cfg.ablation or default_axes(cfg)):
        if axis.option != REGION_FACTOR and axis.option not in allowed:
            raise ConfigError(
                f"ablation option '{axis.option}' is neither region_factor nor a HiFusion option "
                f"({', '.join(sorted(allowed))})"
            )
        for raw in axis.values:
            value = _norm(raw)
            if axis.option == REGION_FACTOR:
                value = float(value)
                same = math.isclose(value, base_factor)
            else:
                same = value == base_opts.get(axis.option)
            if same:
                default.stands_for.append((axis.option, value))
                continue
            label = _label(axis.option, value)
            if label in seen:
                continue
            seen.add(label)
            opts = dict(base.options)
            factor = base_factor
            if axis.option == REGION_FACTOR:
                factor = value
            else:
                opts[axis.option] = value
            out.append(
                Variant(
                    label,
                    axis.option,
                    value,
                    ModelConfig(name="hifusion", label=label, options=opts, train=base.train),
                    factor,
                    [(axis.option, value)],
                )
            )
    return out


def ablation_config(cfg: Config, variants: list[Variant]) -> Config:
    """The config the runs use: a cache whose region patches cover the largest factor, cropped per variant.

    A config that prepares its cache gets a sibling folder `<cache>_rf<F>` prepared at factor F when its own is
    smaller; a bare cache folder must already hold region patches large enough.
    """
    need = max(v.region_factor for v in variants)
    base_factor = default_region_factor(cfg)
    new = cfg.model_copy(deep=True)
    new.data.region_factor = base_factor
    if cfg.data.prepare is not None:
        if cfg.data.prepare.region_factor < need:
            new.data.prepare.region_factor = need  # type: ignore[union-attr]
            cache = Path(cfg.data.cache)
            new.data.cache = cache.with_name(f"{cache.name}_rf{need:g}")
        return new
    from hifusion.data.cache.layout import read_manifest

    have = float((read_manifest(cfg.data.cache) or {}).get("region_factor", 0.0))
    if have < need:
        raise ConfigError(
            f"the ablation needs region factor {need:g} but the cache holds {have:g}; prepare a cache "
            f"with --region-factor {need:g} (or add data.prepare to the config)",
            cfg.data.cache,
        )
    return new


@dataclass
class AblationResult:
    out: Path
    table: pd.DataFrame
    report: Path
    figures: list[Path]
    seconds: float


def _ablation_spec(axes: list[AblationAxis], seeds: list[int], variants: list[Variant]) -> dict[str, Any]:
    """What `ablation.json` records: the axes tried, the seeds and every variant's options."""
    return {
        "axes": [{"option": a.option, "values": [_norm(v) for v in a.values]} for a in axes],
        "seeds": seeds,
        "variants": [
            {
                "label": v.label,
                "option": v.option,
                "value": v.value,
                "options": v.model.options,
                "region_factor": v.region_factor,
                "stands_for": v.stands_for,
            }
            for v in variants
        ],
    }


def run_ablation(
    cfg: Config,
    out: Path,
    *,
    resume: bool = False,
    only: list[str] | None = None,
    command: str | None = None,
    floor: bool = True,
    seeds: list[int] | None = None,
) -> AblationResult:
    """Train every variant (and the mean-profile floor) under the config's protocol; write ablation.md and plots.

    With several `seeds` every variant is trained once per seed (`seed<S>/`, each a full benchmark folder): one
    seed cannot tell a variant's effect from training noise. A seed sets the initial weights, the batch order, the
    augmentation and the position of a spatially blocked validation band.
    """
    from hifusion.evaluate.protocols import run_benchmark

    out = Path(out)
    check_results_folder(out, resume)
    seeds = list(dict.fromkeys(seeds)) if seeds else [cfg.train.seed]
    command = command or " ".join(sys.argv)
    axes = select_axes(list(cfg.ablation or default_axes(cfg)), only)
    variants = make_variants(cfg, axes)
    run_cfg = ablation_config(cfg, variants)
    models = with_floor([v.model for v in variants]) if floor else [v.model for v in variants]
    factors = {v.label: v.region_factor for v in variants}
    print(
        f"[hifusion] ablation: {len(variants)} HiFusion variants ({', '.join(factors)}) x seeds {seeds}",
        file=sys.stderr,
    )
    metrics, per_gene, seconds = [], [], 0.0
    for seed in seeds:
        seed_cfg = run_cfg.model_copy(deep=True)
        seed_cfg.train.seed = seed
        res = run_benchmark(
            seed_cfg,
            out if len(seeds) == 1 else out / f"seed{seed}",
            models=models,
            resume=resume,
            command=command,
            figures=False,
            title="Ablation (benchmark tables)",
            region_factors=factors,
        )
        metrics.append(res.metrics.assign(seed=seed))
        per_gene.append(res.per_gene.assign(seed=seed))
        seconds += res.seconds
    all_metrics, all_per_gene = pd.concat(metrics, ignore_index=True), pd.concat(per_gene, ignore_index=True)
    if len(seeds) > 1:
        atomic_write_text(out / C.RUN_METRICS, all_metrics.to_csv(index=False))
        atomic_write_text(out / C.PER_GENE_CSV, all_per_gene.to_csv(index=False))
    table = ablation_table(all_metrics, all_per_gene, variants, axes)
    make_dir(out / C.FIGURES_DIR)
    figs = ablation_figures(out / C.FIGURES_DIR, table, variants, axes)
    atomic_write_text(out / C.ABLATION_CSV, table.to_csv(index=False))
    atomic_write_text(out / C.ABLATION_JSON, json.dumps(_ablation_spec(axes, seeds, variants), indent=2, default=str))
    report = write_ablation_report(
        out, table, variants, axes, figs, command=command, seconds=seconds, seeds=seeds
    )
    return AblationResult(out=out, table=table, report=report, figures=figs, seconds=seconds)


def _entries(variants: list[Variant], axes: list[AblationAxis] | None) -> list[tuple[str | None, Any, str]]:
    """Table rows in reading order: the default, then each axis's values in spec order (the default in its place)."""
    default = variants[0]
    runs = {(v.option, json.dumps(v.value)): v.label for v in variants[1:]}
    runs.update({(o, json.dumps(val)): DEFAULT_LABEL for o, val in default.stands_for})
    entries: list[tuple[str | None, Any, str]] = [(None, None, DEFAULT_LABEL)]
    pairs = [(a.option, _norm(x)) for a in axes for x in a.values] if axes else []
    pairs += [(v.option, v.value) for v in variants[1:]]
    for option, raw in pairs:
        value = float(raw) if option == REGION_FACTOR else raw
        label = runs.get((option, json.dumps(value)))
        if label is not None and (option, value, label) not in entries:
            entries.append((option, value, label))
    return entries


def ablation_table(
    metrics: pd.DataFrame, per_gene: pd.DataFrame, variants: list[Variant], axes: list[AblationAxis] | None = None
) -> pd.DataFrame:
    """One row per (axis, value) incl. the default on every axis: mean/std over test sections, Wilcoxon over genes.

    Several seeds (a `seed` column): a section's score is first averaged over seeds, and `<metric>_seed_std` is the
    spread over seeds of the mean over sections (NaN with one seed).
    """
    from hifusion.stats import compare_models

    wide = metrics.pivot_table(
        index=["model", "split", "section"], columns="metric", values="value", aggfunc="mean", sort=False
    )
    n_seeds = int(metrics["seed"].nunique()) if "seed" in metrics.columns else 1
    by_seed = (
        metrics.groupby(["model", "seed", "metric"], sort=False)["value"].mean().unstack("metric")
        if n_seeds > 1
        else None
    )
    tests = {}
    for metric in ("pcc", "mse"):
        t = compare_models(per_gene, reference=DEFAULT_LABEL, by="gene", metric=metric)
        for _, r in t.iterrows():
            tests[(r["model"], metric)] = (float(r["median_diff"]), float(r["p_value"]), int(r["n"]))
    rows = []
    entries = _entries(variants, axes)
    models = set(wide.index.get_level_values("model"))
    entries += [(None, None, m) for m in sorted(models) if m not in {v.label for v in variants}]
    for option, value, model in entries:
        if model not in models:
            continue
        sub = wide.xs(model, level="model")
        row: dict[str, Any] = {
            "option": option or "",
            "value": json.dumps(value) if option else "",
            "model": model,
            "is_default": model == DEFAULT_LABEL,
            "n_sections": int(len(sub)),
            "n_seeds": n_seeds,
        }
        for key, _ in _TABLE:
            v = sub[key].dropna().to_numpy(np.float64) if key in sub.columns else np.empty(0)
            row[f"{key}_mean"] = float(v.mean()) if v.size else np.nan
            row[f"{key}_std"] = float(v.std()) if v.size else np.nan
            spread = np.nan
            if by_seed is not None and key in by_seed.columns:
                s = by_seed.xs(model, level="model")[key].dropna().to_numpy(np.float64)
                spread = float(s.std()) if s.size > 1 else np.nan
            row[f"{key}_seed_std"] = spread
        for metric in ("pcc", "mse"):
            d, p, n = tests.get((model, metric), (0.0, np.nan, 0)) if model != DEFAULT_LABEL else (0.0, np.nan, 0)
            row[f"{metric}_gene_delta"], row[f"{metric}_gene_p"], row["n_genes_tested"] = d, p, n
        rows.append(row)
    return pd.DataFrame(rows)


def write_ablation_report(
    out: Path,
    table: pd.DataFrame,
    variants: list[Variant],
    axes: list[AblationAxis],
    figures: list[Path],
    *,
    command: str,
    seconds: float,
    seeds: list[int] | None = None,
) -> Path:
    """`ablation.md`: what each variant changes, the variant x metric table, the paired tests and the plots."""
    default = variants[0]
    seeds = seeds or []
    multi = len(seeds) > 1
    opts = ", ".join(f"{k}={json.dumps(v)}" for k, v in default.model.options.items()) or "(builder defaults)"
    lines = [
        "# HiFusion ablation",
        "",
        f"Default variant: HiFusion with {opts}, region factor {default.region_factor:g}. Every other row changes "
        "exactly one option; values equal to the default share the default's run. Scores: mean ± std over test "
        "sections (ddof=0). Δ and p: paired two-sided Wilcoxon signed-rank test against the default over genes "
        "(a gene's value is its mean over test sections; Δ = median of variant − default).",
        "",
        "Axes: " + "; ".join(f"{a.option} ∈ {json.dumps([_norm(v) for v in a.values])}" for a in axes),
        "",
    ]
    if multi:
        lines += [
            f"Seeds: {', '.join(map(str, seeds))} (one full run per variant and seed, in `seed<S>/`). A section's "
            "score is averaged over seeds first; the seed SD columns are the spread over seeds of the mean over "
            "test sections (ddof=0): a difference from the default smaller than that is training noise, however "
            "small the gene-level p.",
            "",
        ]
    else:
        lines += [
            "One seed: the gene-level p-values do not include training noise (initial weights, batch order); "
            "repeat with `--seeds 0,1,2` before reading small differences.",
            "",
        ]
    header = ["Option", "Value", "Run", *(label for _, label in _TABLE), "Δ PCC-gene (p)", "Δ MSE (p)"]
    if multi:
        header += ["seed SD PCC-gene", "seed SD MSE"]
    body = []
    for _, r in table.iterrows():
        cells = [
            r["option"] or "-",
            r["value"] or "-",
            r["model"] + (" (floor)" if r["model"] == C.MEAN_PROFILE else ""),
        ]
        cells += [f"{fmt_value(r[f'{k}_mean'])} ± {fmt_value(r[f'{k}_std'])}" for k, _ in _TABLE]
        for metric in ("pcc", "mse"):
            if r["is_default"]:
                cells.append("reference")
            else:
                cells.append(f"{r[f'{metric}_gene_delta']:+.4f} ({fmt_p(r[f'{metric}_gene_p'], na='-')})")
        if multi:
            cells += [fmt_value(r[f"{M.PCC_GENE}_seed_std"]), fmt_value(r[f"{M.MSE}_seed_std"])]
        body.append(cells)
    lines += md_table(header, body)
    lines += ["", "Full benchmark tables (per section, marker genes, tests over sections): [report.md](report.md).", ""]
    if figures:
        lines += ["## Figures", ""]
        for p in figures:
            lines += [f"![{p.stem}](figures/{p.name})", ""]
    lines += [f"Run time: {seconds / 60:.1f} min.", "", "Command:", "", "```", command, "```"]
    path = out / C.ABLATION_MD
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def ablation_figures(
    fig_dir: Path, table: pd.DataFrame, variants: list[Variant], axes: list[AblationAxis]
) -> list[Path]:
    """Line plots of PCC-gene and MSE against token count (Figure 2) and neighbour size (Figure 4)."""
    from hifusion.plots import plot_ablation_lines

    figs = []
    for axis in axes:
        if axis.option not in LINE_AXES:
            continue
        sub = table[table["option"] == axis.option]
        if sub.empty:
            continue
        x = np.array([float(json.loads(v)) for v in sub["value"]])
        if axis.option == "tokens":
            x = x * x  # number of spot tokens, t x t
        order = np.argsort(x)
        series = {
            label: (sub[f"{key}_mean"].to_numpy()[order], sub[f"{key}_std"].to_numpy()[order])
            for key, label in ((M.PCC_GENE, "PCC-gene"), (M.MSE, "MSE"))
        }
        xlabel = "number of spot tokens (t x t)" if axis.option == "tokens" else LINE_AXES[axis.option]
        figs.append(
            plot_ablation_lines(
                fig_dir / C.ABLATION_PNG.format(option=axis.option),
                x[order],
                series,
                xlabel=xlabel,
                title=f"HiFusion: {axis.option}",
            )
        )
    return figs

"""Command line: `hifusion prepare | train | benchmark | demo | predict | ...`.

Heavy libraries are imported inside the commands so that `hifusion --help` answers at once. Problems with the
user's input end with one line on stderr naming the file and the problem, and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from hifusion import constants as C
from hifusion.errors import HifusionError

app = typer.Typer(
    name="hifusion",
    help="Predict spatial gene expression from H&E histology (HiFusion, AAAI 2026) and benchmark it honestly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _parse_mapping(items: list[str] | None, option: str) -> dict[str, float]:
    """`--mpp C2=0.69 --mpp C3=0.69` -> {'C2': 0.69, 'C3': 0.69}."""
    out: dict[str, float] = {}
    for item in items or []:
        for part in item.split(","):
            if "=" not in part:
                raise HifusionError(f"{option} expects SECTION=VALUE, got '{part}'")
            key, value = part.split("=", 1)
            try:
                out[key.strip()] = float(value)
            except ValueError as exc:
                raise HifusionError(f"{option} {key}: '{value}' is not a number") from exc
    return out


def _parse_paths(items: list[str] | None, option: str) -> dict[str, Path]:
    """`--image C2=/data/c2.tif --image C3=/data/c3.tif` -> {'C2': Path(...), 'C3': Path(...)} (paths keep commas)."""
    out: dict[str, Path] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise HifusionError(f"{option} expects SECTION=PATH, got '{item}'")
        out[key.strip()] = Path(value.strip()).expanduser()
    return out


def _sections(value: str | None) -> list[str] | None:
    return [s.strip() for s in value.split(",") if s.strip()] if value else None


def _ints(value: str | None, option: str) -> list[int] | None:
    """Comma-separated integers, or a one-line error naming the option."""
    items = _sections(value)
    if items is None:
        return None
    try:
        return [int(s) for s in items]
    except ValueError:
        from hifusion.errors import ConfigError

        raise ConfigError(f"{option} takes comma-separated integers, got {value!r}") from None


@app.command()
def prepare(
    out: Annotated[Path, typer.Option("--out", "-o", help="Cache folder (one folder per physical scale).")],
    root: Annotated[Path | None, typer.Option(help="Dataset root (default: the HER2ST sample in the package).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="her2st | stnet | visium | visium_hd | h5ad")] = "her2st",
    sections: Annotated[str | None, typer.Option(help="Comma-separated section ids (default: all found).")] = None,
    spot_um: Annotated[float | None, typer.Option(help="Spot field of view in microns (default 154.6; Visium HD: "
                                                       "1.546 x the spot width, 85 um for 55 um discs).")] = None,
    spot_px: Annotated[int, typer.Option(help="Spot patch side in pixels (224 paper, 112 CPU profile).")] = 224,
    region_factor: Annotated[float, typer.Option(help="Region patch side / spot patch side.")] = 2.0,
    mpp: Annotated[list[str] | None, typer.Option(help="Per-section image um/px override, e.g. C2=0.69.")] = None,
    coord_scale: Annotated[list[str] | None, typer.Option(help="Per-section spot coordinate scale, e.g. A1=0.2876.")]
    = None,
    image: Annotated[list[str] | None, typer.Option(
        help="Per-section image to cut patches from, e.g. S1=outs/spatial/tissue_hires_image.png (Space Ranger's "
             "hires/lowres images get their scale factor from scalefactors_json.json). Visium default: a "
             "full-resolution image beside outs/, else the hires, else the lowres image.")] = None,
    allow_background: Annotated[bool, typer.Option(
        help="Keep a section even when most of its spot patches are background (blank, black or white).")] = False,
    compression: Annotated[str, typer.Option(help="none | lzf")] = "none",
    workers: Annotated[int, typer.Option(help="Sections prepared in parallel.")] = 1,
    shard: Annotated[str | None, typer.Option(help="i/n: prepare every n-th section from i (cluster arrays).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo sections already in the cache.")] = False,
    hd_bin_um: Annotated[int, typer.Option(help="Visium HD: bin size read, 2 | 8 | 16 um.")] = 8,
    hd_disc_um: Annotated[float, typer.Option(help="Visium HD: pseudo-spot diameter in um (bins summed into discs); "
                                                   "0 = the bins themselves are the spots.")] = 55.0,
    hd_pitch_um: Annotated[float, typer.Option(help="Visium HD: pseudo-spot grid pitch in um.")] = 100.0,
    hd_grid: Annotated[str, typer.Option(help="Visium HD: pseudo-spot grid, hex | square.")] = "hex",
) -> None:
    """Read raw ST data, cut spot and region patches at one physical scale, and write the patch cache."""
    from hifusion.config import prepare_config
    from hifusion.data.prepare import prepare_sections

    cfg = prepare_config(
        format=fmt, root=root, sections=_sections(sections), spot_um=spot_um, spot_px=spot_px,
        region_factor=region_factor, mpp=_parse_mapping(mpp, "--mpp"),
        coord_scale=_parse_mapping(coord_scale, "--coord-scale"), image=_parse_paths(image, "--image"),
        allow_background=allow_background, compression=compression,
        visium_hd={"bin_um": hd_bin_um, "disc_um": hd_disc_um, "pitch_um": hd_pitch_um, "grid": hd_grid},
    )
    written = prepare_sections(cfg, out, overwrite=overwrite, progress=True, workers=workers, shard=shard)
    typer.echo(f"cache: {out} ({len(written)} section(s))")


ConfigArg = Annotated[Path, typer.Argument(help="YAML config (see configs/).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config key: train.epochs=5.")]
OutOpt = Annotated[Path | None, typer.Option("--out", "-o", help="Results folder (default: output/name).")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue an interrupted run in the same folder.")]
DevicesOpt = Annotated[str | None, typer.Option(help="train.devices: devices per node (2, -1 = all, or 0,1).")]
NodesOpt = Annotated[int | None, typer.Option("--num-nodes", help="train.num_nodes: machines in the run.")]
StrategyOpt = Annotated[str | None, typer.Option(help="train.strategy: auto | ddp | ddp_spawn | ... (Lightning).")]
AcceleratorOpt = Annotated[str | None, typer.Option(help="train.accelerator: auto | cpu | gpu | cuda | mps.")]


def _scale_sets(set_: list[str] | None, devices: str | None, num_nodes: int | None, strategy: str | None,
                accelerator: str | None) -> list[str]:
    """Map the distributed-training options onto `--set train.*` overrides (they win over the YAML and --set)."""
    out = list(set_ or [])
    for key, value in (("devices", devices), ("num_nodes", num_nodes), ("strategy", strategy),
                       ("accelerator", accelerator)):
        if value is not None:
            out.append(f"train.{key}={value}")
    return out


def _print_summary(result: object) -> None:
    from hifusion.evaluate.report import summary_table

    if result.report is None:  # type: ignore[attr-defined]  # a non-zero DDP rank: rank 0 reports
        return
    typer.echo(summary_table(result.metrics))  # type: ignore[attr-defined]
    typer.echo(f"\nreport: {result.report}  ({result.seconds / 60:.1f} min)")  # type: ignore[attr-defined]


@app.command()
def train(config: ConfigArg, out: OutOpt = None, resume: ResumeOpt = False, set_: SetOpt = None,
          devices: DevicesOpt = None, num_nodes: NodesOpt = None, strategy: StrategyOpt = None,
          accelerator: AcceleratorOpt = None) -> None:
    """Train the config's model on its protocol's training sections and score the test sections.

    The mean-profile floor is scored next to it on the same sections.
    """
    from hifusion.config import load_config, with_floor

    cfg = load_config(config, _scale_sets(set_, devices, num_nodes, strategy, accelerator))  # fails fast
    from hifusion.evaluate.protocols import run_benchmark  # seconds of imports: only for a valid config

    result = run_benchmark(cfg, out or cfg.output / cfg.name, models=with_floor([cfg.model]), resume=resume,
                           title="Training run")
    _print_summary(result)


@app.command()
def benchmark(config: ConfigArg, out: OutOpt = None, resume: ResumeOpt = False, set_: SetOpt = None,
              devices: DevicesOpt = None, num_nodes: NodesOpt = None, strategy: StrategyOpt = None,
              accelerator: AcceleratorOpt = None) -> None:
    """Train and evaluate every model of the config on every split; write report.md, tables, maps."""
    from hifusion.config import load_config

    cfg = load_config(config, _scale_sets(set_, devices, num_nodes, strategy, accelerator))  # fails fast
    from hifusion.evaluate.protocols import run_benchmark

    result = run_benchmark(cfg, out or cfg.output / cfg.name, resume=resume)
    _print_summary(result)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Results folder.")] = Path("hifusion-demo"),
    resume: ResumeOpt = False,
    set_: SetOpt = None,
) -> None:
    """The 3D protocol on the HER2ST sample shipped in the package (train C2, test C3, C4), CPU profile."""
    from hifusion.config import load_config
    from hifusion.io import check_results_folder

    cfg = load_config(Path(__file__).parent / "configs" / "demo.yaml", set_)
    check_results_folder(out, resume)
    from hifusion.evaluate.protocols import run_benchmark

    cfg.data.cache = out / "cache"
    result = run_benchmark(cfg, out / "report", resume=resume, command="hifusion demo", title="hifusion demo")
    _print_summary(result)


@app.command()
def predict(
    checkpoint: Annotated[Path, typer.Option(help="Training checkpoint (e.g. run/checkpoints/last.ckpt).")],
    slide: Annotated[Path, typer.Option(help="Slide: SVS/TIFF/NDPI/MRXS pyramid, or a plain JPEG/PNG/TIFF.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    mpp: Annotated[float | None, typer.Option(help="Slide um/px (required when the file records none).")] = None,
    spots: Annotated[Path | None, typer.Option(help="CSV of spot centres x,y (level-0 px), optional barcode.")]
    = None,
    grid: Annotated[str, typer.Option(help="Virtual spot grid: hex (Visium-like) | square (legacy ST).")] = "hex",
    pitch_um: Annotated[float | None, typer.Option(help="Grid pitch in microns (default: 2x the spot field of "
                                                        "view, 309 um at the default scale).")] = None,
    genes: Annotated[str | None, typer.Option(help="Comma-separated genes to map (default: marker genes).")] = None,
    batch_size: Annotated[int, typer.Option(help="Spots per forward pass.")] = 64,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    min_tissue: Annotated[float, typer.Option(help="Least tissue fraction of a grid spot's field of view.")] = 0.5,
    adabn: Annotated[bool | None, typer.Option("--adabn/--no-adabn", help="Re-estimate BatchNorm statistics on "
                                                   "this slide's patches. Unset: the recipe.json a benchmark left "
                                                   "beside the checkpoint, else on.")] = None,
    tta: Annotated[bool | None, typer.Option("--tta/--no-tta", help="Average over the 8 flips/rotations (8x the "
                                                                    "model time). Unset: recipe.json, else off.")]
    = None,
    calibrate: Annotated[str | None, typer.Option(help="auto (shrink where a benchmark left calibration.json beside "
                                                       "the checkpoint, else centre) | centre (each gene's slide mean "
                                                       "set to the training mean stored in the checkpoint) | shrink "
                                                       "(centre, and the pattern scaled by the factor fitted on "
                                                       "validation spots) | none. Unset: recipe.json, else auto.")]
    = None,
    smooth_um: Annotated[float | None, typer.Option(help="Average each spot's prediction with its neighbours' "
                                                         "(Gaussian sigma in microns; 0 = off). Unset: recipe.json, "
                                                         "else 0.")] = None,
    gene_pcs: Annotated[int | None, typer.Option(help="Keep each spot's deviation from the slide's mean along the "
                                                      "top-k co-expression axes of the training labels (stored by a "
                                                      "benchmark in recipe.json; 0 = off). Unset: recipe.json, else "
                                                      "0.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="h5ad (predictions.h5ad, CSV, maps) | spatialdata (also "
                                                      "predictions.zarr: H&E, spot circles and table in microns; "
                                                      "needs pip install 'hifusion[spatial]').")] = "h5ad",
) -> None:
    """Predict expression over a whole slide: h5ad + CSV + per-gene maps + index.html in OUT."""
    from hifusion.predict import predict_slide
    from hifusion.predict.engine import Compute, SpotLayout
    from hifusion.recipe import resolve_recipe

    # typer hands the test-time options over one by one; they become one Recipe here, and only that travels on
    recipe, source = resolve_recipe(checkpoint, adabn=adabn, tta=tta, calibrate=calibrate, smooth_um=smooth_um,
                                    gene_pcs=gene_pcs)
    result = predict_slide(
        checkpoint, slide, out, mpp=mpp, layout=SpotLayout(spots, grid, pitch_um, min_tissue),
        compute=Compute(batch_size, device, progress=True), genes=_sections(genes), fmt=fmt, recipe=recipe,
    )
    typer.echo(f"test-time options: {', '.join(f'{k}={v}' for k, v in recipe.to_dict().items())} ({source})")
    typer.echo(f"predictions: {result / C.PREDICTIONS_H5AD}  maps: {result / C.INDEX_HTML}")
    if fmt == "spatialdata":
        typer.echo(f"SpatialData: {result / C.PREDICTIONS_ZARR}")


@app.command()
def ablate(
    config: ConfigArg,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    set_: SetOpt = None,
    only: Annotated[str | None, typer.Option(help="Comma-separated ablation options to run, e.g. tokens,levels "
                                                   "(default: every option of the config's ablation spec).")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated training seeds, e.g. 0,1,2: every variant is "
                                                    "trained once per seed and the report gives the spread over "
                                                    "seeds (default: train.seed only).")] = None,
) -> None:
    """HiFusion variants differing from the config's in one option each (tokens, region, levels, alignment, CCF).

    Runs them under the config's protocol; writes ablation.md (variant x metric, Wilcoxon vs the default over genes),
    ablation.csv and line plots against token count and neighbour size. Override the spec with an `ablation:` list
    of {option, values} in the config.
    """
    from hifusion.config import load_config

    cfg = load_config(config, set_)  # fails fast
    from hifusion.evaluate.ablation import run_ablation

    result = run_ablation(cfg, out or cfg.output / f"{cfg.name}_ablation", resume=resume, only=_sections(only),
                          seeds=_ints(seeds, "--seeds"))
    typer.echo(f"ablation: {result.report}  ({result.seconds / 60:.1f} min)")


@app.command()
def efficiency(
    device: Annotated[str, typer.Option(help="cpu | cuda | cuda:N")] = "cpu",
    out: Annotated[Path, typer.Option("--out", "-o", help="Markdown table; a .csv twin is written beside it.")]
    = Path(C.EFFICIENCY_MD),
    models: Annotated[str | None, typer.Option(help="Comma-separated models (default: every registered one).")]
    = None,
    profiles: Annotated[str, typer.Option(help="Comma-separated input-size profiles: paper, cpu.")] = "paper,cpu",
    iters: Annotated[int, typer.Option(help="Timed forward passes per model and profile (after one warm-up).")] = 2,
) -> None:
    """Parameters, GMAC per spot, inference ms per spot and peak memory of every model at paper and CPU sizes."""
    from hifusion.evaluate.efficiency import efficiency_table, write_efficiency

    table = efficiency_table(models=_sections(models), profiles=_sections(profiles), device=device, iters=iters,
                             progress=True)
    md, csv = write_efficiency(table, out)
    typer.echo(md.read_text())
    typer.echo(f"table: {md}  csv: {csv}")


@app.command("hest-bench")
def hest_bench(
    root: Annotated[Path, typer.Option(help="HEST-Benchmark data folder holding the task folders (bench_data).")],
    task: Annotated[str, typer.Option(help="Task folder under root, e.g. IDC.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Results folder.")],
    model: Annotated[str | None, typer.Option(help="Registered model whose frozen spot features are probed, "
                                                   "e.g. linear_probe (any encoder) or hifusion.")] = None,
    option: Annotated[list[str] | None, typer.Option(help="Model option KEY=VALUE (YAML value), repeatable, e.g. "
                                                          "encoder=resnet50 or encoder_weights=/path.pth.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="A trained checkpoint instead of --model: its encoder.")]
    = None,
    genes: Annotated[str, typer.Option(help="Gene list JSON in the task folder.")] = C.HEST_GENES_JSON,
    patch_mpp: Annotated[float, typer.Option(help="um/px of the task's patches (HEST-Benchmark: 0.5).")] = 0.5,
    batch_size: Annotated[int, typer.Option(help="Patches per forward pass.")] = 128,
    seed: Annotated[int, typer.Option(help="PCA / ridge random state (HEST's default 1).")] = 1,
    resume: ResumeOpt = False,
) -> None:
    """Score a model on a HEST-Benchmark task with HEST's frozen-encoder protocol (PCA 256 + ridge, Pearson per
    gene over each fold's test spots): the number HEST's published table reports."""
    import yaml

    opts: dict[str, object] = {}
    for item in option or []:
        if "=" not in item:
            raise HifusionError(f"--option expects KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        opts[key.strip()] = yaml.safe_load(value)
    if model is None and checkpoint is None:
        model = "linear_probe"
    from hifusion.evaluate.hestbench import FeatureSource, run_hest_bench

    res = run_hest_bench(root, task, out, FeatureSource(model, opts, checkpoint), gene_list=genes,
                         patch_mpp=patch_mpp, batch_size=batch_size, seed=seed, resume=resume)
    s = res.summary
    folds = ", ".join(f"{f['pearson_mean']:.4f}" for f in s["folds"])
    typer.echo(f"{task} | {s['model']}: Pearson {s['pearson_mean']:.4f} ± {s['pearson_std']:.4f} "
               f"over {len(s['folds'])} folds ({folds}); results in {res.out}")

def _pretrain_settings(cfg_pretrain: object, encoder: str | None, slides: list[str] | None, slide_mpp: float | None,
                       numbers: dict[str, object]) -> object:
    """The config's `pretrain` section (or defaults) with the command's options applied, validated again."""
    from pydantic import ValidationError

    from hifusion.config import PretrainConfig, _first_error
    from hifusion.errors import ConfigError

    data = cfg_pretrain.model_dump() if cfg_pretrain is not None else {}  # type: ignore[attr-defined]
    data.update({k: v for k, v in numbers.items() if v is not None})
    if encoder is not None:
        data["encoders"] = _sections(encoder) or []
    paths = [p.strip() for item in slides or [] for p in item.split(",") if p.strip()]
    if paths:
        data["slides"] = [*data.get("slides", []), *({"path": p, "mpp": slide_mpp} for p in paths)]
    try:
        return PretrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"pretrain options: {_first_error(exc)}") from None


@app.command()
def pretrain(
    config: Annotated[Path | None, typer.Argument(help="YAML config: tiles come from its patch cache (prepared if "
                                                        "data.prepare says how) and settings from its `pretrain` "
                                                        "section. Optional with --slides.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: encoder.safetensors (one encoder) or "
                                                          "<encoder>/encoder.safetensors, pretrain_log.csv.")]
    = Path("runs/pretrain"),
    encoder: Annotated[str | None, typer.Option(help="Comma-separated encoders (registered or timm names), e.g. "
                                                     "resnet18,resnet10 (default: pretrain.encoders, resnet18).")]
    = None,
    sections: Annotated[str | None, typer.Option(help="Comma-separated cache sections (default: all).")] = None,
    slides: Annotated[list[str] | None, typer.Option(help="Extra slide images to tile on tissue, comma-separated "
                                                          "or repeated: a.svs,b.jpg.")] = None,
    slide_mpp: Annotated[float | None, typer.Option(help="Level-0 um/px of the --slides (when the files record "
                                                         "none).")] = None,
    tile_mpp: Annotated[float | None, typer.Option(help="Tile scale in um/px: the cache's (a check) or, without a "
                                                        "config, required.")] = None,
    tile_px: Annotated[int | None, typer.Option(help="Tile side without a config (default 2 x view px).")] = None,
    view_px: Annotated[int | None, typer.Option(help="Side of the augmented views (default: the cache's spot "
                                                     "patch side).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs over the tiles (default 10, or unlimited with "
                                                    "--minutes).")] = None,
    minutes: Annotated[float | None, typer.Option(help="Time budget per encoder (wall clock); stops mid-epoch.")]
    = None,
    batch_size: Annotated[int | None, typer.Option(help="Tiles per step (default 32).")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (AdamW, default 1e-3).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of weights, tile order and views.")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (fix it for bitwise-reproducible runs).")]
    = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N (default auto).")] = None,
    resume: ResumeOpt = False,
    set_: SetOpt = None,
) -> None:
    """Self-supervised pretraining (BYOL) of image encoders on unlabelled H&E tiles.

    Every model loads the result through its encoder weights option, e.g. `spot_encoder_weights:
    runs/pretrain/encoder.safetensors` (HiFusion) or `encoder_weights:` (ST-Net, linear probe). Killed runs
    continue with --resume. In a benchmark, a `pretrain:` config section pretrains per split instead.
    """
    cache = None
    cfg_pretrain = None
    if config is not None:
        from hifusion.config import load_config

        cfg = load_config(config, set_)
        from hifusion.config import PretrainConfig
        from hifusion.evaluate.protocols import ensure_cache
        from hifusion.pretrain.folds import with_normalise

        cache = ensure_cache(cfg.data)
        cfg_pretrain = with_normalise(cfg.pretrain or PretrainConfig(), cfg.data.normalise)
    numbers = {"epochs": epochs, "minutes": minutes, "batch_size": batch_size, "lr": lr, "seed": seed,
               "threads": threads, "view_px": view_px, "device": device}
    pcfg = _pretrain_settings(cfg_pretrain, encoder, slides, slide_mpp, numbers)
    from hifusion.pretrain.command import pretrain_command

    written = pretrain_command(cache, _sections(sections), pcfg, out, tile_mpp=tile_mpp, tile_px=tile_px,
                               resume=resume)
    for enc, path in written.items():
        typer.echo(f"{enc}: {path}")

@app.command()
def encoders() -> None:
    """The encoder presets: published pathology encoders usable by name wherever a model takes an encoder."""
    from rich.console import Console
    from rich.table import Table

    from hifusion.models.presets import HUB, list_presets

    table = Table(title="Encoder presets (weights: a local file, or `hub` to download into the Hugging Face cache)")
    for col in ("name", "architecture", "params", "dim", "px", "um/px", "embedding", "weight file", "hub id",
                "gated", "needs"):
        table.add_column(col, overflow="fold")
    for p in list_presets():
        params = f"{p.params_m / 1000:.2f}B" if p.params_m >= 1000 else f"{p.params_m:.0f}M"
        table.add_row(p.name, p.arch, params, str(p.feature_dim), str(p.input_px),
                      "unknown" if p.mpp is None else f"{p.mpp:g}", p.embedding, p.weight_file, p.hub_id or "-",
                      "yes" if p.gated else "no", p.package.split(" ")[0] if p.package else "-")
    Console(width=200).print(table)
    typer.echo(f"e.g. model options `encoder: uni`, `encoder_weights: /path/to/pytorch_model.bin` (or `{HUB}`); "
               "each preset's notes: hifusion.models.presets")


def _one_line_warnings() -> None:
    """Our warnings as one 'warning: ...' line on stderr, not Python's two lines with a source path and code."""
    import warnings

    default = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: object = None,
             line: str | None = None) -> None:
        if "hifusion" in filename.replace("\\", "/").split("/"):
            typer.echo(f"warning: {message}", err=True)
        else:
            default(message, category, filename, lineno, file, line)  # type: ignore[arg-type]

    warnings.showwarning = show


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    _one_line_warnings()
    try:
        app()
    except HifusionError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except OSError as exc:  # storage problems not caught nearer their source: disk full, permissions, file in the way
        from hifusion.io import storage_error

        err = storage_error(exc)
        if err is None:
            raise
        typer.echo(f"error: {err.filename or 'output'}: cannot write ({err.strerror or exc})", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

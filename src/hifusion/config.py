"""One typed, validated configuration object for `train`, `benchmark`, `ablate` and `demo`, loadable from YAML.

Relative paths are resolved against the working directory the command is run from. Every run writes the
resolved configuration next to its outputs so that it can be redone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hifusion import constants as C
from hifusion.errors import ConfigError
from hifusion.model_options import option_problem
from hifusion.recipe import Recipe


class _Strict(BaseModel):
    """Unknown keys are errors: a typo in a config must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class VisiumHDConfig(_Strict):
    """Visium HD spots: the bins of one size (disc_um 0), or bins summed into discs on a grid (DESIGN 10)."""

    bin_um: Literal[2, 8, 16] = C.VISIUM_HD_DEFAULT_BIN_UM
    disc_um: float = Field(C.VISIUM_HD_DEFAULT_DISC_UM, ge=0)
    pitch_um: float = Field(C.VISIUM_HD_DEFAULT_PITCH_UM, gt=0)
    grid: Literal["hex", "square"] = "hex"


class PrepareConfig(_Strict):
    """How to build the patch cache from raw data (the `prepare` command's options)."""

    format: str = "her2st"
    root: Path | None = None  # None: the HER2ST sample shipped inside the package
    sections: list[str] | None = None  # None: every section found under root
    spot_um: float | None = Field(None, gt=0)  # None: 154.6 um, or following the spot size for visium_hd
    spot_px: int = Field(C.DEFAULT_SPOT_PX, gt=0)
    region_factor: float = Field(C.DEFAULT_REGION_FACTOR, ge=1.0)
    mpp: dict[str, float] = Field(default_factory=dict)
    coord_scale: dict[str, float] = Field(default_factory=dict)
    image: dict[str, Path] = Field(default_factory=dict)  # per-section image to cut from (prepare --image S=PATH)
    allow_background: bool = False  # keep sections whose spot patches are mostly background
    compression: Literal["none", "lzf"] = "none"
    visium_hd: VisiumHDConfig = Field(default_factory=VisiumHDConfig)  # read by format visium_hd only

    def reader_options(self) -> dict[str, Any] | None:
        """Options passed to the format's reader (only Visium HD takes any)."""
        return {"hd_spots": self.visium_hd.model_dump()} if self.format == "visium_hd" else None


def prepare_config(**values: Any) -> PrepareConfig:
    """A `PrepareConfig` from command-line values; an invalid one is a ConfigError, as in a YAML config."""
    try:
        return PrepareConfig(**values)
    except ValidationError as exc:
        raise ConfigError(f"prepare options: {_first_error(exc)}") from exc


class GenesConfig(_Strict):
    """Gene panel, always chosen on training sections only."""

    method: Literal["top_mean", "hvg", "file"] = "top_mean"
    n: int = Field(250, gt=0)
    file: Path | None = None
    zero_fill: bool = False

    @model_validator(mode="after")
    def _file_needed(self) -> GenesConfig:
        if self.method == "file" and self.file is None:
            raise ValueError("genes.method 'file' needs genes.file (one gene per line)")
        return self


class StainAugmentConfig(_Strict):
    """Colour and resolution augmentation at training time (0 = off), one draw per spot shared by its spot and
    region patches."""

    hed: float = Field(0.0, ge=0, lt=1)  # Tellez-style HED jitter: stain scale U(1-s, 1+s), shift U(-s, s)
    brightness: float = Field(0.0, ge=0, lt=1)
    contrast: float = Field(0.0, ge=0, lt=1)
    saturation: float = Field(0.0, ge=0, lt=1)
    # scanner resolution: a spot's patches seen at 1/f of their resolution, f log-spaced in [1, 1 + r] (8 levels)
    resolution: float = Field(0.0, ge=0, le=7)


class StainConfig(_Strict):
    """Stain robustness, applied to every image model alike; references come from training sections only."""

    augment: StainAugmentConfig = Field(default_factory=StainAugmentConfig)
    # reinhard: each section's LAB mean/std (over its spot patches, images only) mapped onto the training sections'
    normalise: Literal["none", "reinhard"] = "none"


class AdaptConfig(Recipe):
    """A benchmark's test-time options: the fields and checks of `hifusion.recipe.Recipe` (what each option does is
    documented there), with the benchmark's narrower ranges (no `auto`: the benchmark fits its own calibration)."""

    @model_validator(mode="after")
    def _benchmark_ranges(self) -> AdaptConfig:
        self.check_benchmark()
        return self


class DataConfig(_Strict):
    cache: Path
    prepare: PrepareConfig | None = None  # when given, the cache is (re)used or built before training
    genes: GenesConfig = Field(default_factory=GenesConfig)
    label: Literal["logprop", "log1p_cpm"] = "logprop"
    drop_low_counts: bool = False  # spots under 100 counts are kept by default (flagged in obs)
    normalise: Literal["patch", "dataset"] = "patch"
    region_factor: float | None = Field(None, ge=1.0)  # None: the cache's; smaller values centre-crop the region
    stain: StainConfig = Field(default_factory=StainConfig)
    # frozen-encoder embeddings (linear_probe; stnet, bleep with freeze_encoder) stored in <cache>/embeddings and
    # reused by every later fit, fold and run with the same encoder, weights, preprocessing and view; false: computed
    # once per fit, never written
    embedding_cache: bool = True


class ValConfig(_Strict):
    """Validation carved from the training sections only (never from test sections)."""

    mode: Literal["none", "spatial_block", "sections"] = "none"
    fraction: float = Field(0.2, gt=0, lt=1)
    # `sections` mode: these whole training sections validate. Empty: per split, the last section (by name) of
    # each training patient that has several; a split where no patient has several falls back to spatial bands.
    sections: list[str] = Field(default_factory=list)
    early_stopping_patience: int | None = Field(None, gt=0)


class TrainConfig(_Strict):
    epochs: int = Field(50, gt=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-6, ge=0)
    weight_decay: float = Field(1e-5, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    augment: bool = True
    seed: int = 0
    # section: every section's per-gene label mean is replaced by the pooled training mean before fitting, so that
    # image models learn the pattern within sections and not the differences between them (patient, depth, batch),
    # which they could only learn from slide cues that do not carry over to a new slide. A no-op with one section.
    centre_labels: Literal["none", "section"] = "none"
    # gene: the loss sees each gene's labels standardised by the training spots' mean and std (stored in the
    # checkpoint; predictions are mapped back to label units), so every gene's pattern weighs the same in the
    # objective, as in PCC-gene; on raw labels MSE weighs each gene by its variance.
    scale_labels: Literal["none", "gene"] = "none"
    ensemble: int = Field(1, ge=1)  # benchmark: train this many seeds (seed, seed+1, ...) and average them
    # at most this many (shuffled) batches per epoch, None: all. For smoke runs and scale benchmarks on large cohorts
    max_steps_per_epoch: int | None = Field(None, gt=0)
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = Field(1, gt=0)
    strategy: str = "auto"
    precision: str = "auto"  # auto: bf16/16-mixed on CUDA, 32 on CPU
    num_workers: int = Field(-1, ge=-1)  # -1: chosen from the machine
    channels_last: bool | None = True  # None: CUDA only; on an idle 2-core CPU it sped training up 16-31%
    compile: bool = False
    threads: int | None = Field(None, gt=0)  # torch intra-op threads on CPU; None: torch's default
    val: ValConfig = Field(default_factory=ValConfig)
    # mse: ALSO keep the epoch with the lowest MSE on the TEST sections (scored after every epoch), as the HiFusion
    # reference code selects; the benchmark then adds a row "<model> [test-selected, flattering]" from the same
    # run beside the honest one, to measure how much that selection inflates a score. Never an honest number.
    select_on_test: Literal["none", "mse"] = "none"


class ModelConfig(_Strict):
    name: str = "hifusion"
    label: str | None = None  # how the model is named in reports (default: name)
    options: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)  # per-model overrides of the train section

    @model_validator(mode="after")
    def _options_fit_the_model(self) -> ModelConfig:
        """Options are checked against the model's constructor now, not when the model is built after earlier models
        have trained (`model_options` reads the signatures without importing torch)."""
        problem = option_problem(self.name, self.options)
        if problem:
            raise ValueError(problem if self.label is None else f"{problem} (model labelled '{self.label}')")
        return self

    @property
    def display(self) -> str:
        return self.label or self.name


class ProtocolConfig(_Strict):
    """Which sections train and which test. `fixed` is one split; the others produce several."""

    name: Literal["fixed", "3d", "rotation", "2d", "loso"] = "fixed"
    train: list[str] = Field(default_factory=list)
    test: list[str] = Field(default_factory=list)
    folds: list[list[str]] | None = None  # 2d: patient groups per fold; None = made automatically
    k: int = Field(4, gt=1)
    patients: list[str] | None = None  # restrict 3d/2d to these patients

    @model_validator(mode="after")
    def _fixed_needs_sections(self) -> ProtocolConfig:
        if self.name == "fixed" and (not self.train or not self.test):
            raise ValueError("protocol 'fixed' needs both protocol.train and protocol.test sections")
        if self.name == "fixed" and set(self.train) & set(self.test):
            raise ValueError(f"sections in both train and test: {sorted(set(self.train) & set(self.test))}")
        return self


class PretrainAugmentConfig(_Strict):
    """The views of self-supervised pretraining (see `pretrain.views`); 0 switches an augmentation off."""

    scale_jitter: float = Field(0.25, ge=0, le=1)  # crop side log-uniform in [1/(1+j), 1+j] x the view's field
    hed: float = Field(0.05, ge=0, lt=1)
    brightness: float = Field(0.2, ge=0, lt=1)
    contrast: float = Field(0.2, ge=0, lt=1)
    saturation: float = Field(0.2, ge=0, lt=1)
    blur_um: float = Field(1.5, ge=0, le=50)  # largest Gaussian sigma in microns
    resolution: float = Field(1.0, ge=0, le=7)  # scanner resolution, as data.stain.augment.resolution


class PretrainSlide(_Strict):
    """An extra unlabelled slide to tile (any image path); `mpp` overrides the level-0 um/px the file records."""

    path: Path
    mpp: float | None = Field(None, gt=0)


class PretrainConfig(_Strict):
    """Self-supervised pretraining of image encoders on unlabelled H&E (`hifusion pretrain`; in a benchmark, once
    per split on the images that split may see, before its models are fitted).

    A model opts in with the value `pretrained` for a weights option (`spot_encoder_weights`,
    `region_encoder_weights`, `encoder_weights`): it then starts from the split's encoder pretrained for the
    architecture its matching encoder option names, which must be one of `encoders`.
    """

    method: Literal["byol"] = "byol"
    encoders: list[str] = Field(default_factory=lambda: ["resnet18"], min_length=1)  # registered or timm names
    epochs: int | None = Field(None, gt=0)  # None: 10, or as many as `minutes` allows when it is set
    minutes: float | None = Field(None, gt=0)  # time budget of each encoder's pretraining (wall clock)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-6, ge=0)
    warmup: float = Field(0.05, ge=0, lt=1)  # share of the run with a linear learning-rate warm-up
    base_momentum: float = Field(0.99, ge=0, lt=1)
    hidden_dim: int = Field(4096, gt=0)
    proj_dim: int = Field(256, gt=0)
    view_px: int | None = Field(None, gt=0)  # None: the cache's spot patch side (a spot field of view)
    # input standardisation of the views, as the models' `data.normalise` (dataset: the tiles' channel mean/std);
    # None: the config's data.normalise (patch without a config)
    normalise: Literal["patch", "dataset"] | None = None
    seed: int = 0
    threads: int | None = Field(None, gt=0)
    device: str = "auto"  # auto: the first CUDA GPU if there is one, else the CPU
    checkpoint_minutes: float = Field(5.0, gt=0)  # resumable state written at least this often, and every epoch
    include_test_images: bool = False  # benchmark: also the test sections' images (never their expression)
    slides: list[PretrainSlide] = Field(default_factory=list)  # extra unlabelled slides for every split
    max_tiles_per_slide: int = Field(2000, gt=0)
    min_tissue: float = Field(0.5, gt=0, le=1)
    augment: PretrainAugmentConfig = Field(default_factory=PretrainAugmentConfig)

    @property
    def planned_epochs(self) -> int | None:
        """Epochs to run: the given number, 10 without any limit, None (until the time budget) with minutes only."""
        if self.epochs is not None:
            return self.epochs
        return None if self.minutes is not None else 10


class AblationAxis(_Strict):
    """One ablated option and the values tried; every other option stays at the config's HiFusion default.

    `option` is a HiFusion model option (tokens, levels, use_alignment, use_ccf, ...) or `region_factor` (the
    neighbour view side / spot side, centre-cropped from a cache prepared at the largest factor).
    """

    option: str
    values: list[Any] = Field(min_length=1)


class Config(_Strict):
    name: str = "run"
    output: Path = Path("runs")
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    models: list[ModelConfig] | None = None  # benchmark: the models compared (mean_profile is always added)
    train: TrainConfig = Field(default_factory=TrainConfig)
    protocol: ProtocolConfig = Field(default_factory=lambda: ProtocolConfig(name="3d"))
    ablation: list[AblationAxis] | None = None  # `ablate`: options varied one at a time (None: the paper's set)
    adapt: AdaptConfig = Field(default_factory=AdaptConfig)  # test-time options of every model's main row
    # extra rows from the same fitted models, labelled "<model> [<name>]": e.g. {plain: {}} to show the effect
    adapt_variants: dict[str, AdaptConfig] = Field(default_factory=dict)
    pretrain: PretrainConfig | None = None  # self-supervised encoder pretraining per split (models opt in)
    # benchmark prediction files: predictions/<model>/<section>.h5ad, and with `spatialdata` a <section>.zarr beside
    # it (the H&E, spot circles at their diameter and the table, in microns; needs the `spatial` extra)
    prediction_format: Literal["h5ad", "spatialdata"] = "h5ad"

    @field_validator("models")
    @classmethod
    def _unique_labels(cls, v: list[ModelConfig] | None) -> list[ModelConfig] | None:
        if v is not None:
            labels = [m.display for m in v]
            dup = sorted({x for x in labels if labels.count(x) > 1})
            if dup:
                raise ValueError(f"models share the label(s) {dup}; give each a distinct 'label'")
        return v

    @property
    def recipes(self) -> dict[str, Recipe]:
        """Every test-time recipe of a benchmark by row name: "" is each model's main row (`adapt`)."""
        return {"": self.adapt, **self.adapt_variants}

    @model_validator(mode="after")
    def _shrink_needs_validation(self) -> Config:
        for name, a in self.recipes.items():
            if a.calibrate == "shrink" and self.train.val.mode == "none":
                key = f"adapt_variants.{name}" if name else "adapt"
                raise ValueError(f"{key}.calibrate 'shrink' fits its factor on validation spots: set train.val.mode")
        return self

    @model_validator(mode="after")
    def _pretrained_needs_pretrain(self) -> Config:
        for m in [self.model, *(self.models or [])]:
            asks = [k for k in C.WEIGHT_OPTIONS if m.options.get(k) == C.PRETRAINED]
            if asks and self.pretrain is None:
                raise ValueError(f"model '{m.display}' asks for {asks[0]}: {C.PRETRAINED} but the config has no "
                                 "pretrain section")
        return self

    def benchmark_models(self) -> list[ModelConfig]:
        """The models a benchmark runs: the configured list, with the mean-profile floor always included."""
        return with_floor(list(self.models) if self.models else [self.model])

    def train_for(self, model: ModelConfig) -> TrainConfig:
        """The train section with a model's own overrides applied (validated again)."""
        if not model.train:
            return self.train
        merged = {**self.train.model_dump(), **model.train}
        try:
            return TrainConfig.model_validate(merged)
        except ValidationError as exc:
            raise ConfigError(f"model '{model.display}' train overrides: {_first_error(exc)}") from exc

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def with_floor(models: list[ModelConfig]) -> list[ModelConfig]:
    """`models` and, unless one of them is it, the mean-profile floor: every model is scored next to it."""
    return models if any(m.name == C.MEAN_PROFILE for m in models) else [*models, ModelConfig(name=C.MEAN_PROFILE)]


def _first_error(exc: ValidationError) -> str:
    errs = exc.errors()
    parts = []
    for e in errs[:3]:
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        parts.append(f"{loc}: {e['msg']}")
    more = f" (+{len(errs) - 3} more)" if len(errs) > 3 else ""
    return "; ".join(parts) + more


def parse_config(data: dict[str, Any], source: str | Path | None = None) -> Config:
    """Validate a config mapping; problems become one ConfigError naming the file and the key."""
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid config: {_first_error(exc)}", source) from exc


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a YAML config; `overrides` are `dotted.key=value` strings (value parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML ({exc.__class__.__name__})", path) from exc
    if not isinstance(data, dict):
        raise ConfigError("a config must be a mapping of sections (data, model, train, protocol)", path)
    for item in overrides or []:
        apply_override(data, item, path)
    return parse_config(data, path)


def apply_override(data: dict[str, Any], item: str, source: str | Path | None = None) -> None:
    """Set `a.b.c=value` in a nested mapping, creating intermediate mappings."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.path=value", source)
    key, raw = item.split("=", 1)
    node = data
    parts = key.strip().split(".")
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override '{item}': '{p}' is not a section", source)
        node = nxt
    node[parts[-1]] = yaml.safe_load(raw)

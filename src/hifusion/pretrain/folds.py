"""Pretraining as a benchmark step: per split, on the images that split may see, before its models are fitted.

A split pretrains on its training (and validation) sections' region patches, plus the test sections' images only
where `pretrain.include_test_images` says so (images only, as AdaBN uses them: never expression), plus any extra
slides of the config. The encoders land in `runs/<split>/pretrain/<encoder>/encoder.safetensors`; a finished one is
reused, an interrupted one resumes. A model asks for them with the value `pretrained` of a weights option
(`constants.WEIGHT_OPTIONS`): it gets the file pretrained for the architecture its encoder option names.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hifusion import constants as C
from hifusion.config import ModelConfig, PretrainConfig
from hifusion.errors import ConfigError
from hifusion.pretrain.loop import read_pretrain_meta, run_pretrain
from hifusion.pretrain.tiles import TileSet, gather_tiles
from hifusion.progress import say


def with_normalise(pcfg: PretrainConfig, data_normalise: str) -> PretrainConfig:
    """The pretraining standardises its views as the models will (`data.normalise`) unless it says otherwise."""
    return pcfg if pcfg.normalise is not None else pcfg.model_copy(update={"normalise": data_normalise})


def split_sections(split: Any, include_test: bool) -> list[str]:
    """Sections whose images a split's pretraining may use: training and validation, test ones only if asked."""
    out = list(dict.fromkeys([*split.train, *split.val]))
    if include_test:
        out += [s for s in split.test if s not in out]
    return out


def requested_encoders(m: ModelConfig) -> dict[str, str]:
    """{weights option: encoder architecture} for the options of `m` set to `pretrained` (defaults from the model's
    constructor where the encoder option is not set)."""
    from hifusion.models.registry import model_entry

    asks = [k for k in C.WEIGHT_OPTIONS if m.options.get(k) == C.PRETRAINED]
    if not asks:
        return {}
    params = model_entry(m.name).parameters()
    out = {}
    for opt in asks:
        enc_opt = C.WEIGHT_OPTIONS[opt]
        if enc_opt in m.options:
            out[opt] = str(m.options[enc_opt])
        elif enc_opt in params and isinstance(params[enc_opt].default, str):
            out[opt] = params[enc_opt].default
        else:
            raise ConfigError(f"model '{m.display}': {opt}: {C.PRETRAINED} needs the encoder option {enc_opt}")
    return out


def check_requests(pcfg: PretrainConfig | None, models: Iterable[ModelConfig]) -> list[str]:
    """Encoders the models ask for (in the config's order); an encoder the config does not pretrain is an error."""
    wanted: set[str] = set()
    for m in models:
        for opt, enc in requested_encoders(m).items():
            if pcfg is None or enc not in pcfg.encoders:
                have = ", ".join(pcfg.encoders) if pcfg else "none"
                raise ConfigError(f"model '{m.display}' asks for a pretrained {enc} ({opt}: {C.PRETRAINED}); "
                                  f"pretrain.encoders has {have}")
            wanted.add(enc)
    return [e for e in (pcfg.encoders if pcfg else []) if e in wanted]


def with_pretrained(m: ModelConfig, weights: dict[str, Path]) -> ModelConfig:
    """`m` with every `pretrained` weights option replaced by the split's file for its encoder."""
    asks = requested_encoders(m)
    if not asks:
        return m
    return m.model_copy(update={"options": {**m.options, **{k: str(weights[e]) for k, e in asks.items()}}})


def _finished(path: Path, encoder: str, pcfg: PretrainConfig, sources: list[str]) -> bool:
    """A weights file written by a pretraining with this config on these sources (reused without re-tiling)."""
    if not path.is_file():
        return False
    meta = read_pretrain_meta(path)
    return (meta.get("encoder") == encoder and meta.get("config") == pcfg.model_dump(mode="json")
            and meta.get("sources") == sources)


def pretrain_split(pcfg: PretrainConfig, cache: Path, split_dir: Path, split: Any, encoders: list[str],
                   *, progress: bool = True) -> dict[str, Path]:
    """Pretrain (or reuse) each of `encoders` for one split; {encoder: weights file}."""
    sections = split_sections(split, pcfg.include_test_images)
    sources = [*sections, *(str(sl.path) for sl in pcfg.slides)]
    out: dict[str, Path] = {}
    tiles: tuple[TileSet, int] | None = None
    for enc in encoders:
        folder = split_dir / C.PRETRAIN_DIR / enc
        if _finished(folder / C.PRETRAIN_WEIGHTS, enc, pcfg, sources):
            out[enc] = folder / C.PRETRAIN_WEIGHTS
            continue
        if tiles is None:
            tiles = gather_tiles(cache, sections, pcfg)
        if progress:
            say(f"{split.name}: pretraining {enc} on {', '.join(sources)}")
        out[enc] = run_pretrain(tiles[0], folder, enc, pcfg, view_px=tiles[1], resume=True, progress=progress)
    return out

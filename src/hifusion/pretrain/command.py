"""`hifusion pretrain`: tiles from a cache's sections and/or extra slides -> one pretrained encoder file per
architecture (`<out>/encoder.safetensors` for one encoder, `<out>/<encoder>/encoder.safetensors` for several)."""

from __future__ import annotations

from pathlib import Path

from hifusion.config import PretrainConfig
from hifusion.errors import ConfigError
from hifusion.io import check_results_folder
from hifusion.pretrain.loop import run_pretrain
from hifusion.pretrain.tiles import gather_tiles


def check_encoder(name: str) -> None:
    """Fail before any tiling on an encoder name that is neither registered nor a timm model."""
    import timm

    from hifusion.models.encoders import list_encoders

    if name not in list_encoders() and not timm.is_model(name):
        raise ConfigError(f"unknown encoder {name!r}; use one of {', '.join(list_encoders())} or a timm model name")


def pretrain_command(cache: Path | None, sections: list[str] | None, pcfg: PretrainConfig, out: Path, *,
                     tile_mpp: float | None = None, tile_px: int | None = None, resume: bool = False,
                     progress: bool = True) -> dict[str, Path]:
    """Pretrain every encoder of `pcfg.encoders` on the same tiles; {encoder: weights file}."""
    if cache is None and not pcfg.slides:
        raise ConfigError("nothing to pretrain on: give a config (its cache's sections) and/or --slides")
    if sections is not None and not sections and not pcfg.slides:
        raise ConfigError("nothing to pretrain on: --sections is empty and no --slides are given")
    for enc in pcfg.encoders:
        check_encoder(enc)
    check_results_folder(out, resume)
    tiles, view_px = gather_tiles(cache, sections, pcfg, tile_mpp=tile_mpp, tile_px=tile_px)
    one = len(pcfg.encoders) == 1
    return {enc: run_pretrain(tiles, out if one else out / enc, enc, pcfg, view_px=view_px, resume=resume,
                              progress=progress) for enc in pcfg.encoders}

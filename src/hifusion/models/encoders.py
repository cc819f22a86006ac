"""Image encoders that map (B, 3, H, W) patches to feature maps (B, C, h, w).

Every encoder is built without downloading anything (``pretrained=False``); pretrained or foundation-model
weights come from a local file, or for a preset (`models.presets`) from the Hugging Face hub when the user asks
for it with the value `hub`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.resnet import BasicBlock, ResNet
from torch import Tensor, nn

from hifusion.checkpoint import file_sha256, tensors_sha256
from hifusion.errors import CheckpointError, ConfigError
from hifusion.geometry import PatchGeometry
from hifusion.models.presets import HUB, EncoderPreset, get_preset, input_view, list_presets
from hifusion.registries import Registry

__all__ = ["Encoder", "PooledEncoderModel", "create_encoder", "encoder_identity", "input_encoders", "list_encoders",
           "load_encoder_weights", "preset_inputs", "preset_weights", "register_encoder"]

TrunkBuilder = Callable[..., nn.Module]
_ENCODERS: Registry[TrunkBuilder] = Registry("unknown encoder {name!r}; known: {known}")

# Names of classifier heads of common checkpoints; an encoder trunk has none, so these keys are dropped on load.
_HEAD_PREFIXES = ("fc.", "head.", "classifier.", "head_dist.", "last_linear.", "head.fc.")
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def register_encoder(name: str) -> Callable[[TrunkBuilder], TrunkBuilder]:
    """Register a trunk builder ``(in_chans=..., **kwargs) -> nn.Module`` whose forward gives a feature map."""

    return _ENCODERS.register(name)


def list_encoders() -> list[str]:
    """Encoders registered by name; any timm model name is accepted as well."""
    return _ENCODERS.names()


@register_encoder("resnet10")
def _resnet10(in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """The paper's region encoder: a ResNet with one BasicBlock per stage (512-d), random init."""
    return ResNet(block=BasicBlock, layers=(1, 1, 1, 1), in_chans=in_chans, num_classes=0, global_pool="", **kwargs)


@register_encoder("resnet18")
def _resnet18(in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """The paper's spot encoder: a ResNet-18 trunk (no pooling, no classifier), random init."""
    return timm.create_model("resnet18", pretrained=False, in_chans=in_chans, num_classes=0, global_pool="", **kwargs)


def _timm_trunk(name: str, in_chans: int, **kwargs: Any) -> nn.Module:
    """Any timm model as a trunk; ViTs get ``dynamic_img_size`` so patch sizes other than the pretrained one work."""
    base = dict(pretrained=False, in_chans=in_chans, num_classes=0, global_pool="")
    if "dynamic_img_size" not in kwargs:
        try:
            return timm.create_model(name, **base, dynamic_img_size=True, **kwargs)
        except TypeError:
            pass  # not a ViT-style model: it has no such option
    try:
        return timm.create_model(name, **base, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"encoder {name!r}: invalid option ({exc})") from None


def _state_dict_from_file(path: Path) -> dict[str, Tensor]:
    """Read a state dict from a local file, unwrapping common containers ('state_dict', 'model')."""
    if not path.is_file():
        raise CheckpointError("encoder weights file not found", path)
    if path.suffix.lower() not in _WEIGHT_SUFFIXES:
        raise CheckpointError(f"encoder weights must be a {'/'.join(_WEIGHT_SUFFIXES)} file", path)
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any read failure means a bad checkpoint for the user
        raise CheckpointError(f"cannot read encoder weights ({type(exc).__name__}: {exc})", path) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError("encoder weights file does not hold a state dict of tensors", path)
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_encoder_weights(trunk: nn.Module, path: str | Path, *, preset: EncoderPreset | None = None) -> None:
    """Load a local state dict into ``trunk`` strictly.

    Without a preset a classifier head the trunk lacks is dropped first; with one the preset's key map is applied
    (published names -> timm names) and a file that does not fit names the preset and its first mismatched keys.
    """
    path = Path(path)
    sd = _state_dict_from_file(path)
    own = trunk.state_dict()
    if preset is not None:
        sd = preset.key_map(sd) if preset.key_map is not None else sd
    else:
        sd = {k: v for k, v in sd.items() if k in own or not k.startswith(tuple(_head_prefixes(trunk)))}
    problems = _mismatch(own, sd)
    if problems:
        who = f"preset '{preset.name}' ({preset.weight_file}: {preset.layout})" if preset else "encoder weights"
        raise CheckpointError(f"{who} do not fit the encoder: {problems}", path)
    trunk.load_state_dict(sd, strict=True)


def _head_prefixes(trunk: nn.Module) -> list[str]:
    """Key prefixes of classifier heads: common names plus the one the trunk's timm config declares."""
    heads = list(_HEAD_PREFIXES)
    cfg_head = (getattr(trunk, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(cfg_head, str):
        heads.append(cfg_head + ".")
    elif isinstance(cfg_head, (tuple, list)):
        heads.extend(h + "." for h in cfg_head)
    return heads


def _mismatch(own: Mapping[str, Tensor], sd: Mapping[str, Tensor]) -> str:
    """The first missing / unexpected / wrongly shaped keys of `sd` against `own`, in words ('' when it fits)."""
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) e.g. {', '.join(missing[:3])}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) e.g. {', '.join(unexpected[:3])}")
    bad = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        k = bad[0]
        parts.append(f"{len(bad)} shape mismatch(es), e.g. {k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}")
    return "; ".join(parts)


class Encoder(nn.Module):
    """Wraps a trunk so that every encoder gives a (B, C, h, w) feature map and reports ``out_channels``.

    Token models (ViTs) drop their prefix tokens and reshape patch tokens to the patch grid, so CNNs and ViTs
    plug into the same pooling code. `embed` gives one vector per image the way the published model forms it
    (`embedding`: 'mean' pools the map, the behaviour of every non-preset encoder; 'cls' the class token;
    'cls+mean' the class token and the mean of the patch tokens). `identity` names the encoder (preset or
    registered/timm name), for caches keyed on it.
    """

    def __init__(self, trunk: nn.Module, out_channels: int, *, frozen: bool = False, name: str = "",
                 preset: EncoderPreset | None = None) -> None:
        super().__init__()
        self.trunk = trunk
        self.out_channels = int(out_channels)
        self.identity = preset.name if preset is not None else name
        self.preset = preset
        self.embedding = preset.embedding if preset is not None else "mean"
        self.num_prefix_tokens = int(getattr(trunk, "num_prefix_tokens", 0))
        patch_embed = getattr(trunk, "patch_embed", None)
        self.patch_size: tuple[int, int] | None = (
            tuple(patch_embed.patch_size) if patch_embed is not None and hasattr(patch_embed, "patch_size") else None
        )
        self.frozen = False
        if frozen:
            self.freeze()

    @property
    def embed_dim(self) -> int:
        """Width of `embed`'s vectors."""
        return 2 * self.out_channels if self.embedding == "cls+mean" else self.out_channels

    def freeze(self) -> None:
        """Stop training the encoder: no gradients and batch-norm/dropout kept in eval mode."""
        self.frozen = True
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Encoder:
        """Keep a frozen encoder in eval mode whatever the parent module asks."""
        return super().train(mode and not self.frozen)

    def _features(self, x: Tensor) -> Tensor:
        return self.trunk.forward_features(x) if hasattr(self.trunk, "forward_features") else self.trunk(x)

    def forward(self, x: Tensor) -> Tensor:
        return self._to_map(x, self._features(x))

    def pooled(self, x: Tensor) -> Tensor:
        """`embed` in float32 (a 'mean' map is pooled in float32): the embedding that a frozen encoder's cache stores
        and every head reads, so a cached and a live embedding are the same numbers under autocast too."""
        if self.embedding == "mean":
            return self(x).float().mean(dim=(2, 3))
        return self.embed(x).float()

    def embed(self, x: Tensor) -> Tensor:
        """One vector (B, embed_dim) per image, formed as the published model forms its embedding."""
        if self.embedding == "mean":
            return self(x).mean(dim=(2, 3))
        feats = self._features(x)
        if feats.ndim != 3:
            raise ConfigError(f"encoder {self.identity!r}: embedding '{self.embedding}' needs a token model")
        if self.embedding == "cls":
            return feats[:, 0]
        if self.embedding != "cls+mean":
            raise ConfigError(f"encoder {self.identity!r}: embedding '{self.embedding}' is not built here")
        return torch.cat([feats[:, 0], feats[:, self.num_prefix_tokens :].mean(dim=1)], dim=-1)

    def _to_map(self, x: Tensor, feats: Tensor) -> Tensor:
        if feats.ndim == 3:  # tokens (B, N, C)
            tokens = feats[:, self.num_prefix_tokens :]
            gh, gw = self._grid(x, tokens.shape[1])
            return tokens.reshape(tokens.shape[0], gh, gw, tokens.shape[2]).permute(0, 3, 1, 2)
        if feats.ndim == 4 and feats.shape[1] != self.out_channels and feats.shape[-1] == self.out_channels:
            return feats.permute(0, 3, 1, 2)  # NHWC models (e.g. Swin, ConvNeXt-V2 variants in timm)
        return feats

    def _grid(self, x: Tensor, n_tokens: int) -> tuple[int, int]:
        """Patch grid of a token output, from the input size and patch size (falls back to a square grid)."""
        if self.patch_size is not None:
            gh, gw = x.shape[-2] // self.patch_size[0], x.shape[-1] // self.patch_size[1]
            if gh * gw == n_tokens:
                return gh, gw
        side = int(round(n_tokens**0.5))
        if side * side != n_tokens:
            raise ConfigError(f"cannot arrange {n_tokens} encoder tokens on a grid for input {tuple(x.shape[-2:])}")
        return side, side


def encoder_identity(encoder: Encoder, options: Mapping[str, Any] | None, weights: str | Path | None) -> dict[str, Any]:
    """What a frozen encoder's embeddings depend on besides their input, for the embedding cache's key (JSON values
    only): its name and options, and its weights: the SHA-256 of the weights file, or, with random weights (or a hub
    download), of its tensors themselves (a seed alone does not fix them across torch versions or model layouts)."""
    path = None if weights is None else Path(weights)
    if path is not None and path.is_file():
        digest = f"sha256:{file_sha256(path)}"
    else:  # no file, or no longer there: the weights in memory are what counts
        digest = f"random-init:{tensors_sha256(encoder.state_dict())}"
    return {"encoder": encoder.identity, "encoder_kwargs": json.loads(json.dumps(dict(options or {}), sort_keys=True,
                                                                                 default=str)),
            "weights": digest, "pool": encoder.embedding}


class PooledEncoderModel:
    """Mixin for models that read a spot patch through one encoder embedding (`features`) and predict from it
    (`from_features`); `forward` is `from_features(features(spot))`.

    With a frozen encoder the embedding of a stored patch never changes, so the fitters train and predict from
    embeddings computed once per section and D4 view (`inference.SectionEmbeddings`, the embedding cache) instead of
    running the encoder every epoch: `trains_on_embeddings`. Such a model opts out of AdaBN, whose BatchNorm
    statistics would move the embeddings off those its head was trained on. Needs `self.encoder` (an `Encoder`) and
    `self.encoder_source` ((options, weights) as given, for the cache key)."""

    encoder: Encoder
    encoder_source: tuple[dict[str, Any], str | Path | None]

    @property
    def trains_on_embeddings(self) -> bool:
        return self.encoder.frozen

    @property
    def adapts_batchnorm(self) -> bool:
        return not self.encoder.frozen

    def features(self, spot: Tensor) -> Tensor:
        """The encoder embedding (B, C) in float32; a frozen encoder runs in eval mode without gradients."""
        if not self.encoder.frozen:
            return self.encoder.pooled(spot)
        self.encoder.eval()
        with torch.no_grad():
            return self.encoder.pooled(spot)

    def embedding_identity(self) -> dict[str, Any] | None:
        """The encoder's part of the embedding cache key; None (nothing cached) while the encoder trains."""
        if not self.encoder.frozen:
            return None
        return encoder_identity(self.encoder, *self.encoder_source)


def preset_weights(preset: EncoderPreset, weights: str | Path, option: str = "encoder_weights") -> Path:
    """The local file of a preset's weights: the path given, or with `hub` the file downloaded into (or found in)
    the standard Hugging Face cache. Offline, gated or missing: a CheckpointError saying which file to put where."""
    if str(weights) != HUB:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CheckpointError(f"file not found; {preset.needs_file(option)}", path)
        return path
    if preset.hub_id is None:
        raise ConfigError(f"preset '{preset.name}' has no hub id; {preset.needs_file(option)}")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(preset.hub_id, preset.weight_file))
    except Exception as exc:  # offline, gated without a token, no such file: all mean the same to the user
        raise CheckpointError(f"hub download failed ({type(exc).__name__}); {preset.needs_file(option)}",
                              f"{preset.hub_id}/{preset.weight_file}") from None


def _preset_trunk(preset: EncoderPreset, in_chans: int, overrides: dict[str, Any]) -> nn.Module:
    """Build a preset's timm trunk; `overrides` (the model's encoder_kwargs, e.g. depth=2) win over its options."""
    if preset.package:
        raise ConfigError(f"encoder preset '{preset.name}' needs the package {preset.package}; hifusion does not "
                          f"build it ({preset.notes.split('.')[0]}): extract its features with that package")
    try:
        return timm.create_model(preset.arch, pretrained=False, in_chans=in_chans,
                                 **preset.timm_options(overrides))
    except TypeError as exc:
        raise ConfigError(f"encoder preset '{preset.name}': invalid option ({exc})") from None


def create_encoder(
    name: str,
    *,
    weights: str | Path | None = None,
    frozen: bool = False,
    in_chans: int = 3,
    weights_option: str = "encoder_weights",
    **timm_kwargs: Any,
) -> Encoder:
    """Build encoder ``name`` (a preset, a registered name or any timm model), optionally load weights and freeze it.

    Weights: a local file, or for a preset with a hub id the value `hub` (downloaded on request only).
    `weights_option` is the model option that holds them, named in error messages."""
    preset = get_preset(name)
    if preset is not None:
        trunk = _preset_trunk(preset, in_chans, timm_kwargs)
        if weights is not None:
            load_encoder_weights(trunk, preset_weights(preset, weights, weights_option), preset=preset)
    else:
        if weights is not None and str(weights) == HUB:
            raise ConfigError(f"{weights_option}: '{HUB}' is for encoder presets; {name!r} is not one "
                              f"(presets: {', '.join(p.name for p in list_presets())})")
        trunk = _plain_trunk(name, in_chans, timm_kwargs)
        if weights is not None:
            load_encoder_weights(trunk, weights)
    out_channels = getattr(trunk, "num_features", None)
    if out_channels is None:
        raise ConfigError(f"encoder {name!r} does not report its feature width (num_features)")
    return Encoder(trunk, out_channels, frozen=frozen, name=name, preset=preset)


def _plain_trunk(name: str, in_chans: int, timm_kwargs: dict[str, Any]) -> nn.Module:
    if name in _ENCODERS:
        try:
            return _ENCODERS.get(name)(in_chans=in_chans, **timm_kwargs)
        except TypeError as exc:
            raise ConfigError(f"encoder {name!r}: invalid option ({exc})") from None
    if timm.is_model(name):
        return _timm_trunk(name, in_chans, **timm_kwargs)
    raise ConfigError(f"unknown encoder {name!r}; use a preset ({', '.join(p.name for p in list_presets())}), "
                      f"one of {', '.join(list_encoders())} or a timm model name")


def input_encoders(model: nn.Module) -> dict[str, Encoder]:
    """The encoder each image input of a model feeds: `spot_encoder` (else `encoder`) the spot, `region_encoder`
    the region; the attribute names every image model of the package uses."""
    found = {"spot": getattr(model, "spot_encoder", None) or getattr(model, "encoder", None),
             "region": getattr(model, "region_encoder", None)}
    return {k: v for k, v in found.items() if isinstance(v, Encoder)}


def preset_inputs(model: nn.Module, geometry: PatchGeometry) -> dict[str, dict[str, Any]]:
    """Per image input fed by a preset encoder, its view of the cache (`presets.input_view`): what a checkpoint's
    metadata stores under `inputs`. Empty for a model without presets (its inputs are prepared as always)."""
    uses_region = bool(getattr(model, "uses_region", True))
    out = {}
    for role, enc in input_encoders(model).items():
        if enc.preset is None or (role == "region" and not uses_region):
            continue
        out[role] = input_view(enc.preset, role, geometry)
    return out

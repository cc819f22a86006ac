"""Image encoders that map (B, 3, H, W) patches to feature maps (B, C, h, w).

Every encoder is built without downloading anything (``pretrained=False``); pretrained or foundation-model
weights come from a local file only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models.resnet import BasicBlock, ResNet
from torch import Tensor, nn

from hifusion.errors import CheckpointError, ConfigError

__all__ = ["Encoder", "create_encoder", "list_encoders", "load_encoder_weights", "register_encoder"]

TrunkBuilder = Callable[..., nn.Module]
_ENCODERS: dict[str, TrunkBuilder] = {}

# Names of classifier heads of common checkpoints; an encoder trunk has none, so these keys are dropped on load.
_HEAD_PREFIXES = ("fc.", "head.", "classifier.", "head_dist.", "last_linear.", "head.fc.")
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def register_encoder(name: str) -> Callable[[TrunkBuilder], TrunkBuilder]:
    """Register a trunk builder ``(in_chans=..., **kwargs) -> nn.Module`` whose forward gives a feature map."""

    def decorator(builder: TrunkBuilder) -> TrunkBuilder:
        _ENCODERS[name] = builder
        return builder

    return decorator


def list_encoders() -> list[str]:
    """Encoders registered by name; any timm model name is accepted as well."""
    return sorted(_ENCODERS)


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


def load_encoder_weights(trunk: nn.Module, path: str | Path) -> None:
    """Load a local state dict into ``trunk`` strictly, after dropping a classifier head the trunk lacks."""
    path = Path(path)
    sd = _state_dict_from_file(path)
    own = trunk.state_dict()
    heads = list(_HEAD_PREFIXES)
    cfg_head = (getattr(trunk, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(cfg_head, str):
        heads.append(cfg_head + ".")
    elif isinstance(cfg_head, (tuple, list)):
        heads.extend(h + "." for h in cfg_head)
    sd = {k: v for k, v in sd.items() if k in own or not k.startswith(tuple(heads))}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) e.g. {', '.join(unexpected[:3])}")
        raise CheckpointError(f"encoder weights do not fit the encoder: {'; '.join(parts)}", path)
    bad_shapes = [k for k, v in sd.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad_shapes:
        k = bad_shapes[0]
        raise CheckpointError(
            f"encoder weights do not fit the encoder: {len(bad_shapes)} shape mismatch(es), e.g. {k} "
            f"{tuple(sd[k].shape)} vs {tuple(own[k].shape)}",
            path,
        )
    trunk.load_state_dict(sd, strict=True)


class Encoder(nn.Module):
    """Wraps a trunk so that every encoder gives a (B, C, h, w) feature map and reports ``out_channels``.

    Token models (ViTs) drop their prefix tokens and reshape patch tokens to the patch grid, so CNNs and ViTs
    plug into the same pooling code.
    """

    def __init__(self, trunk: nn.Module, out_channels: int, *, frozen: bool = False) -> None:
        super().__init__()
        self.trunk = trunk
        self.out_channels = int(out_channels)
        self.num_prefix_tokens = int(getattr(trunk, "num_prefix_tokens", 0))
        patch_embed = getattr(trunk, "patch_embed", None)
        self.patch_size: tuple[int, int] | None = (
            tuple(patch_embed.patch_size) if patch_embed is not None and hasattr(patch_embed, "patch_size") else None
        )
        self.frozen = False
        if frozen:
            self.freeze()

    def freeze(self) -> None:
        """Stop training the encoder: no gradients and batch-norm/dropout kept in eval mode."""
        self.frozen = True
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Encoder:
        """Keep a frozen encoder in eval mode whatever the parent module asks."""
        return super().train(mode and not self.frozen)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.trunk.forward_features(x) if hasattr(self.trunk, "forward_features") else self.trunk(x)
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


def create_encoder(
    name: str,
    *,
    weights: str | Path | None = None,
    frozen: bool = False,
    in_chans: int = 3,
    **timm_kwargs: Any,
) -> Encoder:
    """Build encoder ``name`` (registered name or any timm model), optionally load local weights and freeze it."""
    if name in _ENCODERS:
        builder = _ENCODERS[name]
        try:
            trunk = builder(in_chans=in_chans, **timm_kwargs)
        except TypeError as exc:
            raise ConfigError(f"encoder {name!r}: invalid option ({exc})") from None
    elif timm.is_model(name):
        trunk = _timm_trunk(name, in_chans, **timm_kwargs)
    else:
        raise ConfigError(f"unknown encoder {name!r}; use one of {', '.join(list_encoders())} or a timm model name")
    if weights is not None:
        load_encoder_weights(trunk, weights)
    out_channels = getattr(trunk, "num_features", None)
    if out_channels is None:
        raise ConfigError(f"encoder {name!r} does not report its feature width (num_features)")
    return Encoder(trunk, out_channels, frozen=frozen)

"""Published pathology (and reference) image encoders by name: how each is built, fed and loaded.

A preset is one registry entry (`EncoderPreset`): the timm architecture and constructor options, how the published
model forms its embedding, its input size and microns per pixel, its normalisation, the layout of its published
weight file (and the key map onto timm's layout), the Hugging Face hub id and whether it is gated, and any package it
needs. `models.encoders.create_encoder` builds a preset where it builds any encoder name; the training code stores the
preset's input geometry and normalisation in the checkpoint (`input_view`), so training, benchmark scoring and
`hifusion predict` feed it the same pixels.

Facts come from the model cards and public loading code (timm, HEST, TRIDENT); where one is uncertain the entry's
`notes` say so. No weights are downloaded unless the user asks for them (`encoder_weights: hub`), and never on import.
Nothing here imports torch or timm at module level, so the table can be listed quickly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hifusion.errors import ConfigError
from hifusion.geometry import PatchGeometry
from hifusion.registries import Registry

__all__ = ["HUB", "EncoderPreset", "get_preset", "input_view", "list_presets", "register_preset"]

HUB = "hub"  # the weights option value that asks for the hub download (standard Hugging Face cache)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# pooled feature map | class token | class token ++ mean of patch tokens | an attentional pooler (not built here)
EMBEDDINGS = ("mean", "cls", "cls+mean", "attn-pool")

StateDict = dict[str, Any]
KeyMap = Callable[[StateDict], StateDict]


@dataclass(frozen=True)
class EncoderPreset:
    """One published encoder: everything needed to build it, feed it and load its published weight file."""

    name: str
    title: str  # the model and its paper, for the table
    arch: str  # timm architecture name
    options: Mapping[str, Any]  # timm constructor options ('SwiGLUPacked' / 'SiLU' strings resolved at build time)
    feature_dim: int  # width of the published embedding
    embedding: str  # one of EMBEDDINGS
    input_px: int  # side of the published input
    mpp: float | None  # microns per pixel of that input; None = no physical scale known (the cached patch is used)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weight_file: str  # file name of the published weights
    layout: str  # the published file's key layout, in words
    params_m: float  # approximate parameter count of the trunk, millions
    hub_id: str | None = None
    gated: bool = False
    package: str | None = None  # a package the architecture needs beyond hifusion's own
    key_map: KeyMap | None = None  # published key names -> timm key names (None: already timm's)
    notes: str = ""  # uncertain facts
    patch_size: int = 0  # ViT patch side (0 for CNNs): input sides are kept multiples of it

    def __post_init__(self) -> None:
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"preset {self.name!r}: embedding must be one of {EMBEDDINGS}, got {self.embedding!r}")

    @property
    def fov_um(self) -> float | None:
        """Field of view of the published input in microns (None where the scale is unknown)."""
        return None if self.mpp is None else self.input_px * self.mpp

    def timm_options(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Constructor options for `timm.create_model` with layer names resolved; `overrides` win (e.g. depth=2)."""
        import torch
        from timm.layers import SwiGLUPacked

        named = {"SwiGLUPacked": SwiGLUPacked, "SiLU": torch.nn.SiLU}
        opts = {k: named.get(v, v) if isinstance(v, str) else v for k, v in self.options.items()}
        opts.update(overrides or {})
        return opts

    def needs_file(self, option: str = "encoder_weights") -> str:
        """What to put where, for error messages."""
        source = f" from {self.hub_id}" if self.hub_id else ""
        gate = " (gated: request access on its hub page, then `hf auth login`)" if self.gated else ""
        return (f"preset '{self.name}' needs {self.weight_file}{source}{gate}: pass {option}: "
                f"/path/to/{self.weight_file}" + (f" or {option}: {HUB}" if self.hub_id else ""))


_PRESETS: Registry[EncoderPreset] = Registry("unknown encoder preset {name!r}; known: {known}")


def register_preset(preset: EncoderPreset) -> EncoderPreset:
    """Add a preset to the registry (its name must be new)."""
    if preset.name in _PRESETS and _PRESETS.get(preset.name) != preset:
        raise ValueError(f"encoder preset {preset.name!r} is already registered")
    return _PRESETS.add(preset.name, preset)


def list_presets() -> list[EncoderPreset]:
    """Registered presets in registration order."""
    return _PRESETS.values()


def get_preset(name: str) -> EncoderPreset | None:
    """The preset called `name`, or None when `name` is not a preset (a registered encoder or timm name)."""
    return _PRESETS.find(name)


# ------------------------------------------------------------------------------------------------------ key maps
def _hf_dinov2_to_timm(sd: StateDict) -> StateDict:
    """Hugging Face transformers `Dinov2Model` keys -> timm `VisionTransformer` keys (query/key/value fused).

    `mask_token` (used only for masked pre-training) is dropped; an optional `dinov2.` prefix (a model saved from a
    task head wrapper) is removed. Unknown keys are kept under their names, so strict loading reports them.
    """
    import torch

    sd = {k.removeprefix("dinov2."): v for k, v in sd.items()}
    simple = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
              "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
              "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
              "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
    inner = {"norm1": "norm1", "norm2": "norm2", "attention.output.dense": "attn.proj",
             "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma", "mlp.fc1": "mlp.fc1",
             "mlp.fc2": "mlp.fc2"}
    out: StateDict = {}
    qkv: dict[tuple[int, str], dict[str, Any]] = {}
    for key, value in sd.items():
        if key == "embeddings.mask_token":
            continue
        if key in simple:
            out[simple[key]] = value
            continue
        parts = key.split(".")
        if len(parts) >= 4 and parts[:2] == ["encoder", "layer"] and parts[2].isdigit():
            i, rest = int(parts[2]), ".".join(parts[3:])
            stem, _, leaf = rest.rpartition(".")
            if stem.startswith("attention.attention.") and stem.rsplit(".", 1)[1] in ("query", "key", "value"):
                qkv.setdefault((i, leaf), {})[stem.rsplit(".", 1)[1]] = value
                continue
            if stem in inner:
                out[f"blocks.{i}.{inner[stem]}.{leaf}"] = value
                continue
            if rest in inner:  # layer-scale parameters have no weight/bias leaf
                out[f"blocks.{i}.{inner[rest]}"] = value
                continue
        out[key] = value
    for (i, leaf), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            out.update({f"encoder.layer.{i}.attention.attention.{p}.{leaf}": v for p, v in parts.items()})
            continue
        out[f"blocks.{i}.attn.qkv.{leaf}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
    return out


def _ciga_to_timm(sd: StateDict) -> StateDict:
    """Ciga et al.'s Lightning checkpoint: keep `model.resnet.*` without that prefix, drop the `fc` projection."""
    prefix = "model.resnet."
    kept = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not kept:  # not this layout at all: give the keys back as they are, so strict loading names them
        return dict(sd)
    return {k: v for k, v in kept.items() if not k.startswith("fc.")}


def _drop_fc(sd: StateDict) -> StateDict:
    """A torchvision/timm ImageNet classifier: the trunk has no `fc` head."""
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


# --------------------------------------------------------------------------------------------------- the presets
_VIT = {"num_classes": 0, "global_pool": "", "dynamic_img_size": True}
_TIMM_LAYOUT = "timm VisionTransformer keys as published (blocks.N.*, cls_token, pos_embed), no head"

register_preset(EncoderPreset(
    name="uni", title="UNI (Chen et al. 2024, Nat Med)", arch="vit_large_patch16_224",
    options={**_VIT, "img_size": 224, "init_values": 1e-5}, feature_dim=1024, embedding="cls", input_px=224, mpp=0.5,
    mean=IMAGENET_MEAN, std=IMAGENET_STD, weight_file="pytorch_model.bin", layout=_TIMM_LAYOUT, params_m=303.4,
    hub_id="MahmoodLab/UNI", gated=True, patch_size=16,
    notes="0.5 um/px: trained on 20x tiles (model card and HEST use 224 px at 20x)."))
register_preset(EncoderPreset(
    name="uni2-h", title="UNI2-h (MahmoodLab 2025)", arch="vit_giant_patch14_224",
    options={**_VIT, "img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
             "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "no_embed_class": True, "mlp_layer": "SwiGLUPacked",
             "act_layer": "SiLU", "reg_tokens": 8},
    feature_dim=1536, embedding="cls", input_px=224, mpp=0.5, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    weight_file="pytorch_model.bin", layout=_TIMM_LAYOUT + "; 8 register tokens", params_m=681.4,
    hub_id="MahmoodLab/UNI2-h", gated=True, patch_size=14, notes="0.5 um/px as UNI (20x)."))
register_preset(EncoderPreset(
    name="virchow2", title="Virchow2 (Zimmermann et al. 2024)", arch="vit_huge_patch14_224",
    options={**_VIT, "img_size": 224, "init_values": 1e-5, "mlp_ratio": 5.3375, "reg_tokens": 4,
             "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU"},
    feature_dim=2560, embedding="cls+mean", input_px=224, mpp=0.5, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    weight_file="pytorch_model.bin", layout=_TIMM_LAYOUT + "; 4 register tokens, pos_embed covers them",
    params_m=631.2, hub_id="paige-ai/Virchow2", gated=True, patch_size=14,
    notes="Trained on mixed magnifications (5x-40x); 0.5 um/px follows the model card's 224 px at 20x. "
          "Embedding = class token ++ mean of the 256 patch tokens (registers excluded), 2 x 1280."))
register_preset(EncoderPreset(
    name="h-optimus-0", title="H-optimus-0 (Bioptimus 2024)", arch="vit_giant_patch14_reg4_dinov2",
    options={**_VIT, "img_size": 224, "init_values": 1e-5}, feature_dim=1536, embedding="cls", input_px=224,
    mpp=0.5, mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517),
    weight_file="pytorch_model.bin", layout=_TIMM_LAYOUT + "; 4 register tokens", params_m=1134.8,
    hub_id="bioptimus/H-optimus-0", gated=True, patch_size=14,
    notes="0.5 um/px (model card: 224 px tiles at 0.5 um/px)."))
register_preset(EncoderPreset(
    name="gigapath", title="Prov-GigaPath tile encoder (Xu et al. 2024, Nature)", arch="vit_giant_patch14_dinov2",
    options={**_VIT, "img_size": 224, "patch_size": 16, "mlp_ratio": 5.33334, "init_values": 1e-5},
    feature_dim=1536, embedding="cls", input_px=224, mpp=0.5, mean=IMAGENET_MEAN, std=IMAGENET_STD,
    weight_file="pytorch_model.bin", layout=_TIMM_LAYOUT, params_m=1135.0, hub_id="prov-gigapath/prov-gigapath",
    gated=True, patch_size=16,
    notes="Despite the timm name the published tile encoder uses 16 px patches (its config.json); its demo resizes "
          "to 256 and centre-crops 224 at 20x (0.5 um/px)."))
register_preset(EncoderPreset(
    name="phikon-v2", title="Phikon-v2 (Filiot et al. 2024)", arch="vit_large_patch16_224",
    options={**_VIT, "img_size": 224, "init_values": 1e-5}, feature_dim=1024, embedding="cls", input_px=224,
    mpp=0.5, mean=IMAGENET_MEAN, std=IMAGENET_STD, weight_file="model.safetensors",
    layout="Hugging Face transformers Dinov2Model (embeddings.*, encoder.layer.N.attention.attention.query/key/"
           "value, layer_scale1.lambda1, layernorm.*); mapped onto timm (q/k/v fused), mask_token dropped",
    params_m=303.4, hub_id="owkin/phikon-v2", gated=False, key_map=_hf_dinov2_to_timm, patch_size=16,
    notes="0.5 um/px (20x, as HEST/TRIDENT use it). Not gated as far as we know (licence terms apply). At input "
          "sizes other than 224 timm's position-embedding interpolation may differ slightly from transformers'."))
register_preset(EncoderPreset(
    name="conch", title="CONCH image tower (Lu et al. 2024, Nat Med)", arch="vit_base_patch16_224",
    options={}, feature_dim=512, embedding="attn-pool", input_px=448, mpp=0.5, mean=CLIP_MEAN, std=CLIP_STD,
    weight_file="pytorch_model.bin", layout="open_clip CoCa (visual.trunk.* timm ViT-B/16, visual.attn_pool_*)",
    params_m=90.0, hub_id="MahmoodLab/CONCH", gated=True, package="conch (pip install "
    "git+https://github.com/Mahmoodlab/CONCH.git)", patch_size=16,
    notes="Not built here: its embedding comes from CoCa's attentional pooler, which timm does not provide. "
          "448 px at 20x follows the open_clip config 'conch_ViT-B-16' and TRIDENT (512 px tiles resized); "
          "params approximate."))
register_preset(EncoderPreset(
    name="ciga-resnet18", title="Ciga et al. 2022 self-supervised ResNet-18", arch="resnet18",
    options={"num_classes": 0, "global_pool": ""}, feature_dim=512, embedding="mean", input_px=224, mpp=None,
    mean=IMAGENET_MEAN, std=IMAGENET_STD, weight_file="tenpercent_resnet18.ckpt",
    layout="Lightning checkpoint: state_dict with keys model.resnet.<torchvision resnet18 key>; fc dropped",
    params_m=11.2, key_map=_ciga_to_timm,
    notes="Trained on tiles of many magnifications: no single um/px (the cached patch is used as it is). "
          "Its README feeds 224 px tiles; the normalisation is not stated there (ImageNet statistics assumed). "
          "Weights from the authors' GitHub release (no hub id)."))
register_preset(EncoderPreset(
    name="resnet50-imagenet", title="ResNet-50, ImageNet supervised (torchvision V1 weights)", arch="resnet50",
    options={"num_classes": 0, "global_pool": ""}, feature_dim=2048, embedding="mean", input_px=224, mpp=None,
    mean=IMAGENET_MEAN, std=IMAGENET_STD, weight_file="model.safetensors",
    layout="timm/torchvision ResNet keys (conv1, bn1, layer1-4); the fc classifier is dropped", params_m=23.5,
    hub_id="timm/resnet50.tv_in1k", gated=False, key_map=_drop_fc,
    notes="Natural images: no physical scale (the cached patch is used as it is); HEST evaluates it at 0.5 um/px. "
          "torchvision's resnet50-0676ba61.pth loads as well (same keys)."))


# ---------------------------------------------------------------------------------------------- input geometry
def _multiple(px: float, step: int) -> int:
    """`px` rounded down to a multiple of `step` (at least one step)."""
    step = max(1, int(step))
    return max(step, int(math.floor(px / step + 1e-9)) * step)


def input_view(preset: EncoderPreset, role: str, geometry: PatchGeometry) -> dict[str, Any]:
    """How a cached (spot, region) pair becomes this preset's input, as primitives for the checkpoint metadata.

    `spot` (the encoder of a spot model, or HiFusion's spot encoder): the centre crop covering the preset's field of
    view (input_px x mpp), taken from the spot patch, or from the region patch when the spot patch is smaller, resized
    to input_px. `region` (HiFusion's region encoder): the region's field of view is kept (it is the context the model
    is about) and resampled to the preset's um/px, rounded down to whole ViT patches; the encoder then sees tissue at
    the scale it was trained on. A preset without a known scale keeps the cached patch as it is. Keys: encoder,
    source ('spot' or 'region'), crop_px (side of the centre crop at the cache's scale), px (side fed to the encoder),
    mpp, mean, std.
    """
    pixel_size, spot_px, region_px = geometry.pixel_size, geometry.spot_px, geometry.region_px
    cache_um = {"spot": spot_px * pixel_size, "region": region_px * pixel_size}
    sides = {"spot": int(spot_px), "region": int(region_px)}
    view: dict[str, Any] = {"encoder": preset.name, "mpp": preset.mpp, "mean": list(preset.mean),
                            "std": list(preset.std)}
    if role not in sides:
        raise ConfigError(f"encoder preset '{preset.name}': unknown input '{role}' (spot or region)")
    if preset.mpp is None:
        return {**view, "source": role, "crop_px": sides[role], "px": sides[role]}
    if role == "region":
        px = _multiple(cache_um["region"] / preset.mpp, preset.patch_size or 1)
        crop = min(sides["region"], round(px * preset.mpp / pixel_size))
        return {**view, "source": "region", "crop_px": int(crop), "px": int(px)}
    fov = float(preset.fov_um or 0.0)
    source = "spot" if fov <= cache_um["spot"] * (1 + 1e-6) else "region"
    crop = min(sides[source], max(1, round(fov / pixel_size)))
    return {**view, "source": source, "crop_px": int(crop), "px": int(preset.input_px)}

"""Image preprocessing and test-time adaptation shared by training, benchmarking and whole-slide prediction.

One implementation, so that a spot predicted by `predict` and the same spot scored in a benchmark see the same
pixels. Nothing here imports Lightning, training or evaluation code.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hifusion import stain
from hifusion.checkpoint_meta import CheckpointMeta
from hifusion.constants import IMAGE_INPUTS

D4_SIZE = 8  # the flips and rotations of the square


def standardise(x: torch.Tensor, mode: str, mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    """Float [0, 1] (B,3,H,W) -> model input. `patch`: per image, per channel (the paper); `dataset`: fixed stats.

    Per-patch standardisation removes stain intensity; the dataset mode keeps it (the design brief, section 8).
    """
    if mode == "patch":
        m = x.mean(dim=(2, 3), keepdim=True)
        s = x.std(dim=(2, 3), keepdim=True).clamp_min(1e-3)
        return (x - m) / s
    if mode == "dataset":
        mt = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        st = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mt) / st
    raise ValueError(f"unknown normalisation '{mode}'")


def normalise_images(x: torch.Tensor, mode: str, mean: list[float] | None, std: list[float] | None) -> torch.Tensor:
    """uint8 (B,3,H,W) -> standardised float input (no stain handling)."""
    return standardise(x.float().div_(255.0), mode, mean, std)


def memory_format(channels_last: bool | None, device: torch.device) -> torch.memory_format:
    """Memory format of the image batches; `None` means channels_last on CUDA only."""
    use = device.type == "cuda" if channels_last is None else channels_last
    return torch.channels_last if use else torch.contiguous_format


def encoder_view(x: torch.Tensor, view: Mapping[str, Any]) -> torch.Tensor:
    """Float (B,3,S,S) patches -> a preset encoder's input: the centre `crop_px` square, resized (antialiased) to
    `px` on the device (`models.presets.input_view` decides both from the cache's and the preset's scales)."""
    crop, px = int(view["crop_px"]), int(view["px"])
    h, w = x.shape[-2:]
    if crop > min(h, w):
        raise ValueError(f"encoder '{view.get('encoder')}' needs a {crop} px crop of {h}x{w} px patches")
    top, left = (h - crop) // 2, (w - crop) // 2
    x = x[..., top : top + crop, left : left + crop]
    if crop == px:
        return x
    return F.interpolate(x, size=(px, px), mode="bilinear", align_corners=False, antialias=True)


def encoder_views(xs: Sequence[torch.Tensor | None], views: Mapping[str, Mapping[str, Any]],
                  names: Sequence[str] = IMAGE_INPUTS) -> list[torch.Tensor | None]:
    """Each named input replaced by its preset view (`CheckpointMeta.views`, taken from the patch it names as
    source); inputs without a view, and every input of a checkpoint without views, are left as they are."""
    if not views:
        return list(xs)
    by_name = dict(zip(names, xs, strict=True))
    out = []
    for name, x in zip(names, xs, strict=True):
        view = views.get(name)
        if view is None or x is None:
            out.append(x)
            continue
        src = by_name.get(view["source"])
        if src is None:
            raise ValueError(f"encoder '{view['encoder']}' crops its {name} input from the {view['source']} patch, "
                             "which the batch lacks")
        out.append(encoder_view(src, view))
    return out


def input_sources(views: Mapping[str, Mapping[str, Any]], used: Sequence[str]) -> set[str]:
    """The batch images a model's inputs `used` are made from (a preset view may crop the spot from the region)."""
    return set(used) | {views[n]["source"] for n in used if n in views}


def preprocess_images(
    images: Sequence[torch.Tensor | None],
    meta: CheckpointMeta,
    *,
    source: torch.Tensor | None = None,
    augment: bool = False,
    fmt: torch.memory_format = torch.contiguous_format,
    names: Sequence[str] = IMAGE_INPUTS,
    keep: Sequence[str] | None = None,
) -> list[torch.Tensor | None]:
    """uint8 image batches of the same spots (spot, region, ...) -> model inputs, with the checkpoint's stain rules.

    Order: each input's preset view (centre crop and resize, `encoder_views`; only inputs in `keep` are returned),
    Reinhard normalisation of each spot's section onto the training reference (`source`: (B, 2, 3) LAB
    statistics of the spot's section), then, when training, one resolution and colour augmentation per spot shared by
    all its images, then standardisation (a preset's own mean/std for its inputs). Without stain options and presets
    this is exactly `normalise_images`.
    """
    st = meta.stain or {}
    xs = [None if x is None else x.float().div_(255.0) for x in images]
    names = [*names[: len(xs)], *(f"image{i}" for i in range(len(names), len(xs)))]  # one name per image
    xs = encoder_views(xs, meta.views, names)
    if keep is not None:
        xs = [x if n in keep else None for x, n in zip(xs, names, strict=True)]
    if st.get("normalise", "none") == "reinhard":
        if source is None:
            raise ValueError("stain normalisation 'reinhard' needs the section's stain statistics in the batch")
        ref = torch.as_tensor(st["reference"], dtype=torch.float32, device=xs[0].device)
        src = source.to(device=xs[0].device, dtype=torch.float32)
        xs = [None if x is None else stain.reinhard(x, src, ref) for x in xs]
    if augment and st.get("augment"):
        first = next(x for x in xs if x is not None)
        spread = float(st["augment"].get("resolution", 0.0))
        if spread > 0:
            levels = stain.resolution_levels(first.shape[0], spread, first)
            xs = [None if x is None else stain.apply_resolution(x, levels, spread) for x in xs]
        params = stain.colour_params(first.shape[0], st["augment"], first)
        xs = [None if x is None else stain.apply_colour(x, params) for x in xs]
    return [None if x is None else _standardise_input(x, meta, n).contiguous(memory_format=fmt)
            for x, n in zip(xs, names, strict=True)]


def _standardise_input(x: torch.Tensor, meta: CheckpointMeta, name: str) -> torch.Tensor:
    """A preset encoder's input with the preset's mean/std; any other input with the run's normalisation."""
    view = meta.views.get(name)
    if view is not None:
        return standardise(x, "dataset", view["mean"], view["std"])
    norm = meta.normalisation
    return standardise(x, norm["mode"], norm.get("mean"), norm.get("std"))


def rescale_warnings(meta: CheckpointMeta) -> list[str]:
    """One line per preset encoder whose inputs are resized from the cache's scale (its um/px named beside the
    cache's): what a run warns once."""
    views = meta.views
    pixel_size = float(meta.patch.pixel_size)
    out: dict[str, str] = {}
    for view in views.values():
        if view.get("mpp") is None or view["encoder"] in out or int(view["crop_px"]) == int(view["px"]):
            continue
        out[view["encoder"]] = (f"encoder '{view['encoder']}' expects {float(view['mpp']):g} um/px, the cache holds "
                                f"{pixel_size:.3g} um/px: patches are resized {pixel_size / float(view['mpp']):.3g}x "
                                "on the device")
    return list(out.values())


# ----------------------------------------------------------------------------------------------------- test time
def d4(x: torch.Tensor | None, k: int) -> torch.Tensor | None:
    """The k-th element (0-7) of the dihedral group on the last two axes: k // 4 flips, k % 4 quarter turns."""
    if x is None:
        return None
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k % 4, dims=(-2, -1)) if k % 4 else x


def tta_mean(forward: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], spot: torch.Tensor,
             region: torch.Tensor | None, tta: bool) -> torch.Tensor:
    """Prediction averaged over the 8 D4 views (the same view of spot and region), or the plain one."""
    if not tta:
        return forward(spot, region)
    total = None
    for k in range(D4_SIZE):
        p = forward(d4(spot, k), d4(region, k)).float()
        total = p if total is None else total + p
    return total / D4_SIZE


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@contextmanager
def adabn(owner: Any, batches: Iterable[Any], forward: Callable[[Any], Any]) -> Iterator[None]:
    """Within the block, `owner.model` is a copy whose BatchNorm statistics were re-estimated on `batches` of the
    target section (AdaBN, Li et al. 2016): `forward(batch)` runs `owner.model` once per batch.

    Running statistics are reset and averaged with equal weight over the batches (momentum None); every other layer
    stays in eval mode (no dropout) and no weight changes. The original model is put back afterwards. With no batch
    the trained statistics are kept. A model whose `adapts_batchnorm` is False is left as it is.
    """
    orig = owner.model
    if not has_batchnorm(orig) or not getattr(orig, "adapts_batchnorm", True):  # e.g. a probe on frozen features
        yield
        return
    adapted = copy.deepcopy(orig)
    adapted.eval()
    for m in adapted.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
            m.train()
    owner.model = adapted
    try:
        seen = 0
        with torch.no_grad():
            for b in batches:
                forward(b)
                seen += 1
        if seen:
            adapted.eval()
        else:  # nothing to estimate from (e.g. a one-spot section): keep the trained statistics
            owner.model = orig
        yield
    finally:
        owner.model = orig


# ------------------------------------------------------------------------------------------------------ calibration
def centre_on(pred: np.ndarray, level: np.ndarray, factor: float = 1.0) -> np.ndarray:
    """Each gene's predictions moved so that their section mean is `level` (the training mean), with the spatial
    part around it scaled by `factor`: the level of a whole section is what a slide's stain moves."""
    p = np.asarray(pred, dtype=np.float64)
    return (np.asarray(level, np.float64)[None, :] + factor * (p - p.mean(axis=0, keepdims=True))).astype(np.float32)


def shrink_factor(val_pred: Sequence[np.ndarray], val_truth: Sequence[np.ndarray]) -> float:
    """Least-squares factor on the section-centred spatial part over validation spots (all genes), in [0, 1].

    One factor for all genes: with a few dozen validation spots a per-gene factor would mostly fit noise.
    """
    num = den = 0.0
    for p, t in zip(val_pred, val_truth, strict=True):
        if len(p) < 2:
            continue
        pc = np.asarray(p, np.float64) - np.mean(p, axis=0, keepdims=True)
        tc = np.asarray(t, np.float64) - np.mean(t, axis=0, keepdims=True)
        num += float((pc * tc).sum())
        den += float((pc * pc).sum())
    if den <= 0:
        return 0.0
    return float(np.clip(num / den, 0.0, 1.0))



def smooth_spatial(pred: np.ndarray, coords: np.ndarray, sigma: float) -> np.ndarray:
    """Each spot's prediction replaced by a Gaussian-weighted mean over the spots around it.

    `sigma` is in the units of `coords` (the benchmark and `predict` pass microns, so one value means the same on
    the legacy ST array, Visium and a `predict` grid); the kernel is cut at 3 sigma and each spot's weights are
    renormalised (spots at the tissue edge average over fewer neighbours). Expression varies over several spots while
    an image model's errors from one patch to the next are largely independent, so averaging neighbours removes
    part of the error and little of the pattern. Uses the predictions and the spot layout only.
    """
    p = np.asarray(pred, dtype=np.float64)
    if not 0 <= sigma < float("inf"):
        raise ValueError(f"smoothing sigma must be a finite number >= 0, got {sigma}")
    xy = np.asarray(coords, dtype=np.float64)
    if xy.shape != (len(p), 2):
        raise ValueError(f"smoothing needs one (x, y) per spot: coordinates {xy.shape} for {len(p)} predictions")
    if sigma == 0 or len(p) < 2:
        return p.astype(np.float32)
    from scipy.spatial import cKDTree

    tree = cKDTree(xy)
    w = tree.sparse_distance_matrix(tree, max_distance=3.0 * sigma, output_type="coo_matrix")
    w.data = np.exp(-0.5 * (w.data / sigma) ** 2)
    w = w.tocsr()
    w.setdiag(1.0)  # the spot itself (a zero distance is not stored)
    return np.asarray((w @ p) / np.asarray(w.sum(axis=1)), dtype=np.float32)


def gene_axes(labels: Iterable[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Co-expression axes of training labels: the top-`k` principal axes (k, G) of the labels with each section
    centred on its own mean and each gene divided by its std, and that std (G,).

    Within-section co-expression is what the training patients share (cell types, tumour vs stroma); the section
    means are left out, since they carry the level between patients that `project_genes` must not move."""
    parts = [np.asarray(y, np.float64) for y in labels]
    parts = [y - y.mean(0) for y in parts if len(y)]
    if not parts:
        raise ValueError("no training labels to fit co-expression axes on")
    x = np.concatenate(parts)
    sd = x.std(0)
    sd = np.where(sd > 1e-8, sd, 1.0)
    _, _, vt = np.linalg.svd(x / sd, full_matrices=False)
    return vt[: max(0, int(k))].copy(), sd


def project_genes(pred: np.ndarray, axes: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """A section's predictions with each spot's deviation from the section's mean prediction kept only along the
    training labels' co-expression axes (`gene_axes`); the section mean, the model's level, is left as it is.

    An image model's errors spread over all genes alike while the pattern it gets right lives in a few co-expression
    programmes, so dropping the other directions removes error and little of the pattern. Uses the predictions and
    training labels only."""
    p = np.asarray(pred, dtype=np.float64)
    a, s = np.asarray(axes, np.float64), np.asarray(sd, np.float64)
    if a.ndim != 2 or a.shape[1] != p.shape[1] or s.shape != (p.shape[1],):
        raise ValueError(f"co-expression axes {a.shape} / std {s.shape} do not fit predictions of {p.shape[1]} genes")
    if len(p) < 2 or len(a) == 0:
        return p.astype(np.float32)
    m = p.mean(0)
    z = (p - m) / s
    return ((z @ a.T) @ a * s + m).astype(np.float32)

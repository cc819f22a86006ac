"""The embedding cache: frozen-encoder embeddings of a section's spots, stored beside the patch cache.

A frozen encoder gives the same embedding of a spot patch every epoch, fold, model and run, so it is computed once
and read back. One file per (section, key): `<cache>/embeddings/<section>.<hash>.h5` holding float32 (N_spots, C),
where the key (a JSON-able mapping made by `hifusion.inference.embedding_key`) names everything the embedding
depends on: the section and its patch file, the encoder and its weights, the preprocessing that produced the encoder
input, the view (one of the 8 D4 flips/rotations) and how it was computed. The file name carries a hash of the key
and the attrs the full key, which is compared on read: a changed weights file, scale or view is another key, hence
another file; a file that does not match, or cannot be read, is recomputed (with a note), never used.

Nothing here knows about models: this module owns the file format only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hifusion import constants as C
from hifusion.errors import InputError
from hifusion.io import atomic_path
from hifusion.progress import say

__all__ = ["canonical_key", "embeddings_dir", "embeddings_path", "key_hash", "patch_fingerprint", "read_embeddings",
           "write_embeddings"]


def canonical_key(key: Mapping[str, Any]) -> str:
    """The key as canonical JSON (sorted keys, exact float repr): equal keys give equal strings."""
    try:
        return json.dumps(key, sort_keys=True, separators=(",", ":"), allow_nan=True)
    except TypeError as exc:
        raise ValueError(f"an embedding key must hold JSON values only ({exc})") from None


def key_hash(key: Mapping[str, Any]) -> str:
    """First 20 hex digits of the key's SHA-256 (80 bits: no collision among the keys of one cache in practice;
    the full key in the file's attrs is compared on read anyway)."""
    return hashlib.sha256(canonical_key(key).encode()).hexdigest()[:20]


def embeddings_dir(cache_dir: str | Path) -> Path:
    return Path(cache_dir) / C.EMBEDDINGS_DIR


def embeddings_path(cache_dir: str | Path, section: str, key: Mapping[str, Any]) -> Path:
    """`<cache>/embeddings/<section>.<key hash>.h5`."""
    return embeddings_dir(cache_dir) / f"{section}.{key_hash(key)}{C.EMBEDDINGS_SUFFIX}"


def patch_fingerprint(path: str | Path) -> dict[str, Any]:
    """What identifies a patch file's content without reading its images: size and modification time (a section
    prepared again, even with the same parameters, gets fresh embeddings)."""
    st = Path(path).stat()
    return {"name": Path(path).name, "bytes": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def read_embeddings(path: str | Path, key: Mapping[str, Any], n_spots: int) -> np.ndarray | None:
    """The (n_spots, C) float32 embeddings stored under `key`, or None when there is no usable file.

    A file made under another key (a hash collision, an edited file), of another shape or type, or unreadable
    (truncated, not HDF5) is reported and ignored: the caller recomputes and overwrites it atomically."""
    path = Path(path)
    if not path.is_file():
        return None
    problem = None
    try:
        with h5py.File(path, "r") as f:
            stored = f.attrs.get(C.H5_ATTR_EMB_KEY)
            stored = stored.decode() if isinstance(stored, bytes) else stored
            ds = f.get(C.H5_EMBEDDINGS)
            if stored != canonical_key(key):
                problem = "made under another key"
            elif not isinstance(ds, h5py.Dataset) or ds.dtype != np.float32 or ds.ndim != 2:
                problem = "holds no float32 (N, C) embeddings"
            elif ds.shape[0] != int(n_spots):
                problem = f"holds {ds.shape[0]} spots, the section has {n_spots}"
            else:
                return np.asarray(ds[:], dtype=np.float32)
    except (OSError, KeyError, ValueError) as exc:
        problem = f"unreadable ({type(exc).__name__}: {exc})"
    say(f"embedding cache {path}: {problem}; recomputing it")
    return None


def write_embeddings(path: str | Path, key: Mapping[str, Any], x: np.ndarray) -> bool:
    """Store float32 (N, C) embeddings under `key`, atomically (the file appears whole or not at all).

    Returns False, with a note, when the cache folder cannot be written (read-only or full): the run goes on with the
    embeddings it computed, as without a cache."""
    x = np.asarray(x)
    if x.ndim != 2 or x.dtype != np.float32:
        raise ValueError(f"embeddings must be float32 (N, C), got {x.dtype} {x.shape}")
    try:
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset(C.H5_EMBEDDINGS, data=x)
            f.attrs[C.H5_ATTR_EMB_KEY] = canonical_key(key)
            f.attrs["format"] = C.EMBEDDING_FORMAT
    except InputError as exc:
        say(f"embedding cache not written ({exc}); continuing without it")
        return False
    return True

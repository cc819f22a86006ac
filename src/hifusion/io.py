"""Atomic file writes: outputs appear complete under their final name, or not at all."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hifusion.errors import ConfigError, InputError

# errors of the storage, not of our code: a full or read-only disk, a quota, no permission, a file where a folder goes
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                          errno.ENOTDIR, errno.EEXIST})


def storage_error(exc: BaseException) -> OSError | None:
    """The OSError with a storage errno in `exc` or its causes (libraries such as anndata re-wrap them), or None."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in WRITE_ERRNOS:
            return cur
        cur = cur.__cause__ or cur.__context__
    return None


def check_results_folder(out: str | os.PathLike[str], resume: bool) -> None:
    """A run writes into a new or empty results folder, or continues its own with `resume`: never over another."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise ConfigError("results folder exists and is not empty; pass --resume to continue it, or pick --out", out)


def make_dir(path: str | os.PathLike[str]) -> Path:
    """`mkdir -p` whose failures (a file in the way, no permission, read-only disk) are InputErrors naming the path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write here ({exc.strerror or exc})", exc.filename or path) from exc
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block finishes without error.

    The temporary file lives in the same folder so the final `os.replace` is atomic on POSIX file systems. A storage
    failure while writing (disk full, quota, no permission) becomes an InputError naming `path`; the temporary file is
    removed whatever happens.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as exc:
        raise InputError(f"cannot write here ({exc.strerror or exc})", exc.filename or final.parent) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp_path, final)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        err = storage_error(exc) if isinstance(exc, Exception) else None
        if err is not None and (err.filename is None or Path(err.filename) in (tmp_path, final)):
            raise InputError(f"cannot write ({err.strerror or os.strerror(err.errno or 0)})", final) from exc
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write a small text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)

"""A small per-process LRU of open read-only HDF5 files, so reading a cohort of patch files keeps handles bounded.

A reader that keeps one `h5py.File` open per section holds, over a 1,000-section cohort, 1,000 descriptors and
1,000 chunk caches in every DataLoader worker. Readers ask `open_h5(path)` for a handle each time instead: the most
recently used `max_open` files stay open, older ones are closed, and a process started by fork (a DataLoader worker)
opens its own handles rather than sharing its parent's. `HIFUSION_MAX_OPEN_H5` sets the bound (default 64).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import h5py

DEFAULT_MAX_OPEN = 64


def _env_max_open() -> int:
    try:
        return max(1, int(os.environ.get("HIFUSION_MAX_OPEN_H5", DEFAULT_MAX_OPEN)))
    except ValueError:
        return DEFAULT_MAX_OPEN


class H5Handles:
    """LRU of open read-only `h5py.File`s keyed by path, valid in the process that opened them."""

    def __init__(self, max_open: int = DEFAULT_MAX_OPEN) -> None:
        self.max_open = max(1, int(max_open))
        self._files: OrderedDict[str, h5py.File] = OrderedDict()
        self._pid = os.getpid()
        self._lock = threading.RLock()  # a prediction reader thread and the main thread may share it

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's handles are not ours to use or close
            self._files = OrderedDict()
            self._pid = os.getpid()

    def get(self, path: str | Path) -> h5py.File:
        """An open read-only handle of `path`, opening it (and closing the least recently used) when needed."""
        key = str(path)
        with self._lock:
            self._check_pid()
            f = self._files.get(key)
            if f is not None and f.id.valid:
                self._files.move_to_end(key)
                return f
            f = h5py.File(key, "r")
            self._files[key] = f
            while len(self._files) > self.max_open:
                _, old = self._files.popitem(last=False)
                old.close()
            return f

    def close(self, path: str | Path) -> None:
        """Close `path` if this process holds it open."""
        with self._lock:
            self._check_pid()
            f = self._files.pop(str(path), None)
            if f is not None:
                f.close()

    def clear(self) -> None:
        """Close every handle this process holds."""
        with self._lock:
            self._check_pid()
            while self._files:
                self._files.popitem(last=False)[1].close()

    def __len__(self) -> int:
        with self._lock:
            self._check_pid()
            return len(self._files)


HANDLES = H5Handles(_env_max_open())


def open_h5(path: str | Path) -> h5py.File:
    """A read-only handle of `path` from the process-wide LRU (do not close it; `close_h5` does)."""
    return HANDLES.get(path)


def close_h5(path: str | Path) -> None:
    HANDLES.close(path)

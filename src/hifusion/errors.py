"""User-facing errors: one line that names the file and the problem; the CLI turns them into exit code 2."""

from __future__ import annotations

from os import PathLike


class HifusionError(Exception):
    """Base class for problems with the user's input, configuration or files (never a bug of ours)."""

    def __init__(self, problem: str, path: str | PathLike[str] | None = None) -> None:
        self.problem = problem
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class InputError(HifusionError):
    """A data file (counts, spot table, image, AnnData, patch cache) is missing, malformed or inconsistent."""


class ConfigError(HifusionError):
    """A configuration file or option is invalid."""


class CheckpointError(HifusionError):
    """A checkpoint is missing, corrupt, or does not fit the data it is used with."""

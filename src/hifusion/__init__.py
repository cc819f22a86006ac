"""hifusion: predict spatial gene expression from H&E histology (HiFusion, AAAI 2026, and its baselines).

Importing the package is cheap; heavy libraries (torch, anndata, lightning) load in the submodules that use them.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]

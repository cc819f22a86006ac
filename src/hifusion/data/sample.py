"""Data shipped with the package, usable offline.

`her2st_sample()` is a real HER2ST sample: sections C2, C3 and C4 of patient C (HER2+ breast cancer, legacy ST arrays,
~0.69 um/px H&E) from Andersson et al. 2021, Nat Commun 12:6012 (Zenodo 4751624, github almaan/her2st, CC BY 4.0),
with each image cropped around its spots. See `hifusion/sample/her2st/README.md` for provenance and the crop offsets.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from hifusion.constants import HER2ST_COUNTS_DIR
from hifusion.errors import InputError

SAMPLE_SECTIONS = ("C2", "C3", "C4")


def her2st_sample() -> Path:
    """Root of the shipped HER2ST sample (legacy layout: ST-cnts/, ST-spotfiles/, ST-imgs/); read it as `her2st`."""
    root = Path(str(resources.files("hifusion") / "sample" / "her2st"))
    if not (root / HER2ST_COUNTS_DIR).is_dir():
        raise InputError("the shipped HER2ST sample is missing from this installation; reinstall hifusion", root)
    return root

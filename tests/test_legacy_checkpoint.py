"""A checkpoint written before the typed checkpoint metadata (issue 27) loads and predicts identically after it.

The fixture (`tests/fixtures/legacy/`) was made by `tests/fixtures/make_legacy_checkpoint.py` with the code of the
commit before the redesign: a tiny HiFusion checkpoint, a small slide and that code's predictions of nine spots
under three test-time variants.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from hifusion.constants import CKPT_META_KEY
from hifusion.predict.engine import load_predictor, predict_coords
from hifusion.predict.slide import open_slide
from hifusion.recipe import Recipe

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import make_legacy_checkpoint as legacy  # noqa: E402


def test_legacy_checkpoint_loads_and_predicts_identically() -> None:
    made = json.loads(legacy.INFO.read_text())
    same_build = made["torch"] == torch.__version__ and made["machine"] == platform.machine()
    module, meta = load_predictor(legacy.CKPT, "cpu")
    stored = torch.load(legacy.CKPT, map_location="cpu", weights_only=True)[CKPT_META_KEY]
    assert meta.model_name == "hifusion" and meta.panel == legacy.PANEL and meta.to_dict() == stored
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the fixture was made
    with np.load(legacy.PREDICTIONS) as z:
        want = {k: z[k] for k in z.files}
    assert set(want) == set(legacy.VARIANTS)
    got_all = {}
    try:
        for name, kw in legacy.VARIANTS.items():
            slide = open_slide(legacy.SLIDE, mpp=legacy.SLIDE_MPP, target_mpp=meta.patch.pixel_size)
            try:
                got_all[name] = predict_coords(module, slide, legacy.spot_centres(), batch_size=4, workers=1,
                                               recipe=Recipe(**kw))
            finally:
                slide.close()
    finally:
        torch.set_num_threads(threads)
    for name, got in got_all.items():
        if same_build:  # the same torch on the same kind of CPU: bit for bit
            np.testing.assert_array_equal(got, want[name], err_msg=name)
        else:  # another torch or CPU may pick other kernels: float rounding only
            np.testing.assert_allclose(got, want[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_fixture_is_small() -> None:
    sizes = {p.name: p.stat().st_size for p in (FIXTURES / "legacy").iterdir()}
    assert sum(sizes.values()) < 400_000, sizes

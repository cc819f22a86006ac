"""Whole-slide inference: tissue detection, a virtual spot grid, patches streamed from the slide, maps and files."""

from hifusion.data.tissue import default_pitch_um, detect_tissue, spot_grid, tissue_fraction
from hifusion.predict.engine import Compute, SpotLayout, load_predictor, predict_coords, predict_slide, read_spots
from hifusion.predict.slide import choose_level, open_slide

__all__ = [
    "Compute",
    "SpotLayout",
    "choose_level",
    "default_pitch_um",
    "detect_tissue",
    "load_predictor",
    "open_slide",
    "predict_coords",
    "predict_slide",
    "read_spots",
    "spot_grid",
    "tissue_fraction",
]

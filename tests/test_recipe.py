"""The test-time recipe: one validation, one post-processing chain, and the two files a benchmark leaves beside the
checkpoints (recipe.json, calibration.json) in the format existing checkpoints carry."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hifusion import constants as C
from hifusion.config import AdaptConfig, parse_config
from hifusion.errors import CheckpointError, ConfigError
from hifusion.preprocess import centre_on, gene_axes, project_genes, smooth_spatial
from hifusion.recipe import (
    PLAIN,
    GeneAxes,
    Recipe,
    adjust,
    calibrated,
    read_gene_axes,
    read_recipe,
    read_shrink_factor,
    resolve_calibration,
    write_recipe,
    write_shrink_factor,
)

# recipe.json as `train.fit.save_recipe` wrote it before the Recipe type (json.dumps, indent 2, sorted keys)
OLD_RECIPE_JSON = """{
  "adabn": true,
  "calibrate": "shrink",
  "gene_axes": {
    "axes": [
      [
        0.6,
        -0.8,
        0.0
      ]
    ],
    "panel": [
      "A",
      "B",
      "C"
    ],
    "sd": [
      0.5,
      1.0,
      2.25
    ]
  },
  "gene_pcs": 1,
  "smooth_um": 150.0,
  "tta": false
}"""
OLD_CALIBRATION_JSON = """{
  "adabn=0,tta=1": 0.7,
  "adabn=1,tta=0,smooth_um=150,gene_pcs=1": 0.25
}"""


def test_options_are_checked_once_with_auto_for_predict() -> None:
    assert Recipe.of() == PLAIN and PLAIN.plain and not Recipe(tta=True).plain
    assert Recipe.of(calibrate="auto").calibrate == "auto"  # what `hifusion predict` accepts
    assert Recipe.of(smooth_um=6000).smooth_um == 6000.0  # predict takes any finite width, as before
    for bad, name in [({"calibrate": "median"}, "calibrate"), ({"smooth_um": -5}, "smooth_um"),
                      ({"smooth_um": math.inf}, "smooth_um"), ({"smooth_um": math.nan}, "smooth_um"),
                      ({"gene_pcs": -1}, "gene_pcs"), ({"adabn": "maybe"}, "adabn"), ({"smoothing": 3}, "smoothing")]:
        with pytest.raises(ConfigError, match=name):
            Recipe.of(**bad)
    with pytest.raises(ValueError):  # frozen: a recipe is a value
        PLAIN.tta = True  # type: ignore[misc]


def test_the_config_maps_onto_recipes_with_the_benchmark_ranges(tmp_path: Path) -> None:
    raw = {"data": {"cache": str(tmp_path)}, "adapt": {"adabn": True, "calibrate": "centre"},
           "adapt_variants": {"plain": {}, "smooth": {"smooth_um": 300.0, "gene_pcs": 2}}}
    cfg = parse_config(raw)
    assert isinstance(cfg.adapt, Recipe) and list(cfg.recipes) == ["", "plain", "smooth"]
    assert cfg.recipes[""].inference() == Recipe(adabn=True) and cfg.recipes["plain"].plain
    assert cfg.recipes["smooth"].calibration_key == "adabn=0,tta=0,smooth_um=300,gene_pcs=2"
    for adapt, problem in [({"calibrate": "auto"}, "auto"), ({"smooth_um": 6000}, "smooth_um"),
                           ({"gene_pcs": 1001}, "gene_pcs"), ({"tta": True, "typo": 1}, "typo"),
                           ({"calibrate": "shrink"}, "validation")]:
        with pytest.raises(ConfigError, match=problem):
            parse_config({**raw, "adapt": adapt})
    with pytest.raises(ConfigError, match="adapt_variants.s.calibrate"):
        parse_config({**raw, "adapt_variants": {"s": {"calibrate": "shrink"}}})
    assert AdaptConfig().to_dict() == PLAIN.to_dict()


def test_recipe_json_round_trips_and_reads_the_format_checkpoints_carry(tmp_path: Path) -> None:
    axes = GeneAxes(("A", "B", "C"), np.array([[0.6, -0.8, 0.0]]), np.array([0.5, 1.0, 2.25]))
    recipe = Recipe(adabn=True, calibrate="shrink", smooth_um=150, gene_pcs=1)
    write_recipe(tmp_path, recipe, axes)
    assert (tmp_path / C.RECIPE_JSON).read_text() == OLD_RECIPE_JSON  # byte for byte the format of before
    assert read_recipe(tmp_path) == recipe
    back = read_gene_axes(tmp_path, 1, ["A", "B", "C"])
    np.testing.assert_array_equal(back.axes, axes.axes)
    np.testing.assert_array_equal(back.sd, axes.sd)
    with pytest.raises(CheckpointError, match="gene panel"):
        read_gene_axes(tmp_path, 1, ["C", "B", "A"])
    with pytest.raises(CheckpointError, match="stores 1 axes"):
        read_gene_axes(tmp_path, 2, ["A", "B", "C"])
    with pytest.raises(ValueError, match="gene axes"):
        write_recipe(tmp_path, recipe)
    assert read_recipe(tmp_path / "none") is None
    # a file from before smoothing and the projection: both off
    (tmp_path / C.RECIPE_JSON).write_text('{"adabn": false, "tta": true, "calibrate": "none"}')
    assert read_recipe(tmp_path) == Recipe(tta=True)
    for text, problem in [('{"adabn": false}', "tta, calibrate"), ("[1, 2]", "adabn"), ("{not json", "unreadable"),
                          ('{"adabn": 0, "tta": 0, "calibrate": "none", "smooth_um": -5}', "smooth_um"),
                          ('{"adabn": 0, "tta": 0, "calibrate": "median"}', "calibrate")]:
        (tmp_path / C.RECIPE_JSON).write_text(text)
        with pytest.raises(CheckpointError, match=problem):
            read_recipe(tmp_path)


def test_calibration_json_is_keyed_by_the_recipe(tmp_path: Path) -> None:
    projected = Recipe(adabn=True, calibrate="shrink", smooth_um=150.0, gene_pcs=1)
    write_shrink_factor(tmp_path, Recipe(tta=True, calibrate="shrink"), 0.7)
    write_shrink_factor(tmp_path, projected, 0.25)
    assert (tmp_path / C.CALIBRATION_JSON).read_text() == OLD_CALIBRATION_JSON
    assert Recipe(smooth_um=75.5, calibrate="centre").calibration_key == "adabn=0,tta=0,smooth_um=75.5"
    assert read_shrink_factor(tmp_path, projected.model_copy(update={"calibrate": "auto"})) == 0.25
    with pytest.raises(CheckpointError, match="shrink factor for adabn=0,tta=0"):
        read_shrink_factor(tmp_path, PLAIN)
    with pytest.raises(CheckpointError, match="shrink factor"):
        read_shrink_factor(None, PLAIN)
    # `auto`: the fitted factor where there is one, else centring where the checkpoint has the training mean
    assert resolve_calibration(Recipe(tta=True, calibrate="auto"), tmp_path, True) == (
        Recipe(tta=True, calibrate="shrink"), 0.7)
    assert resolve_calibration(Recipe(calibrate="auto"), tmp_path, True) == (Recipe(calibrate="centre"), 1.0)
    assert resolve_calibration(Recipe(calibrate="auto"), tmp_path, False) == (PLAIN, 1.0)
    with pytest.raises(CheckpointError, match="training mean"):
        resolve_calibration(Recipe(calibrate="centre"), tmp_path, False)


def _old_benchmark_chain(p, xy, a, axes, sd, level, factor):
    """`train.fit.predict_variants` before the Recipe type (its `post`, then calibration)."""
    if a["smooth_um"] > 0:
        p = smooth_spatial(p, xy, a["smooth_um"])
    if a["gene_pcs"] > 0:
        p = project_genes(p, axes[: a["gene_pcs"]], sd)
    return p if a["calibrate"] == "none" else centre_on(p, level, factor)


def _old_predict_chain(pred, coords, mpp, a, gene_axes, train_mean, factor):
    """`predict.engine.predict_coords` before the Recipe type (after inference; `auto` already resolved)."""
    if a["smooth_um"] > 0:
        pred = smooth_spatial(pred, np.asarray(coords, np.float64) * mpp, a["smooth_um"])
    if a["gene_pcs"] > 0:
        pred = project_genes(pred, gene_axes[0][: a["gene_pcs"]], gene_axes[1])
    if a["calibrate"] in ("centre", "shrink"):
        pred = centre_on(pred, np.asarray(train_mean, np.float64), factor)
    return pred


@pytest.mark.parametrize("options", [{}, {"smooth_um": 40.0}, {"gene_pcs": 2}, {"calibrate": "centre"},
                                     {"smooth_um": 25.0, "gene_pcs": 3, "calibrate": "shrink"}])
def test_the_chain_computes_what_both_old_copies_did(options: dict) -> None:
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 200, size=(30, 2))
    pred = rng.normal(size=(30, 6)).astype(np.float32)
    axes, sd = gene_axes([rng.normal(size=(40, 6)), rng.normal(size=(25, 6))], 3)
    level = rng.normal(size=6).astype(np.float32)
    factor = 0.4 if options.get("calibrate") == "shrink" else 1.0
    recipe = Recipe(**options)
    full = {**PLAIN.to_dict(), **options}
    ga = GeneAxes(tuple("abcdef"), axes, sd)
    new = calibrated(adjust(pred, recipe, lambda: coords * 0.5, ga), recipe, level, factor)
    np.testing.assert_array_equal(new, _old_benchmark_chain(pred, coords * 0.5, full, axes, sd, level, factor))
    np.testing.assert_array_equal(new, _old_predict_chain(pred, coords, 0.5, full, (axes, sd), level, factor))
    assert new.dtype == _old_predict_chain(pred, coords, 0.5, full, (axes, sd), level, factor).dtype


def test_the_chain_asks_for_spot_positions_only_when_smoothing() -> None:
    pred = np.ones((3, 2), np.float32)

    def nowhere() -> np.ndarray:
        raise AssertionError("positions asked for without smoothing")

    assert adjust(pred, Recipe(calibrate="centre"), nowhere) is pred
    with pytest.raises(ConfigError, match="gene_pcs 2"):
        adjust(pred, Recipe(gene_pcs=2), nowhere, GeneAxes(("a", "b"), np.eye(2)[:1], np.ones(2)))
    with pytest.raises(ValueError, match="resolved"):
        calibrated(pred, Recipe(calibrate="auto"), np.zeros(2))
    assert json.loads(json.dumps(Recipe(gene_pcs=2).to_dict())) == Recipe(gene_pcs=2).to_dict()

"""Prediction files in the ecosystem's conventions: layers['predicted'] + X, provenance in uns, and a SpatialData zarr
that reads back with spatialdata and renders with spatialdata-plot (the rendered picture is looked at)."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pytest

from hifusion import __version__
from hifusion import constants as C
from hifusion.checkpoint import file_sha256
from hifusion.predict import predict_slide
from hifusion.recipe import Recipe

from .slides import CPU


def test_predictions_h5ad_keeps_the_prediction_in_a_named_layer_with_provenance(
        tmp_path: Path, checkpoint: Path, plain_png: Path) -> None:
    out = predict_slide(checkpoint, plain_png, tmp_path / "pred", compute=CPU, mpp=1.0,
                        recipe=Recipe(smooth_um=50.0))
    a = ad.read_h5ad(out / "predictions.h5ad")
    np.testing.assert_array_equal(a.layers[C.LAYER_PREDICTED], a.X)  # X stays the prediction: older code works
    info = a.uns[C.UNS_HIFUSION]
    assert info[C.UNS_CHECKPOINT_SHA256] == file_sha256(checkpoint)
    assert info[C.UNS_VERSION] == __version__ and info["model"] == "hifusion"
    assert info[C.UNS_UNIT].startswith("log1p_cpm:") and "predicted (not measured)" in info[C.UNS_UNIT]
    assert info[C.UNS_RECIPE]["smooth_um"] == 50.0 and bool(info[C.UNS_RECIPE]["adabn"]) is False


def test_spatialdata_output_reads_back_and_renders(tmp_path: Path, checkpoint: Path, plain_png: Path) -> None:
    sd = pytest.importorskip("spatialdata", reason="needs pip install 'hifusion[spatial]'")
    pytest.importorskip("spatialdata_plot", reason="needs pip install 'hifusion[spatial]'")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from spatialdata.transformations import get_transformation

    out = predict_slide(checkpoint, plain_png, tmp_path / "pred", compute=CPU, mpp=1.0, fmt="spatialdata")
    a = ad.read_h5ad(out / "predictions.h5ad")
    sdata = sd.read_zarr(out / C.PREDICTIONS_ZARR)
    assert set(sdata.images) == {C.SD_IMAGE} and set(sdata.shapes) == {C.SD_SPOTS}
    assert sdata.coordinate_systems == [C.SD_COORDINATE_SYSTEM]
    spots = sdata.shapes[C.SD_SPOTS]
    table = sdata.tables[C.SD_TABLE]
    # circles at the spot's field of view, centred where the h5ad says, in microns (1 um/px here)
    fov_um = a.uns[C.UNS_SPATIAL]["slide"]["scalefactors"][C.UNS_SPOT_DIAMETER] * 1.0
    np.testing.assert_allclose(spots["radius"].to_numpy(), fov_um / 2)
    np.testing.assert_allclose(np.c_[spots.geometry.x, spots.geometry.y], a.obsm[C.OBSM_SPATIAL] * 1.0)
    assert table.uns["spatialdata_attrs"]["region"] == C.SD_SPOTS
    np.testing.assert_array_equal(table.obs[C.SD_INSTANCE_KEY].to_numpy(), spots.index.to_numpy())
    np.testing.assert_allclose(table.layers[C.LAYER_PREDICTED], a.X)
    assert list(table.obs[C.SD_BARCODE]) == list(a.obs_names)
    he = sdata.images[C.SD_IMAGE]
    scale = get_transformation(he["scale0"]["image"], to_coordinate_system=C.SD_COORDINATE_SYSTEM)
    side_px = he["scale0"]["image"].shape[-1]
    assert np.diag(scale.to_affine_matrix(("y", "x"), ("y", "x")))[:2] == pytest.approx([1024 / side_px] * 2)

    gene = "ERBB2"
    fig, ax = plt.subplots(figsize=(6, 6), dpi=80)
    (sdata.pl.render_images(C.SD_IMAGE)
     .pl.render_shapes(C.SD_SPOTS, color=gene, cmap="viridis", fill_alpha=1.0)
     .pl.show(ax=ax, coordinate_systems=C.SD_COORDINATE_SYSTEM, colorbar=False, title=""))
    fig.canvas.draw()
    pix = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float)
    data_to_px = ax.transData
    h = pix.shape[0]
    values = a[:, gene].X.ravel()
    order = np.argsort(values)
    lo, hi = order[: max(1, len(order) // 5)], order[-max(1, len(order) // 5):]

    def colour_at(i: int) -> np.ndarray:
        x, y = data_to_px.transform(a.obsm[C.OBSM_SPATIAL][i] * 1.0)
        return pix[int(round(h - y)), int(round(x))]

    low = np.mean([colour_at(i) for i in lo], axis=0)
    high = np.mean([colour_at(i) for i in hi], axis=0)
    plt.close(fig)
    # viridis: low values are dark purple, high values yellow; the circles are drawn where the spots are
    assert high[:2].mean() > low[:2].mean() + 60 and low[2] > low[1]

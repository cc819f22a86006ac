"""Gene panels and label transforms against hand-computed values."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from hifusion.data.genes import LABEL_TRANSFORMS, make_labels, select_panel
from hifusion.errors import ConfigError, InputError


def adata(counts, genes, section="S"):
    a = ad.AnnData(X=np.asarray(counts, dtype=np.float32))
    a.var_names = genes
    a.obs["section"] = section
    return a


def test_top_mean_pooled_ties_by_name():
    a = adata([[5, 1, 1, 9], [5, 3, 1, 0]], ["D", "B", "A", "Z"])
    b = adata([[0, 2, 2], [0, 2, 2]], ["D", "B", "A"])  # Z missing here -> excluded
    # pooled sums: D 10, B 8, A 6 ; n=2 -> D, B
    assert select_panel([a, b], "top_mean", n=2) == ["D", "B"]
    c = adata([[2, 2, 1]], ["B", "A", "C"])
    assert select_panel([c], n=3) == ["A", "B", "C"]  # tie between A and B broken by name


def test_top_mean_accepts_dataframes():
    df = pd.DataFrame([[1, 4], [1, 4]], columns=["X", "Y"])
    assert select_panel([df], n=1) == ["Y"]


def test_hvg_returns_n_genes():
    rng = np.random.default_rng(0)
    counts = rng.poisson(5, size=(60, 40)).astype(float)
    counts[:30, 3] *= 20  # strongly variable gene
    genes = [f"g{i:02d}" for i in range(40)]
    panel = select_panel([adata(counts, genes)], "hvg", n=10)
    assert len(panel) == 10 and "g03" in panel and len(set(panel)) == 10


def test_gene_file(tmp_path):
    f = tmp_path / "genes.txt"
    f.write_text("# my panel\nB\n\nA  # comment\n")
    a = adata([[1, 2]], ["A", "B"])
    assert select_panel([a], "file", gene_file=f) == ["B", "A"]
    f.write_text("A\nNOPE\n")
    with pytest.raises(InputError, match="NOPE") as e:
        select_panel([a], "file", gene_file=f)
    assert str(f) in str(e.value)
    with pytest.raises(ConfigError):
        select_panel([a], "file")
    with pytest.raises(ConfigError):
        select_panel([a], "magic")


def test_logprop_by_hand():
    a = adata([[3, 1, 100]], ["A", "B", "C"])
    y = make_labels(a, ["A", "B"], "logprop")
    np.testing.assert_allclose(y, [[np.log(4 / 6), np.log(2 / 6)]], rtol=1e-6)
    assert y.dtype == np.float32


def test_log1p_cpm_uses_all_genes():
    a = adata([[3, 1, 96], [0, 0, 0]], ["A", "B", "C"])
    y = make_labels(a, ["B", "A"], "log1p_cpm")
    np.testing.assert_allclose(y[0], [np.log1p(1e4 / 100), np.log1p(3e4 / 100)], rtol=1e-6)
    np.testing.assert_array_equal(y[1], [0, 0])


def test_missing_panel_gene():
    a = adata([[3, 1]], ["A", "B"], section="C3")
    with pytest.raises(InputError, match="missing") as e:
        make_labels(a, ["A", "Q"])
    assert "C3" in str(e.value)
    y = make_labels(a, ["A", "Q"], zero_fill=True)
    np.testing.assert_allclose(y, [[np.log(4 / 5), np.log(1 / 5)]], rtol=1e-6)


def test_transform_registry():
    assert set(LABEL_TRANSFORMS) == {"logprop", "log1p_cpm"}
    with pytest.raises(ConfigError):
        make_labels(adata([[1]], ["A"]), ["A"], "zscore")


def test_panel_streams_from_a_generator_with_the_same_result() -> None:
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(30)]
    secs = [adata(rng.poisson(rng.random(30) * 5, size=(20, 30)), genes) for _ in range(4)]
    secs[2] = secs[2][:, genes[::-1]].copy()  # another gene order
    secs[3] = secs[3][:, genes[:25]].copy()  # fewer genes: only the common ones can be chosen
    consumed: list[int] = []

    def gen():  # type: ignore[no-untyped-def]
        for i, a in enumerate(secs):
            consumed.append(i)
            yield a

    streamed = select_panel(gen(), "top_mean", n=10)
    assert consumed == [0, 1, 2, 3]
    assert streamed == select_panel(secs, "top_mean", n=10)
    assert set(streamed) <= set(genes[:25])
    assert select_panel(gen(), "hvg", n=5) == select_panel(secs, "hvg", n=5)
    with pytest.raises(ConfigError, match="at least one training section"):
        select_panel(iter([]), "top_mean", n=3)

"""Section validation: one place for barcode, count and gene checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from hifusion.data.section import Section, make_unique
from hifusion.errors import InputError


def section(**kw) -> Section:
    n = kw.pop("n", 3)
    base = dict(
        section_id="S",
        patient="P",
        counts=sp.csr_matrix(np.ones((n, 2))),
        barcodes=np.array([f"b{i}" for i in range(n)]),
        genes=np.array(["A", "B"]),
        gene_ids=None,
        centers_px=np.zeros((n, 2)),
        mpp=0.5,
        image_path=Path("img.jpg"),
        files={"counts": Path("/x/counts.tsv"), "spots": Path("/x/spots.tsv")},
    )
    base.update(kw)
    return Section(**base)


def test_ok():
    s = section()
    assert s.counts.dtype == np.float32 and s.n_spots == 3


def test_duplicate_barcodes():
    with pytest.raises(InputError, match="duplicate spot barcodes") as e:
        section(barcodes=np.array(["a", "a", "b"]))
    assert "/x/spots.tsv" in str(e.value)


def test_zero_spots():
    with pytest.raises(InputError, match="no spots") as e:
        section(n=0, counts=sp.csr_matrix((0, 2)))
    assert "/x/spots.tsv" in str(e.value)


@pytest.mark.parametrize(("v", "msg"), [(-1.0, "negative"), (np.nan, "NaN"), (0.5, "not integers")])
def test_bad_counts(v, msg):
    c = np.ones((3, 2))
    c[1, 1] = v
    with pytest.raises(InputError, match=msg) as e:
        section(counts=sp.csr_matrix(c))
    assert "/x/counts.tsv" in str(e.value)


def test_duplicate_genes_made_unique():
    with pytest.warns(UserWarning, match="duplicate gene names"):
        s = section(genes=np.array(["A", "A"]), gene_ids=np.array(["E1", "E2"]))
    assert s.genes.tolist() == ["A", "A-1"] and s.gene_ids.tolist() == ["E1", "E2"]


def test_make_unique_like_scanpy():
    assert make_unique(np.array(["A", "A", "B", "A", "A-1"])).tolist() == ["A", "A-2", "B", "A-3", "A-1"]

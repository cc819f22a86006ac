"""report.md content and formatting from small synthetic tables; CSV tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hifusion.evaluate.report import write_report, write_tables
from hifusion.metrics import per_gene_metrics, section_metrics

GENES = ["ERBB2", "KRT19", "CD74", "ACTB", "GAPDH"]


def _long(rows: dict[tuple[str, str, str], dict[str, float]]) -> pd.DataFrame:
    out = []
    for (model, split, section), vals in rows.items():
        out += [{"model": model, "split": split, "section": section, "metric": k, "value": v} for k, v in vals.items()]
    return pd.DataFrame(out)


def _tables(sections: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Real metrics from synthetic predictions, shaped as the benchmark runner produces them."""
    rng = np.random.default_rng(0)
    metric_rows, gene_frames = {}, []
    for s in sections:
        truth = rng.normal(size=(20, len(GENES)))
        truth[:, 3] = 1.0  # ACTB constant in every section's truth
        preds = {
            "mean_profile": np.tile(truth.mean(0) + 0.1, (20, 1)),
            "hifusion": truth + rng.normal(scale=0.3, size=truth.shape),
            "stnet": truth + rng.normal(scale=0.9, size=truth.shape),
        }
        for m, p in preds.items():
            metric_rows[(m, "fold0", s)] = section_metrics(p, truth, hvg_top50_idx=[0, 1])
            df = per_gene_metrics(p, truth, GENES)
            df.insert(0, "section", s)
            df.insert(0, "split", "fold0")
            df.insert(0, "model", m)
            gene_frames.append(df)
    return _long(metric_rows), pd.concat(gene_frames, ignore_index=True)


def test_table1_formatting_exact(tmp_path: Path) -> None:
    metrics = _long(
        {
            ("hifusion", "f", "C3"): {"mse": 0.3, "mae": 0.4, "pcc_spot": 0.7, "pcc_gene": 0.2, "n_spots": 10},
            ("hifusion", "f", "C4"): {"mse": 0.5, "mae": 0.6, "pcc_spot": 0.9, "pcc_gene": 0.4, "n_spots": 12},
            ("mean_profile", "f", "C3"): {"mse": 0.35, "mae": 0.45, "pcc_spot": 0.75, "pcc_gene": 0.0},
        }
    )
    per_gene = pd.DataFrame(columns=["model", "split", "section", "gene", "pcc", "mse", "mae"])
    path = write_report(tmp_path, metrics, per_gene, meta={"dataset": "her2st"})
    text = path.read_text()
    assert path == tmp_path / "report.md"
    assert "| Model | MSE | MSE bias | MSE spatial | MAE | PCC-spot | PCC-gene | PCC-gene top-50 |" in text
    assert ("| hifusion | 0.4000 ± 0.1000 | n/a | n/a | 0.5000 ± 0.1000 | 0.8000 ± 0.1000 | 0.3000 ± 0.1000 "
            "| n/a |") in text
    assert ("| mean_profile | 0.3500 ± 0.0000 | n/a | n/a | 0.4500 ± 0.0000 | 0.7500 ± 0.0000 | 0.0000 ± 0.0000 "
            "| n/a |") in text
    assert "| hifusion | f | C4 | 12 | 0.5000 | n/a | n/a | 0.6000 | 0.9000 | 0.4000 | n/a |" in text
    assert "- Dataset: her2st" in text
    assert "mean profile alone reaches PCC-spot 0.7500" in text
    assert "MSE below the mean profile's (test sections): hifusion 1/1." in text  # C3 0.3 < 0.35; C4 has no floor


def test_full_report(tmp_path: Path) -> None:
    metrics, per_gene = _tables(["C3", "C4"])
    fig = tmp_path / "figures" / "markers_C3.png"
    fig.parent.mkdir()
    fig.write_bytes(b"png")
    meta = {
        "dataset": "her2st",
        "protocol": "3d",
        "train_sections": ["C2"],
        "test_sections": ["C3", "C4"],
        "panel_size": 5,
        "label_transform": "ln((c+1)/sum(c+1))",
        "command": "hifusion benchmark --config x.yaml",
        "seed": 0,
    }
    path = write_report(tmp_path, metrics, per_gene, reference="hifusion", figures={"Markers": [fig]}, meta=meta)
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0].startswith("# ")
    for needle in (
        "- Protocol: 3d",
        "- Train sections: C2",
        "- Test sections: C3, C4",
        "- Gene panel size: 5",
        "hifusion benchmark --config x.yaml",
        "- Seed: 0",
    ):
        assert needle in text
    # reference first in Table 1
    t1 = [ln for ln in lines if ln.startswith("| ") and "±" in ln]
    assert [ln.split(" | ")[0] for ln in t1] == ["| hifusion", "| mean_profile", "| stnet"]
    assert "C3: 1 of 5; C4: 1 of 5" in text  # ACTB constant in each section
    # marker table: markers present, PCC / MAE per model
    assert "| Gene | hifusion | mean_profile | stnet |" in text
    erbb2 = next(ln for ln in lines if ln.startswith("| ERBB2 |"))
    assert erbb2.count(" / ") == 3
    assert "| FASN" not in text  # not in the panel
    # Wilcoxon: over genes run, over sections skipped (2 < 5)
    assert "PCC over genes" in text and "skipped: only 2 sections (< 5)" in text
    assert "floor every model must clear" in text and "dominated by the mean expression profile" in text
    assert "![markers_C3](figures/markers_C3.png)" in text
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_sections_test_runs_with_five(tmp_path: Path) -> None:
    metrics, per_gene = _tables([f"S{i}" for i in range(5)])
    text = write_report(tmp_path, metrics, per_gene).read_text()
    assert "PCC over sections" in text and "skipped" not in text.split("## Paired tests")[1].split("## ")[0].replace(
        "Tests over sections need", ""
    )


def test_write_tables_roundtrip(tmp_path: Path) -> None:
    metrics, per_gene = _tables(["C3"])
    m_path, g_path = write_tables(tmp_path, metrics, per_gene)
    assert m_path.name == "metrics.csv" and g_path.name == "per_gene.csv"
    back_m = pd.read_csv(m_path)
    pd.testing.assert_frame_equal(back_m[list(metrics.columns)], metrics, check_dtype=False)
    assert set(back_m["convention"]) == {"ours"} and set(back_m["selection"]) == {"validation or last epoch"}
    back = pd.read_csv(g_path)
    assert list(back.columns) == list(per_gene.columns) and len(back) == len(per_gene)


def test_runner_style_meta_and_summary(tmp_path: Path) -> None:
    from hifusion.evaluate.report import summary_table

    metrics, per_gene = _tables(["C3"])
    meta = {
        "title": "Benchmark",
        "protocol": "3d",
        "splits": [{"name": "C", "train": ["C2"], "val": [], "test": ["C3", "C4"]}],
        "gene_panels": {"C": GENES},
        "label_transform": "paper",
        "config": {"data": {"root": "x", "nested": {"a": 1}}},  # nested: left to run.json
        "seeds": {"train": 0},
        "seconds": 12.5,
    }
    text = write_report(tmp_path, metrics, per_gene, meta=meta).read_text()
    assert text.startswith("# Benchmark\n")
    assert "  - C: C2 / - / C3, C4" in text
    assert "- Gene panel size: 5" in text and "- Seeds: train=0" in text and "- Seconds: 12.5" in text
    assert "nested" not in text and "Config" not in text
    table = summary_table(metrics)
    header = "| Model | MSE | MSE bias | MSE spatial | MAE | PCC-spot | PCC-gene | PCC-gene top-50 |"
    assert table.splitlines()[0] == header
    assert table.splitlines()[2].startswith("| hifusion | ")


def test_empty_tables(tmp_path: Path) -> None:
    from hifusion.evaluate.report import summary_table

    path = write_report(tmp_path, pd.DataFrame(), pd.DataFrame())
    assert "## Results over test sections" in path.read_text()
    assert summary_table(pd.DataFrame()) == "(no results)"
    with pytest.raises(ValueError, match="lacks columns"):
        write_tables(tmp_path, pd.DataFrame({"model": ["a"]}), pd.DataFrame())


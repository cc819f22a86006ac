"""Evaluation: metrics, paired tests, the written report and its figures.

The benchmark runner lives in `hifusion.evaluate.protocols` and is not imported here (it pulls in training code).
"""

from __future__ import annotations

from hifusion.evaluate.metrics import (
    pcc_columns,
    pcc_rows,
    per_gene_metrics,
    section_metrics,
    top_variable_genes,
)
from hifusion.evaluate.plots import plot_expression_map, plot_marker_maps, plot_training_curves
from hifusion.evaluate.report import write_report, write_tables
from hifusion.evaluate.stats import compare_models, paired_wilcoxon

__all__ = [
    "compare_models",
    "paired_wilcoxon",
    "pcc_columns",
    "pcc_rows",
    "per_gene_metrics",
    "plot_expression_map",
    "plot_marker_maps",
    "plot_training_curves",
    "section_metrics",
    "top_variable_genes",
    "write_report",
    "write_tables",
]

"""Orchestration on top of the library: benchmark protocols, ablation, efficiency and the written report.

Submodules are imported where used: `hifusion.evaluate.protocols` pulls in training code, and the leaf modules
(`hifusion.metrics`, `hifusion.stats`, `hifusion.plots`) are what training and prediction use instead.
"""

"""Data layer: readers -> `Section` -> `prepare` writes the patch cache; `genes` picks panels and builds labels.

Submodules are imported where used (reading data does not need torch).
"""

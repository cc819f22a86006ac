"""The patch cache `prepare` writes and everything else reads, one module per concern.

- `layout`: which files a cache folder holds (`<section>.h5ad`, `<section>.patches.h5`, `cache.json`), when a section
  counts as done, the sections present and the manifest;
- `reader`: every read of a cache file (a section's AnnData and `PatchFile`, patients, images, obs columns);
- `handles`: the per-process LRU of open HDF5 files the reader draws on;
- `lean`: AnnData made lean for a split (no counts, no thumbnail) and its images given back on demand;
- `embeddings`: the frozen-encoder embedding cache under `<cache>/embeddings/`.

The writer is `data.prepare`; nothing outside this package opens a cache file.
"""

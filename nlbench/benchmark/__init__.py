"""The benchmark core: splits, the training harness, grids, records and statistics (noise is :mod:`nlbench.noise`)."""

"""The benchmark core: noise, splits, the training harness, records and statistics."""

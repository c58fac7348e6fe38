"""Benchmarks: the model alone (`make bench-model`), the worker end to end against baselines
(`make bench`), and their load, profile and statistics helpers. Output lands beside them."""

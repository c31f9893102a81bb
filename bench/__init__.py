"""Benchmarks: `python -m bench.ops CORPUS_DIR`."""

"""Helpers shared by the benchmarks: real evaluation data (``data``) and exporters of real
pretrained models plus their accuracy metrics (``export``; torch is imported only inside the
functions that need it)."""

"""Benchmarks: runnable modules, `python -m bench.<name> --help`."""

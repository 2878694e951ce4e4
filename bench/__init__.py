"""Benchmarks of medtune, run by hand: `python -m bench.<name> [--quick]` (see bench/README.md)."""

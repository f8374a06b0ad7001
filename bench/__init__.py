"""Benchmarks of mirrorq's parts, each a module runnable with `python -m bench.<name>`."""

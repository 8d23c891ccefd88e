"""Benchmarks of the registry assemblies against CNCF Distribution: `python -m bench.run` (make bench)."""

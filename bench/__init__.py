"""Benchmarks and measured probes: each prints its figures against a baseline run in the same process."""

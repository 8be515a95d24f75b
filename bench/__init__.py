"""Benchmarks: `make bench` runs them all and writes bench/results.json and bench/results.md."""

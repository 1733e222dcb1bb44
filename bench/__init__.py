"""Benchmarks for Zapa; ``python -m bench --help`` lists what they measure."""

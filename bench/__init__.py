"""Benchmarks: speed and memory targets, reported as ratios measured in one run (`make bench`)."""

"""Benchmarks (not timed tests): ``appliance bench kernels`` runs ``kernels.run``."""

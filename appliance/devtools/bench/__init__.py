"""Benchmarks (not timed tests): ``appliance bench kernels|ingest|memory`` and
``python -m appliance.devtools.bench.train``."""

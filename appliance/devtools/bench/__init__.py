"""Benchmarks (not timed tests): ``appliance bench kernels|ingest|memory|drift|sql|growth|
capacity|train``; the rest (``challengers``, ``retrain``, ``walk_forward``, ``short_runs``)
as ``python -m appliance.devtools.bench.<name>``."""

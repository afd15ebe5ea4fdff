"""The feature pipeline: one spec, run in batch (training, backtests) or live (service).

``spec`` declares what is computed; ``batch`` computes it over stored history;
``live`` computes it one reading at a time.  Both place readings on the same
event-time grid and feed the same Cython kernels, so a live feature row equals
the batch row for the same tick (train/serve skew is zero by construction).
"""

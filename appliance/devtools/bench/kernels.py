"""Benchmark of the batch kernels against bottleneck and pandas, and of the streaming bank.

Each batch kernel runs on ``n`` float64 samples, windows 60 and 3600, best of
a few interleaved repeats, twice: with ``ts=None`` (one sample per second, so
``window_s = w`` holds the last w samples: bottleneck's ``window=w``, the
like-for-like figure, ``ns_per_sample`` and ``ratio``) and with ``ts =
arange(n)`` given (an event-time window over the same samples: the kernel
must first prove from ts that every window holds exactly w samples,
``event_time_ns_per_sample``).  The outputs are checked against bottleneck's
first: a benchmark of wrong answers is worthless.  The last figure is the
service's whole per-sensor chain (``appliance.features.live``) for 10,000
series, one reading each per tick.  The streaming figure is one tick of the
``RollingBank`` (mean, std, min, max, median, slope, change, EWMA) over 10,000 series,
one new sample each, windows full.

bottleneck and pandas are benchmark-only dependencies, imported here only.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

KERNELS = ("move_mean", "move_std", "move_min", "move_max", "move_median")
WINDOWS = (60, 3600)
PANDAS_METHOD = {"move_mean": "mean", "move_std": "std", "move_min": "min",
                 "move_max": "max", "move_median": "median"}
BANK_SERIES = 10_000
BANK_WINDOW_S = 60.0


def _best_ns(fn: Callable[[], object], repeats: int) -> int:
    best = None
    for _ in range(repeats):
        t = time.perf_counter_ns()
        fn()
        dt = time.perf_counter_ns() - t
        best = dt if best is None or dt < best else best
    return int(best)


def _compare(kernel: str, window: int, ts: np.ndarray, x: np.ndarray, out: np.ndarray,
             repeats: int) -> dict[str, Any]:
    import bottleneck as bn
    import pandas as pd

    from appliance.kernels import rolling

    ours_fn = getattr(rolling, kernel)
    bn_fn = getattr(bn, kernel)
    n = x.shape[0]
    # pandas' std is ddof=1 by default; ask for the population std like the others
    kwargs = {"ddof": 0} if kernel == "move_std" else {}
    roll = pd.Series(x).rolling(window, min_periods=1)
    pd_fn = getattr(roll, PANDAS_METHOD[kernel])

    want = bn_fn(x, window, min_count=1)
    ok = all(bool(np.allclose(ours_fn(t, x, float(window), out=out), want, rtol=1e-9,
                              atol=1e-9, equal_nan=True)) for t in (None, ts))

    ours = event = bott = None
    for _ in range(repeats):          # interleaved, so drift in machine load hits all
        o = _best_ns(lambda: ours_fn(None, x, float(window), out=out), 1)
        e = _best_ns(lambda: ours_fn(ts, x, float(window), out=out), 1)
        b = _best_ns(lambda: bn_fn(x, window, min_count=1), 1)
        ours = o if ours is None else min(ours, o)
        event = e if event is None else min(event, e)
        bott = b if bott is None else min(bott, b)
    pand = _best_ns(lambda: pd_fn(**kwargs), max(1, repeats // 2))
    return {
        "kernel": kernel,
        "window": window,
        "ns_per_sample": round(ours / n, 3),
        "bottleneck_ns_per_sample": round(bott / n, 3),
        "ratio": round(ours / bott, 3),
        "event_time_ns_per_sample": round(event / n, 3),
        "event_time_ratio": round(event / bott, 3),
        "pandas_ns_per_sample": round(pand / n, 3),
        "matches_bottleneck": ok,
    }


def bank_tick(n_series: int = BANK_SERIES, window_s: float = BANK_WINDOW_S,
              ticks: int = 40) -> dict[str, float]:
    """Median time of one tick: every series gets one sample, then its values are read."""
    from appliance.kernels import BANK_COLUMNS, RollingBank

    rng = np.random.default_rng(2024)
    bank = RollingBank(n_series, window_s, halflife_s=window_s / 2)
    idx = np.arange(n_series)
    start = 1.7e9
    warm = int(window_s) + 10
    for k in range(warm):                       # fill every window first
        bank.update(idx, np.full(n_series, start + k), rng.normal(size=n_series))
    times = []
    for k in range(warm, warm + ticks):
        ts = np.full(n_series, start + k)
        x = rng.normal(size=n_series)
        t = time.perf_counter_ns()
        bank.update(idx, ts, x)
        bank.values(idx)
        times.append(time.perf_counter_ns() - t)
    med = float(np.median(times))
    return {"n_series": n_series, "n_features": len(BANK_COLUMNS), "window_s": window_s,
            "ms_per_tick": round(med / 1e6, 3),
            "ns_per_series": round(med / n_series, 1)}


def live_chain_tick(n_assets: int = BANK_SERIES // 5, ticks: int = 10) -> dict[str, float]:
    """Median time of one tick of the service's whole per-sensor chain (validity,
    grid, Hampel, missing, baseline, stuck, both windows' statistics, the rows) for
    ``n_assets`` assets of 5 sensors, through ``appliance.features.live``, as the
    features stage drives it: every series' reading, then one flush.

    Each tick also takes a second reading per series inside the open cell, which
    closes nothing: its time is the readings' own cost, and the tick's cost is the
    first pass's less that (the closes its readings set off) plus the flush."""
    from appliance.config import PipelineConfig
    from appliance.features.live import AssetFeatures, FeatureBanks
    from appliance.features.spec import PipelineSpec

    spec = PipelineSpec.from_config(PipelineConfig())
    banks = FeatureBanks(spec)
    assets = [AssetFeatures(spec, banks) for _ in range(n_assets)]
    sensors = ("a", "b", "c", "d", "e")
    rng = np.random.default_rng(7)
    warm = int(min(spec.windows_s) / spec.cadence_s) + 10   # the short window full

    def readings(t: float) -> int:
        values = rng.normal(size=(n_assets, len(sensors))).tolist()
        started = time.perf_counter_ns()
        for asset, row in zip(assets, values, strict=True):
            for sensor, v in zip(sensors, row, strict=True):
                asset.add(sensor, t, v)
        return time.perf_counter_ns() - started

    def tick(k: int) -> tuple[int, int, int]:
        closing = readings(1.7e9 + (k + 0.25) * spec.cadence_s)  # closes tick k - 1
        started = time.perf_counter_ns()
        banks.flush()  # the window statistics and rows of every asset, as the service does
        flush = time.perf_counter_ns() - started
        return closing, flush, readings(1.7e9 + (k + 0.5) * spec.cadence_s)

    for k in range(warm):
        tick(k)
    closing, flush, plain = (np.array(x, dtype=float) for x in zip(
        *(tick(k) for k in range(warm, warm + ticks)), strict=True))
    n_series = n_assets * len(sensors)
    med = float(np.median(closing + flush))
    reading = float(np.median(plain)) / n_series
    return {"n_series": n_series, "ms_per_tick": round(med / 1e6, 2),
            "us_per_series": round(med / n_series / 1e3, 2),
            "us_per_reading": round(reading / 1e3, 2),
            "us_per_series_tick": round((float(np.median(closing - plain + flush))
                                         / n_series) / 1e3, 2)}


def _table(rows: list[dict[str, Any]], bank: dict[str, float], chain: dict[str, float]) -> str:
    lines = [f"{'kernel':<12} {'window':>6} {'ours ns/s':>10} {'bn ns/s':>9} {'ratio':>6} "
             f"{'event-time ns/s':>15} {'ratio':>6} {'pandas ns/s':>11}  ok"]
    for r in rows:
        ok = "yes" if r["matches_bottleneck"] else "NO"
        lines.append(f"{r['kernel']:<12} {r['window']:>6} {r['ns_per_sample']:>10.2f} "
                     f"{r['bottleneck_ns_per_sample']:>9.2f} {r['ratio']:>6.2f} "
                     f"{r['event_time_ns_per_sample']:>15.2f} {r['event_time_ratio']:>6.2f} "
                     f"{r['pandas_ns_per_sample']:>11.2f}  {ok}")
    lines.append(f"streaming bank: {bank['n_series']} series x {bank['n_features']} features, "
                 f"window "
                 f"{bank['window_s']:g} s: {bank['ms_per_tick']:.2f} ms per tick "
                 f"({bank['ns_per_series']:.0f} ns per series update)")
    lines.append(f"live feature chain: {chain['n_series']} series, every feature of a "
                 f"sensor: {chain['ms_per_tick']:.1f} ms per tick with a reading per series "
                 f"({chain['us_per_series']:.2f} us per series: the reading "
                 f"{chain['us_per_reading']:.2f} us, the tick {chain['us_per_series_tick']:.2f}"
                 f" us)")
    return "\n".join(lines)


def run(json_output: bool = False, n: int = 1_000_000) -> int:
    """Run the benchmark; print a table (or, with ``json_output``, a JSON list).

    Returns 0, or 1 when a kernel disagreed with bottleneck, or 2 when the
    benchmark dependencies are missing.  With ``json_output`` stdout holds only
    the JSON list (keys ``kernel``, ``window``, ``ns_per_sample``,
    ``bottleneck_ns_per_sample``, ``ratio``, ``event_time_ns_per_sample``,
    ``event_time_ratio``, ``pandas_ns_per_sample``, ``matches_bottleneck``);
    the streaming-bank and live-chain lines go to stderr.
    """
    try:
        import bottleneck  # noqa: F401
        import pandas  # noqa: F401
    except ImportError as exc:
        print(f"appliance bench kernels: needs the benchmark dependencies ({exc}); "
              "pip install 'appliance[dev]'", file=sys.stderr)
        return 2
    if n < max(WINDOWS):
        print(f"appliance bench kernels: n must be >= {max(WINDOWS)}, got {n}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(12345)
    x = rng.normal(size=n)
    ts = np.arange(n, dtype=np.float64)
    out = np.empty(n)
    rows = []
    for kernel in KERNELS:
        repeats = 3 if kernel == "move_median" else 7
        for window in WINDOWS:
            rows.append(_compare(kernel, window, ts, x, out, repeats))
    bank = bank_tick()
    chain = live_chain_tick()
    if json_output:
        print(json.dumps(rows, indent=2))
        print(f"streaming bank: {json.dumps(bank)}", file=sys.stderr)
        print(f"live feature chain: {json.dumps(chain)}", file=sys.stderr)
    else:
        print(_table(rows, bank, chain))
    return 0 if all(r["matches_bottleneck"] for r in rows) else 1

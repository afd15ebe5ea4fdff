"""``appliance bench tick`` on a small line: every stage timed over every tick asked for,
the rows of every asset, and the challengers predicting beside the champion."""

from __future__ import annotations

import logging

import pytest

from appliance.devtools.bench import tick


@pytest.mark.broker
@pytest.mark.slow
def test_bench_tick_times_every_stage_of_each_tick() -> None:
    logging.getLogger("appliance.stages.features").setLevel(logging.ERROR)
    r = tick.measure(assets=12, ticks=15)
    assert (r["assets"], r["sensors"], r["challengers"]) == (12, 5, 2)
    assert r["ticks"] == 15 and r["rows_per_tick"] >= 11  # an asset may be in a fault
    assert r["challenger_predictions_per_tick"] == 2 * r["rows_per_tick"]
    for stage in tick.STAGES:
        assert 0 < r[stage]["p50_ms"] <= r[stage]["p99_ms"] <= r[stage]["max_ms"]
    assert r["total"]["p50_ms"] >= r["features"]["p50_ms"]

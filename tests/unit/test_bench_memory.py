"""bench memory's figures: RSS and its anonymous part (the bench itself is run by hand)."""

from __future__ import annotations

import numpy as np

from appliance.devtools.bench.memory import anon_mb, rss_mb


def test_anonymous_rss_is_part_of_rss_and_follows_the_heap() -> None:
    before = anon_mb()
    assert 0 < before <= rss_mb()
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MB, written: anonymous pages
    assert anon_mb() - before > 48
    assert anon_mb() <= rss_mb()
    del block

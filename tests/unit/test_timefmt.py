"""Time in one form each: the helpers agree with each other."""

import numpy as np
import pytest

from appliance.timefmt import from_us, parse_rfc3339, parse_time, rfc3339, to_us


def test_microseconds_round_trip_scalars_and_arrays():
    assert to_us(1.5) == 1_500_000 and isinstance(to_us(1.5), int)
    assert from_us(1_500_000) == 1.5 and isinstance(from_us(1_500_000), float)
    ts = np.array([0.0, 1.0000004, 1.0000006, 1_700_000_000.25])
    np.testing.assert_array_equal(to_us(ts), [0, 1_000_000, 1_000_001, 1_700_000_000_250_000])
    np.testing.assert_array_equal(from_us(to_us(ts[[0, 3]])), ts[[0, 3]])


def test_rfc3339_out_and_in():
    assert rfc3339(1_700_000_000) == "2023-11-14T22:13:20Z"
    assert parse_rfc3339("2023-11-14T22:13:20Z") == 1_700_000_000
    assert parse_rfc3339("2023-11-14T23:13:20+01:00") == 1_700_000_000
    assert parse_rfc3339("2023-11-14T22:13:20") == 1_700_000_000  # zone-less = UTC
    with pytest.raises(ValueError):
        parse_rfc3339("yesterday")


def test_a_typed_time_is_seconds_or_rfc3339():
    assert parse_time("1700000000") == 1_700_000_000
    assert parse_time(" 2023-11-14T22:13:20Z ") == 1_700_000_000
    with pytest.raises(ValueError, match="is not a time"):
        parse_time("nan")

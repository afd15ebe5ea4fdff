"""Shared fixtures: a private mosquitto per test, and services that are always killed.

Helpers live in ``tests/support``; this file holds fixtures only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.devtools.mosquitto import PrivateBroker
from tests.support.service import Service


@pytest.fixture
def broker() -> Iterator[PrivateBroker]:
    with PrivateBroker() as b:
        yield b


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator:
    started: list[Service] = []

    def make(config: Path) -> Service:
        s = Service(config)
        started.append(s)
        return s

    yield make
    for s in started:
        s.kill()

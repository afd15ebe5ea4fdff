"""Shared fixtures: a private mosquitto per test, and services that are always killed;
and the markers that follow from what a test uses.

Helpers live in ``tests/support``; this file holds fixtures and the marking hook only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.devtools.mosquitto import PrivateBroker
from tests.support.faults import ReadingPublisher
from tests.support.service import Service

FAULTS = Path(__file__).parent / "faults"
#: A test that uses one of these fixtures (directly or through another fixture) needs
#: what the marker says: a mosquitto binary, or root.
MARK_BY_FIXTURE = {"broker": pytest.mark.broker, "small_disk": pytest.mark.root}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by what they need, so the markers cannot be forgotten: ``broker`` and
    ``root`` from their fixtures, ``slow`` for the whole fault suite (kill, cut, fill,
    fuzz: each runs for tens of seconds)."""
    for item in items:
        used = getattr(item, "fixturenames", ())
        for fixture, mark in MARK_BY_FIXTURE.items():
            if fixture in used:
                item.add_marker(mark)
        if item.path.is_relative_to(FAULTS):
            item.add_marker(pytest.mark.slow)


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


def tracked(make: Callable, close: Callable) -> Iterator[Callable]:
    """A factory fixture's body: ``make``'s results, all closed at the end."""
    made: list = []

    def tracked_make(*args, **kw):
        made.append(make(*args, **kw))
        return made[-1]

    yield tracked_make
    for thing in made:
        close(thing)


@pytest.fixture
def publishers() -> Iterator:
    """``make(broker, total, **kw)`` → a ReadingPublisher (not started); closed at the end."""
    yield from tracked(ReadingPublisher, ReadingPublisher.close)

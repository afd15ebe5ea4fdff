"""Fixtures of the fault-injection suite (``tests/faults``).

The broker (``broker``) comes from the suite's root conftest and the helpers from
``tests.support``; these add the service with its database anywhere, publishers that are
always closed, and a small tmpfs for the disk-full test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.faults import FaultService, ReadingPublisher


def _tracked(make: Callable, close: Callable) -> Iterator[Callable]:
    """A factory fixture's body: ``make``'s results, all closed at the end."""
    made: list = []

    def tracked(*args, **kw):
        made.append(make(*args, **kw))
        return made[-1]

    yield tracked
    for thing in made:
        close(thing)


@pytest.fixture
def fault_service() -> Iterator:
    """``make(config, db)`` → a FaultService (not started); all are killed at the end."""
    yield from _tracked(FaultService, FaultService.kill)


@pytest.fixture
def publishers() -> Iterator:
    """``make(broker, total, **kw)`` → a ReadingPublisher (not started); closed at the end."""
    yield from _tracked(ReadingPublisher, ReadingPublisher.close)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted on ``tmp_path/disk`` (needs root); always unmounted."""
    if os.geteuid() != 0:
        pytest.fail("the disk-full test mounts a tmpfs and must run as root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mount)],
                   check=True)
    try:
        yield mount
    finally:
        # lazy: a service killed a moment ago may still hold a file open
        subprocess.run(["umount", "-l", str(mount)], check=False)

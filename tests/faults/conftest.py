"""Fixtures of the fault-injection suite (``tests/faults``).

The broker (``broker``) and ``tests.conftest`` helpers come from the suite's root
conftest; these add the service with its database anywhere, publishers that are
always closed, and a small tmpfs for the disk-full test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.faultkit import FaultService, ReadingPublisher


@pytest.fixture
def fault_service() -> Iterator:
    """``make(config, db)`` → a FaultService (not started); all are killed at the end."""
    made: list[FaultService] = []

    def make(config: Path, db: Path) -> FaultService:
        svc = FaultService(config, db)
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.kill()


@pytest.fixture
def publishers() -> Iterator:
    """``make(broker, total, **kw)`` → a ReadingPublisher (not started); closed at the end."""
    made: list[ReadingPublisher] = []

    def make(broker, total: int, **kw) -> ReadingPublisher:
        pub = ReadingPublisher(broker, total, **kw)
        made.append(pub)
        return pub

    yield make
    for pub in made:
        pub.close()


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

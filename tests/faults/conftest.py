"""Fixtures of the fault-injection suite (``tests/faults``).

The broker (``broker``) comes from the suite's root conftest and the helpers from
``tests.support``; these add the service with its database anywhere and a small
tmpfs for the disk-full test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import tracked
from tests.support.faults import FaultService


@pytest.fixture
def fault_service() -> Iterator:
    """``make(config, db)`` → a FaultService (not started); all are killed at the end."""
    yield from tracked(FaultService, FaultService.kill)


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

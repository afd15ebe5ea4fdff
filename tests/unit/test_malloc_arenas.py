"""The service caps glibc's malloc arenas before its threads start (runner.py)."""

from __future__ import annotations

import os

import pytest

from appliance.service import runner


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


@pytest.fixture
def libc(monkeypatch: pytest.MonkeyPatch) -> FakeLibc:
    fake = FakeLibc()
    monkeypatch.setattr(runner.ctypes, "CDLL", lambda name: fake)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.setattr(runner.os, "confstr", lambda name: "glibc 2.36")
    return fake


def test_mallopt_sets_m_arena_max_on_glibc(libc: FakeLibc) -> None:
    assert runner.limit_malloc_arenas() is True
    assert libc.calls == [(-8, runner.MALLOC_ARENAS)]  # M_ARENA_MAX in <malloc.h>
    assert runner.MALLOC_ARENAS == 2


def test_the_environment_setting_stands(libc: FakeLibc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert runner.limit_malloc_arenas() is False
    assert libc.calls == []


def test_nothing_elsewhere_than_glibc(libc: FakeLibc, monkeypatch: pytest.MonkeyPatch) -> None:
    def musl(name: str) -> str:
        raise ValueError("unrecognized configuration name")

    monkeypatch.setattr(runner.os, "confstr", musl)
    assert runner.limit_malloc_arenas() is False
    assert libc.calls == []


def test_the_real_call_succeeds_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    try:
        expected = bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except ValueError:  # not glibc
        expected = False
    assert runner.limit_malloc_arenas() is expected


def test_the_service_caps_arenas_before_it_builds_the_pipeline(
        monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []

    def build(cfg: object) -> None:
        order.append("build")
        raise RuntimeError("stop here")

    monkeypatch.setattr(runner, "limit_malloc_arenas", lambda: order.append("arenas"))
    monkeypatch.setattr(runner, "build", build)
    with pytest.raises(RuntimeError, match="stop here"):
        runner.Service(object())  # type: ignore[arg-type]
    assert order == ["arenas", "build"]

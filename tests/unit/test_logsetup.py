"""The log format follows where stderr goes: journald (JOURNAL_STREAM naming the stream's
device and inode) or anywhere else."""

from __future__ import annotations

import logging
import os

from appliance.logsetup import JournalFormatter, formatter


def _record(level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord("appliance.x", level, __file__, 1, msg, None, None)


def test_a_stream_named_by_journal_stream_gets_priorities_and_no_time(tmp_path):
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        fmt = formatter(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert isinstance(fmt, JournalFormatter) and not fmt.usesTime()
    assert fmt.format(_record(logging.ERROR, "e")) == "<3>ERROR appliance.x: e"
    assert fmt.format(_record(logging.WARNING, "w")).startswith("<4>WARNING")
    assert fmt.format(_record(logging.INFO, "i")).startswith("<6>INFO")
    assert fmt.format(_record(logging.DEBUG, "d")).startswith("<7>DEBUG")
    # each line of a multi-line message keeps its priority (journald splits lines)
    assert fmt.format(_record(logging.ERROR, "a\nb")).splitlines()[1] == "<3>b"


def test_another_stream_or_no_variable_keeps_the_timestamped_format(tmp_path):
    with open(tmp_path / "stream", "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(other.fileno())  # the variable names another stream (inherited)
        for env in ({}, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
                    {"JOURNAL_STREAM": "garbage"}):
            fmt = formatter(stream, env)
            line = fmt.format(_record(logging.INFO, "i"))
            assert fmt.usesTime() and not line.startswith("<"), (env, line)
            assert line.endswith(" INFO appliance.x: i"), line

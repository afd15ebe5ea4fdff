"""The log format: a timestamped line on a terminal or in a file; under systemd's journal
no timestamp (journald stamps every line itself) and a syslog priority prefix per line
(sd-daemon(3): ``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug), so
``journalctl -p warning`` finds the warnings."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import TextIO

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"


def under_journald(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """True when ``stream`` is connected to the journal: systemd sets ``JOURNAL_STREAM``
    to the device and inode (``DEV:INODE``) of the service's stdout/stderr stream, and
    documents comparing them with the stream's own (a child whose stderr was redirected
    inherits the variable but not the stream)."""
    dev, _, ino = environ.get("JOURNAL_STREAM", "").partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no file behind it (a test's capture)
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class JournalFormatter(logging.Formatter):
    """Every line prefixed with its record's syslog priority: journald reads the prefix of
    each line, so a traceback's lines keep the priority of the error that carries them."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    @staticmethod
    def priority(levelno: int) -> int:
        if levelno >= logging.ERROR:
            return 3
        if levelno >= logging.WARNING:
            return 4
        if levelno >= logging.INFO:
            return 6
        return 7

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{self.priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def formatter(stream: TextIO, environ: Mapping[str, str] = os.environ) -> logging.Formatter:
    """The journal's format when ``stream`` goes to the journal, else the plain one."""
    return JournalFormatter() if under_journald(stream, environ) else \
        logging.Formatter(PLAIN_FORMAT)


def configure(level: int) -> None:
    """The root logger to stderr, in the format for where stderr goes."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(sys.stderr))
    logging.basicConfig(level=level, handlers=[handler])

"""The ``vmix`` logger: one ``[VMix]`` line per message on the console, at the level ``--vmix-loglevel`` sets."""

from __future__ import annotations

import logging
import os
import sys

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _ConsoleHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is now: hosts and test runners replace it after import."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


logger = logging.getLogger("vmix")


def configure(level: str | None) -> None:
    """Once per import of the script; ``VMIX_DEBUG=1`` in the environment still means DEBUG."""
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        handler = _ConsoleHandler()
        handler.setFormatter(logging.Formatter("[VMix] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    name = "DEBUG" if os.environ.get("VMIX_DEBUG") else (level or "INFO").upper()
    logger.setLevel(name if name in LEVELS else "INFO")

"""Stand-in for modules/errors.py: the host logs (and swallows) exceptions raised by scripts and callbacks."""

from __future__ import annotations

import traceback

reported: list[str] = []
"""Stand-in helper: every message passed to report()/display(), with the traceback text appended."""


def report(message: str, *, exc_info: bool = False) -> None:
    """Mirrors modules/errors.py: report — prints the message (and current traceback) to stderr."""
    text = message + ("\n" + traceback.format_exc() if exc_info else "")
    reported.append(text)


def display(e: Exception, task: str, **_: object) -> None:
    """Mirrors modules/errors.py: display — prints an exception raised while doing `task`."""
    reported.append(f"{task}: {type(e).__name__}: {e}")

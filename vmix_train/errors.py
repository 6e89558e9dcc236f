"""The trainer's error for a run that cannot go on; the command line prints its message, without a traceback."""

from __future__ import annotations


class TrainingError(RuntimeError):
    pass

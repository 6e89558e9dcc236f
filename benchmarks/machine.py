"""Facts about the machine a benchmark runs on, shared by the benchmark scripts (Linux /proc; "unknown" elsewhere)."""

from __future__ import annotations

import os
import time


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process) so far."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    except (OSError, ValueError, IndexError):
        busy = float("nan")
    own = os.times()
    return busy, own.user + own.system


class Load:
    """How many CPUs other processes kept busy from its creation to ``others_cores()`` (steal time included)."""

    def __init__(self) -> None:
        self.busy, self.own = cpu_seconds()
        self.wall = time.perf_counter()

    def others_cores(self) -> float:
        busy, own = cpu_seconds()
        return max(0.0, (busy - self.busy) - (own - self.own)) / (time.perf_counter() - self.wall)

"""Stand-in for modules/shared_state.py: the global job/progress state."""

from __future__ import annotations

import datetime


class State:
    """Mirrors modules/shared_state.py: State — flags and counters the sampler and UI read."""

    def __init__(self) -> None:
        self.skipped = False
        self.interrupted = False
        self.stopping_generation = False
        self.job = ""
        self.job_no = 0
        self.job_count = 0
        self.processing_has_refined_job_count = False
        self.job_timestamp = "0"
        self.sampling_step = 0
        self.sampling_steps = 0
        self.textinfo: str | None = None

    def interrupt(self) -> None:
        """Mirrors State.interrupt: sets interrupted; the CFG denoiser then stops sampling."""
        self.interrupted = True

    def skip(self) -> None:
        """Mirrors State.skip."""
        self.skipped = True

    def nextjob(self) -> None:
        """Mirrors State.nextjob: advances job_no and resets sampling_step."""
        self.job_no += 1
        self.sampling_step = 0

    def begin(self, job: str = "(unknown)") -> None:
        """Mirrors State.begin: resets flags and stamps job_timestamp (YYYYmmddHHMMSS)."""
        self.sampling_step = 0
        self.job_count = -1
        self.processing_has_refined_job_count = False
        self.job_no = 0
        self.job_timestamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        self.skipped = False
        self.interrupted = False
        self.stopping_generation = False
        self.job = job

    def end(self) -> None:
        """Mirrors State.end."""
        self.job = ""
        self.job_count = 0

"""What one run of one backup set came to, and how a stage fails."""

from __future__ import annotations

from dataclasses import dataclass


class StageError(Exception):
    """A run failed at ``stage`` (prepare, lock, info, disk, restore, start, recovery, verify, ...);
    the message says why and never holds a secret."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage
        self.message = message


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived: unwind (every ``finally`` stops and removes what the run made)."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


@dataclass
class Outcome:
    """The result of one run of one set; measurements only on success."""

    success: bool
    stage: str | None = None  # the stage that failed
    error: str | None = None
    rto_seconds: float | None = None
    rpo_seconds: float | None = None
    restored_bytes: int | None = None
    backup_label: str | None = None  # the pgBackRest backup or the RDB file restored

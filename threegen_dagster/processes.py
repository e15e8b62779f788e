"""Which process a run belongs to, and whether that process still lives.

A run that ``threegen`` executes in its own process carries three tags: the host, the pid and
the process's start time. A later process on the same host can then tell a run whose process
was killed (``kill -9``, OOM killer, a closed terminal) from one that is still working: the pid
must exist, not be a zombie, and have started when the recorded one did, so a pid the system
has since given to another process does not count as alive. Runs recorded on another host
are "unknown", never "dead": their pids mean nothing here. No Dagster imports.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Literal

import psutil

HOST_TAG = "threegen/host"
PID_TAG = "threegen/pid"
STARTED_TAG = "threegen/process_started"
START_TIME_TOLERANCE_S = 1.0  # create times are derived from boot time + ticks; allow for rounding

State = Literal["alive", "dead", "unknown"]


def this_host() -> str:
    return socket.gethostname()


def identity_tags() -> dict[str, str]:
    """The tags that tie a run to this process."""
    me = psutil.Process()
    return {HOST_TAG: this_host(), PID_TAG: str(me.pid), STARTED_TAG: f"{me.create_time():.3f}"}


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    started: float  # unix seconds

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Owner | None:
        """The owner a run's tags record, or None for a run no threegen process tagged."""
        try:
            return cls(tags[HOST_TAG], int(tags[PID_TAG]), float(tags[STARTED_TAG]))
        except (KeyError, ValueError):
            return None

    def state(self) -> State:
        if self.host != this_host():
            return "unknown"
        try:
            process = psutil.Process(self.pid)
            created, status = process.create_time(), process.status()
        except psutil.NoSuchProcess:
            return "dead"
        except psutil.AccessDenied:  # it exists, and belongs to someone we may not inspect
            return "alive"
        if status == psutil.STATUS_ZOMBIE:  # killed, not yet reaped by its parent
            return "dead"
        if abs(created - self.started) > START_TIME_TOLERANCE_S:
            return "dead"  # the pid now belongs to another process
        return "alive"

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"

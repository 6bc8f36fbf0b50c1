"""What the app's background workers share (docs/ARCHITECTURE.md §App): the map's worker
(`analysis.projection`) and the render views' worker (`render.background`) each run in their own
process and session, hold an exclusive flock while they work, and report a stage and an estimate
that a page turns into a progress bar. The rules of each job (its files, its record) stay with it;
this module holds only the mechanism both use."""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from pathlib import Path


class Progress:
    """`fraction` for a status with `elapsed_s` and `estimate_s` (a dataclass's fields)."""

    elapsed_s: float
    estimate_s: float

    @property
    def fraction(self) -> float:
        """Elapsed time over the estimate, capped below 1 (an estimate, not a measurement of work)."""
        return min(0.95, self.elapsed_s / self.estimate_s) if self.estimate_s else 0.0


def lock_held(lock: Path) -> bool:
    """Whether a worker holds `lock` (an exclusive flock) now; an unreadable lock file holds nothing."""
    if not lock.exists():
        return False
    try:
        with open(lock, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:
        return False
    return False


def take_lock(handle, patience_s: float = 1.0) -> bool:
    """An exclusive flock on the open file `handle` for a worker, without blocking: True once held, False
    when another worker holds it. `lock_held`'s probe takes the lock for microseconds, so a busy lock is
    tried again for `patience_s` before the worker concludes that another one is at work (a single try
    lost to a probe was a worker started for nothing and a map left to the page's next start)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def spawn(command: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start `command` in its own session (it finishes even if the server that asked for it stops), its
    output appended to `log`, no stdin. OSError when it cannot be started (e.g. a read-only folder)."""
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})})

"""Which process is which, across pid reuse and clock changes.

A pid alone names a process only while it runs; once it exits the pid is handed out again. A pid plus
its start time names one process for good, as long as the start time is read the same way each time.
psutil's `create_time()` on Linux is the kernel's start count plus the boot time, and the boot time is
worked out from the wall clock on every call: when the clock is set (NTP stepping it on a fresh
machine), every live process seems to have started at another time. The kernel's own count since boot
(`/proc/PID/stat`, field 22) does not move, so on Linux that is what is compared.
"""

from __future__ import annotations

import os
from pathlib import Path


def started(pid: int | None = None) -> float:
    """When the process started, in seconds, read so that setting the clock does not move it: on Linux
    the kernel's count since boot, elsewhere the start time the OS recorded. ProcessLookupError when
    there is no such process."""
    pid = os.getpid() if pid is None else pid
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            fields = stat.read_text().rpartition(")")[2].split()  # the name, in parentheses, may hold spaces
        except FileNotFoundError:
            raise ProcessLookupError(pid) from None
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        raise ProcessLookupError(pid) from None


def same(pid: int, when: float, slack: float = 0.05) -> bool:
    """Whether `pid` is still the process that `started()` read as `when` (not one under a reused pid)."""
    try:
        return abs(started(pid) - when) <= slack
    except (ProcessLookupError, PermissionError, ValueError, IndexError):
        return False

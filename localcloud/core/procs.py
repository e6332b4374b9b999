"""What /proc says about a process: its stat fields, its children, whether it is going.

Shared by the supervisor (is the data directory's lock held by a process on its way
out?), the children it owns, and Cloud Run instances (is the instance whose connection
just failed dying, so that no request is routed to it?).
"""

from __future__ import annotations

import signal

PF_EXITING = 0x4  # stat flags: the process is in exit()
SIGKILL_BIT = 1 << (signal.SIGKILL - 1)  # in the SigPnd/ShdPnd masks of /proc/PID/status


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces and
    parentheses): state, ppid, pgrp, session, tty, tpgid, flags, ...; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children(pid: int) -> list[int]:
    """The direct children of ``pid``'s main thread."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


def going(pid: int) -> bool:
    """Whether ``pid`` is gone or on its way: a zombie, in exit(), or with a SIGKILL
    pending. Such a process may still hold its files (a lock, a listening socket) for a
    moment, until exit() closes them."""
    fields = stat_fields(pid)
    if fields is None or fields[0] in (b"Z", b"X", b"x"):
        return True
    try:
        if int(fields[6]) & PF_EXITING:
            return True
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except (OSError, IndexError, ValueError):
        return True
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("SigPnd", "ShdPnd") and int(value.strip(), 16) & SIGKILL_BIT:
            return True
    return False

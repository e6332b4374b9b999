"""What /proc says about a process: its stat fields, its children, whether it is going.

Shared by the supervisor (is the data directory's lock held by a process on its way
out?), the children it owns, Cloud Run instances (is the instance whose connection
just failed dying, so that no request is routed to it?), and whatever ends a bwrap
sandbox that may still be starting (``end_sandbox``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Any

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


async def end_sandbox(pid: int, settle: float = 1.0) -> None:
    """SIGKILL bwrap ``pid`` (started in a session of its own) and its sandbox, wherever
    its start-up is.

    Killing bwrap alone is not enough while it sets up: its child, already the init of
    the new PID namespace, arms --die-with-parent's signal only later, and by then may
    have left bwrap's process group for a session of its own. A kill in between leaves the
    child, and the program it goes on to start, running for good and holding every pipe
    they inherited (measured here: of 300 starts killed within 4 ms, killing bwrap left
    nearly all such children, killing its process group 10). So the group is stopped first:
    a signal to a group makes a fork in progress start over, so once bwrap has stopped it
    has every child it will ever have. Those are read from /proc and killed (each the init
    of a namespace, whose death ends every process in it), then the group.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGSTOP)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settle
    while loop.time() < deadline:
        fields = stat_fields(pid)
        if fields is None or fields[0] in (b"T", b"t", b"Z", b"X", b"x"):
            break
        await asyncio.sleep(0.001)
    for child in children(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)  # not a group leader after all: bwrap itself


async def start_sandbox(*argv: str, **options: Any) -> asyncio.subprocess.Process:
    """``asyncio.create_subprocess_exec(*argv, **options)`` for a bwrap, in a session of
    its own, which a cancel cannot cut off halfway: asyncio would then kill() the bwrap it
    was starting and leave its sandbox running (``end_sandbox``). The start is let finish,
    and what it started ended, before the cancel goes on."""
    starting = asyncio.ensure_future(
        asyncio.create_subprocess_exec(*argv, start_new_session=True, **options)
    )
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):  # a start that failed left nothing to end
            process = await starting
            await end_sandbox(process.pid)
            await process.wait()
        raise

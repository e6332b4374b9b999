"""Child processes the supervisor owns: started with logs to a file, killed with it.

Each child gets ``PR_SET_PDEATHSIG`` so the kernel sends it SIGTERM if the supervisor
dies, even by SIGKILL: localcloud never leaves orphans holding its ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from localcloud.core import procs

LOG = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    health_url: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    # Run in the child between fork and exec (after the parent-death signal is set): a
    # seccomp filter, say. Prepare everything in the parent; this only makes system calls.
    preexec: Callable[[], None] | None = None


class Child:
    def __init__(self, spec: ChildSpec, log_dir: Path) -> None:
        self.spec = spec
        self.log_path = log_dir / f"{spec.name}.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it open
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, **self.spec.env},
                cwd=self.spec.cwd,
                preexec_fn=self._preexec,
            )
        finally:
            log.close()
        LOG.info(
            "started %s (pid %s): %s", self.spec.name, self.process.pid, " ".join(self.spec.argv)
        )

    def _preexec(self) -> None:
        _die_with_parent()
        if self.spec.preexec is not None:
            self.spec.preexec()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def wait_healthy(self, session: aiohttp.ClientSession, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        last = "no answer yet"
        while loop.time() < end:
            if self.process is None or self.process.returncode is not None:
                code = self.process.returncode if self.process is not None else None
                raise RuntimeError(
                    f"{self.spec.name} exited with code {code}; see {self.log_path}:\n{self.tail()}"
                )
            try:
                async with session.get(self.spec.health_url, timeout=aiohttp.ClientTimeout(2)) as r:
                    if r.status < 500:
                        return
                    last = f"HTTP {r.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = str(exc) or type(exc).__name__
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.spec.name} did not become healthy in {timeout:g}s ({last})")

    async def stop(self, timeout: float = 10.0) -> None:
        if not self.running:
            return
        assert self.process is not None
        # A child under bubblewrap: bwrap forwards no signal (and its child dies with it),
        # so its program gets the SIGTERM itself, stops cleanly, and bwrap exits with it.
        inner = procs.children(self.process.pid)
        for pid in inner:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if not inner:
            self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            LOG.warning("%s did not stop in %gs; killing it", self.spec.name, timeout)
            self.process.kill()
            await self.process.wait()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

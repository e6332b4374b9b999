"""Instances of revisions: scale from zero, per-instance concurrency, max instances, idle.

Like Knative's activator and autoscaler in one small piece: a request asks its revision's
pool for an instance with room; if none has room and the pool may grow, a new instance
starts and the request waits for it (scale from zero is the same path). Requests beyond
what the instances and a bounded queue can hold get 429. Instances idle longer than the
idle period stop, down to the revision's minimum. An instance that exits is dropped; the
next request starts a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcloud.core.config import free_port
from localcloud.run import sandbox
from localcloud.run.images import ImageCache
from localcloud.run.prestart import Prestarts

LOG = logging.getLogger(__name__)
DEFAULT_CONCURRENCY = 80
DEFAULT_MAX_INSTANCES = 100
QUEUE_PER_INSTANCE = 10  # waiting requests allowed per possible instance before 429
STARTUP_TIMEOUT = 60.0


class Overloaded(Exception):
    """No instance can take the request and the queue is full (HTTP 429)."""


class StartFailed(Exception):
    """The revision's instance did not start; the message has the log tail."""


@dataclass(eq=False)
class Slot:
    instance: Any  # sandbox.Instance
    inflight: int = 0
    last_used: float = field(default_factory=time.monotonic)


class Pool:
    """One revision's instances."""

    def __init__(
        self,
        name: str,
        spec_for: Callable[[int], Any],
        concurrency: int,
        min_n: int,
        max_n: int,
        start: Callable[[Any], Awaitable[Any]] = sandbox.start,
    ) -> None:
        self.name = name
        self.spec_for = spec_for
        self.start = start  # an instance of a spec: prestart.Prestarts.start in localcloud
        self.concurrency = concurrency or DEFAULT_CONCURRENCY
        self.min = min_n
        self.max = max_n or DEFAULT_MAX_INSTANCES
        self.slots: list[Slot] = []
        self.starting = 0
        self.waiting = 0
        self.changed = asyncio.Condition()
        self.last_error: str | None = None
        self.closed = False

    def _alive(self) -> None:
        dead = [s for s in self.slots if not s.instance.running]
        for slot in dead:
            LOG.warning("instance of %s exited:\n%s", self.name, slot.instance.log_tail())
            self.slots.remove(slot)

    def _free(self) -> Slot | None:
        best = None
        for slot in self.slots:
            if slot.inflight < self.concurrency and (best is None or slot.inflight < best.inflight):
                best = slot
        return best

    async def acquire(self, timeout: float = STARTUP_TIMEOUT) -> Slot:
        deadline = time.monotonic() + timeout
        async with self.changed:
            self._alive()
            self.waiting += 1
            try:
                while True:
                    slot = self._free()
                    if slot is not None:
                        slot.inflight += 1
                        return slot
                    # Free room now plus what starting instances will bring.
                    room = sum(self.concurrency - s.inflight for s in self.slots)
                    room += self.starting * self.concurrency
                    if len(self.slots) + self.starting < self.max and self.waiting > room:
                        self._spawn()
                    elif self.waiting > max(room, 0) + self.max * QUEUE_PER_INSTANCE:
                        raise Overloaded(f"{self.name}: all {self.max} instances are busy")
                    if self.last_error and not self.slots and not self.starting:
                        error, self.last_error = self.last_error, None
                        raise StartFailed(error)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise StartFailed(
                            f"{self.name}: no instance became available in {timeout:g}s"
                        )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.changed.wait(), remaining)
                    self._alive()
            finally:
                self.waiting -= 1

    async def release(self, slot: Slot) -> None:
        async with self.changed:
            slot.inflight -= 1
            slot.last_used = time.monotonic()
            self.changed.notify_all()

    async def discard(self, slot: Slot) -> None:
        """Take an instance that stopped answering out of service and stop it."""
        async with self.changed:
            if slot in self.slots:
                self.slots.remove(slot)
            self.changed.notify_all()
        await slot.instance.stop(grace=1)

    def _spawn(self) -> None:
        self.starting += 1
        asyncio.get_running_loop().create_task(self._start_one())

    async def _start_one(self) -> Slot | None:
        instance = None
        try:
            instance = await self.start(self.spec_for(free_port()))
            await instance.wait_ready(STARTUP_TIMEOUT)
        except BaseException as exc:  # cancelled too: never leak a started process
            if instance is not None:
                await asyncio.shield(instance.stop(grace=1))
            async with self.changed:
                self.starting -= 1
                self.last_error = str(exc) or type(exc).__name__
                self.changed.notify_all()
            if not isinstance(exc, Exception):
                raise
            return None
        slot = Slot(instance)
        async with self.changed:
            self.starting -= 1
            if self.closed:  # the pool was dropped while this instance started
                await instance.stop(grace=1)
                return None
            self.last_error = None
            self.slots.append(slot)
            self.changed.notify_all()
        return slot

    async def probe(self) -> None:
        """Start one instance and wait until it listens (Cloud Run's startup probe)."""
        async with self.changed:
            self.starting += 1
        slot = await self._start_one()
        if slot is None:
            raise StartFailed(self.last_error or "the instance did not start")

    async def reap(self, idle: float) -> None:
        async with self.changed:
            self._alive()
            now = time.monotonic()
            idle_slots = [s for s in self.slots if s.inflight == 0 and now - s.last_used > idle]
            surplus = len(self.slots) - self.min
            victims = idle_slots[: max(surplus, 0)]
            for slot in victims:
                self.slots.remove(slot)
        for slot in victims:
            LOG.info("scaling %s down: instance idle for %.0fs", self.name, idle)
            await slot.instance.stop()
        if len(self.slots) + self.starting < self.min:
            for _ in range(self.min - len(self.slots) - self.starting):
                async with self.changed:
                    self._spawn()

    async def stop(self) -> None:
        async with self.changed:
            self.closed = True
            slots, self.slots = self.slots, []
            self.changed.notify_all()
        await asyncio.gather(*(s.instance.stop() for s in slots), return_exceptions=True)


class Autoscaler:
    """All pools; the idle reaper."""

    def __init__(self, cache: ImageCache, idle_seconds: float, spares: bool = True) -> None:
        self.cache = cache
        self.idle = idle_seconds
        self.pools: dict[str, Pool] = {}
        # sandboxes started ahead; spares of bases in their own scratch directory
        self.prestarts = Prestarts(cache.root / "spares" if spares else None)
        self.task: asyncio.Task | None = None

    async def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._reap_loop(), name="run reaper")

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(min(max(self.idle / 4, 0.2), 5.0))
            for pool in list(self.pools.values()):
                try:
                    await pool.reap(self.idle)
                except Exception:
                    LOG.exception("reaping %s failed", pool.name)

    async def drop(self, revision: str) -> None:
        pool = self.pools.pop(revision, None)
        if pool is not None:
            await pool.stop()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.prestarts.close()
        await asyncio.gather(*(p.stop() for p in self.pools.values()), return_exceptions=True)
        self.pools.clear()
        await self.cache.close()  # its unpacks ahead, before the shared session closes


def log_path(root: Path, revision: str) -> Path:
    return root / f"{revision.rsplit('/', 1)[-1]}.log"

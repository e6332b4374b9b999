"""What the API server starts and stops: every part through one interface.

Each part (an engine, the ingress, the sandbox's network helpers) has ``start`` and
``stop``; the server starts them in the order they depend on each other and stops them in
reverse, so a part never outlives what it uses. A part that fails to stop is logged and
the rest still stop: shutting down must never hang on one broken piece.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

LOG = logging.getLogger(__name__)


class Part(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True)
class Calls:
    """A part made of two plain calls: something whose start and stop are not coroutines
    (the database's writer thread, the sandbox's cgroup helpers)."""

    on_start: Callable[[], None]
    on_stop: Callable[[], None]

    async def start(self) -> None:
        self.on_start()

    async def stop(self) -> None:
        self.on_stop()


class Parts:
    """The started parts, in start order."""

    def __init__(self) -> None:
        self._started: list[tuple[str, Part]] = []

    async def start(self, name: str, part: Part) -> None:
        await part.start()
        self._started.append((name, part))

    async def stop(self) -> None:
        while self._started:
            name, part = self._started.pop()
            try:
                await part.stop()
            except Exception:
                LOG.exception("stopping %s failed", name)

    def names(self) -> list[str]:
        return [name for name, _part in self._started]

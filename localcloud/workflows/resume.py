"""Where an execution is, saved so that it resumes after a restart as Google's executions do.

An execution is one asyncio task plus one per running parallel branch; each task walks the
step tree with a ``Cursor``: the constructs it is inside, outermost first, as plain dicts
("levels") that each construct keeps current while it runs:

| kind | what it holds |
|---|---|
| ``sub`` | a subworkflow's frame: its name and its variables (``scope``) |
| ``list`` | a list of steps: the index and name of the step running |
| ``call`` | a call that waits (``sys.sleep``, ``http.*``, connectors), in flight; a sleep's end |
| ``case`` | the ``switch`` case taken |
| ``for`` | the loop's items (or range), the iteration, the names it must remove at the end |
| ``try`` | the phase (``body``, ``wait`` for a retry, ``except``), attempt, delay, policy |
| ``parallel`` | the items, the finished branches, their errors, a cursor per unfinished branch |
| ``branch`` | a parallel branch's own variables |

A checkpoint dumps the main cursor (branches nested in their ``parallel`` level) as JSON.
The interpreter takes one only where every task is at a consistent place: the dumping task
at a step's start or just before its call, every other task at an ``await``, which is
always inside a level that says what it waits on. On resume the dumped levels are
``pending`` and each construct, entered again from the top, takes its own level back
(``take``) instead of starting fresh: a step list jumps to its step, a loop to its
iteration, a frame gets its variables back. Whatever does not fit the definition is a
``RestoreError`` and the execution fails saying so.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from localcloud.workflows.interpreter import Scope

FORMAT = 1  # of a dump; one of another format is not resumed
_BYTES = "\0bytes"  # a tagged value: bytes, as Base64 (JSON has no bytes)
_MAP = "\0map"  # a map whose own keys start with NUL, so they are not read as tags


class RestoreError(Exception):
    """Saved state that cannot be resumed. Not a ``WorkflowError``: an ``except`` in the
    workflow must not catch it; the execution fails with it."""


def encode(value: Any) -> Any:
    """A Workflows value as JSON can carry it: bytes tagged, everything else as it is."""
    if isinstance(value, dict):
        items = {str(k): encode(v) for k, v in value.items()}
        return {_MAP: items} if any(k.startswith("\0") for k in items) else items
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return {_BYTES: base64.b64encode(value).decode("ascii")}
    return value


def decode(value: Any) -> Any:
    """The value ``encode`` was given."""
    if isinstance(value, dict):
        if len(value) == 1 and _BYTES in value:
            return base64.b64decode(value[_BYTES])
        if len(value) == 1 and _MAP in value:
            value = value[_MAP]
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


class Cursor:
    """Where one task of an execution is: the main one, or one parallel branch.

    ``routine`` names the subworkflow the task started in (a branch runs in its parent's
    until it calls one). ``saving`` is False for a retry predicate's run, which is not
    part of the saved tree: no checkpoint is taken inside it and a restart repeats the
    attempt it judges.
    """

    def __init__(
        self,
        pending: list[dict[str, Any]] | None = None,
        *,
        routine: str = "main",
        saving: bool = True,
    ) -> None:
        self.levels: list[dict[str, Any]] = []
        self.pending = list(pending or [])
        self.base = routine
        self.saving = saving

    @property
    def routine(self) -> str:
        """The subworkflow running in this task now (for ``current_steps`` and errors)."""
        for level in reversed(self.levels):
            if level["kind"] == "sub":
                return str(level["name"])
        return self.base

    @property
    def resuming(self) -> str | None:
        """The kind of the next saved level to take back, while resuming."""
        return str(self.pending[0].get("kind")) if self.pending else None

    def take(self, kind: str, **expected: Any) -> dict[str, Any] | None:
        """The saved level of the construct being entered, or None when not resuming."""
        if not self.pending:
            return None
        saved = self.pending.pop(0)
        if saved.get("kind") != kind or any(saved.get(k) != v for k, v in expected.items()):
            raise RestoreError(
                f"it was saved in {_describe(saved)} where the workflow has "
                f"{_describe({'kind': kind, **expected})}"
            )
        return saved

    @contextlib.contextmanager
    def inside(self, level: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """``level`` is where this task is until the block ends."""
        self.levels.append(level)
        try:
            yield level
        finally:
            self.levels.pop()

    def dump(self) -> list[dict[str, Any]]:
        """The levels as JSON values; a task still resuming adds what it has not taken."""
        return [_dump(level) for level in self.levels] + self.pending


_WORDS = {
    "sub": "subworkflow",
    "list": "step list",
    "case": "switch case",
    "for": "for loop",
    "try": "try step",
    "parallel": "parallel step",
    "branch": "parallel branch",
}


def _describe(level: dict[str, Any]) -> str:
    kind = level.get("kind")
    words = _WORDS.get(str(kind), str(kind))
    return f"a {words} {level['name']!r}" if "name" in level else f"a {words}"


def _dump(level: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in level.items():
        if key == "scope":
            scope: Scope = value
            out["vars"] = encode(scope.local)
        elif key == "branches":
            done = level["done"]
            out[key] = {str(i): c.dump() for i, c in value.items() if i not in done}
        elif key == "done":
            out[key] = sorted(value)
        elif key in ("items", "errors"):
            out[key] = encode(value)
        else:
            out[key] = value
    return out

"""Long-running operations: one store shared by every service.

A service creates an operation when it accepts slow work, updates its metadata as the work
progresses and finishes it with a response or an error. ``google.longrunning.Operations``
(``service.py``) reads from here, so every API's operations are polled, listed, cancelled
and waited on the same way. Operations persist as serialized ``Operation`` protos.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable

from google.longrunning import operations_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2

from localcloud.core.db import Database
from localcloud.core.errors import FailedPrecondition, InvalidArgument, NotFound
from localcloud.core.table import Column, ProtoTable

LOG = logging.getLogger(__name__)

CancelHook = Callable[[str], Awaitable[None]]


def _pack(message: Message | None) -> any_pb2.Any | None:
    if message is None:
        return None
    if isinstance(message, any_pb2.Any):
        return message
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class OperationStore:
    def __init__(self, db: Database) -> None:
        self._ops: ProtoTable[str, operations_pb2.Operation] = ProtoTable(
            db,
            "operations",
            operations_pb2.Operation,
            columns=(Column("done", lambda op: int(op.done), "INTEGER"),),
        )
        self._done_events: dict[str, asyncio.Event] = {}
        self._cancel_hooks: dict[str, CancelHook] = {}

    def _event(self, name: str) -> asyncio.Event:
        event = self._done_events.get(name)
        if event is None:
            event = self._done_events[name] = asyncio.Event()
            if self._ops[name].done:
                event.set()
        return event

    async def create(
        self,
        parent: str,
        metadata: Message | None = None,
        *,
        on_cancel: CancelHook | None = None,
        operation_id: str | None = None,
        response: Message | None = None,
    ) -> operations_pb2.Operation:
        """A new operation named ``{parent}/operations/{id}``: running, or done with
        ``response`` for work finished before the answer (a delete, a ``validate_only``),
        in one write, so a crash cannot leave it running."""
        op = operations_pb2.Operation(name=f"{parent}/operations/{operation_id or uuid.uuid4()}")
        packed = _pack(metadata)
        if packed is not None:
            op.metadata.CopyFrom(packed)
        if response is not None:
            op.response.CopyFrom(_pack(response))
            op.done = True
        if on_cancel is not None:
            self._cancel_hooks[op.name] = on_cancel
        await self._ops.put(op)
        return self.get(op.name)

    async def update_metadata(self, name: str, metadata: Message) -> None:
        op = self._live(name)
        op.metadata.CopyFrom(_pack(metadata))
        await self._ops.put(op)

    async def finish(
        self,
        name: str,
        *,
        response: Message | None = None,
        error: status_pb2.Status | None = None,
        metadata: Message | None = None,
    ) -> operations_pb2.Operation:
        """Mark done with exactly one of ``response`` or ``error``. Finishing twice is a no-op."""
        op = self._live(name)
        if op.done:
            return self.get(name)
        finished = operations_pb2.Operation()
        finished.CopyFrom(op)
        if metadata is not None:
            finished.metadata.CopyFrom(_pack(metadata))
        if error is not None:
            finished.error.CopyFrom(error)
        else:
            packed = _pack(response)
            if packed is not None:
                finished.response.CopyFrom(packed)
        finished.done = True
        # Saved before anyone can see it done: a crash never turns "done" back into "running".
        await self._ops.put(finished, after_commit=True)
        self._cancel_hooks.pop(name, None)
        self._event(name).set()
        return self.get(name)

    def unfinished(self) -> list[operations_pb2.Operation]:
        """Copies of the operations not done: at start, what a stopped localcloud left
        running, for the engine that owns each to finish."""
        return [self.get(name) for name, op in self._ops.items() if not op.done]

    def get(self, name: str) -> operations_pb2.Operation:
        """A copy: callers never hold the store's live object."""
        op = self._ops.get(name)
        if op is None:
            raise NotFound(f"Operation {name} not found.")
        copy = operations_pb2.Operation()
        copy.CopyFrom(op)
        return copy

    def _live(self, name: str) -> operations_pb2.Operation:
        op = self._ops.get(name)
        if op is None:
            raise NotFound(f"Operation {name} not found.")
        return op

    def list(self, parent: str, filter_: str = "") -> list[operations_pb2.Operation]:
        """Operations under ``parent``; ``filter_`` supports ``done=true|false``."""
        prefix = parent.rstrip("/") + "/"
        ops = [self.get(name) for name in self._ops if name.startswith(prefix)]
        text = filter_.replace(" ", "").lower()
        if text in {"done=true", "done:true"}:
            ops = [op for op in ops if op.done]
        elif text in {"done=false", "done:false"}:
            ops = [op for op in ops if not op.done]
        elif text:
            raise InvalidArgument(f"Unsupported filter {filter_!r}: use done=true or done=false")
        return sorted(ops, key=lambda op: op.name)

    async def delete(self, name: str) -> None:
        self.get(name)
        self._cancel_hooks.pop(name, None)
        self._done_events.pop(name, None)
        await self._ops.delete(name)

    async def cancel(self, name: str) -> None:
        """Ask the owning service to stop (its hook finishes the operation as CANCELLED).

        An operation without a cancel hook cannot be stopped: FAILED_PRECONDITION.
        """
        op = self._live(name)
        if op.done:
            return
        hook = self._cancel_hooks.get(name)
        if hook is not None:
            await hook(name)
            return
        raise FailedPrecondition(f"Operation {name} cannot be cancelled.")

    async def wait(self, name: str, timeout: float | None) -> operations_pb2.Operation:
        self.get(name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event(name).wait(), timeout)
        return self.get(name)


def cancelled_status(message: str = "Operation was cancelled.") -> status_pb2.Status:
    return status_pb2.Status(code=code_pb2.CANCELLED, message=message)

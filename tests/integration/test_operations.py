"""The shared ``google.longrunning.Operations`` service, through Google's client.

No public localcloud API creates operations yet, so each test serves ``OperationsService``
in-process (``grpc.aio`` on an event loop in a background thread) and plays the owning
service itself by running coroutines on that loop. The client side is only what a user
has: ``google.api_core.operations_v1.OperationsClient``, its stub, and
``google.api_core.operation`` futures.

Expectations come from ``google.longrunning.Operations``:
https://cloud.google.com/service-infrastructure/docs/service-management/reference/rpc/google.longrunning
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.api_core import exceptions, operation, operations_v1
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2, struct_pb2
from google.rpc import code_pb2

from localcloud.core.db import Database
from localcloud.operations.service import OperationsService
from localcloud.operations.store import OperationStore, cancelled_status

T = TypeVar("T")
PARENT = "projects/local-project/locations/us-central1"


@dataclass
class OperationsServer:
    """An in-process Operations service, its store and a client connected to it."""

    loop: asyncio.AbstractEventLoop
    store: OperationStore
    address: str
    channel: grpc.Channel
    client: operations_v1.OperationsClient

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 5.0) -> T:
        """Run ``coro`` on the server's loop (as the owning service would) and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def create(self, metadata: Any = None, **kwargs: Any) -> operations_pb2.Operation:
        """A new operation, as a copy: what an API returns is off the wire, not the store's."""
        created = self.run(self.store.create(PARENT, metadata, **kwargs))
        return operations_pb2.Operation.FromString(created.SerializeToString())

    def wait(self, name: str, seconds: float, rpc_timeout: float) -> operations_pb2.Operation:
        """WaitOperation through the client's stub (``OperationsClient`` has no wrapper)."""
        return self.wait_async(name, seconds, rpc_timeout).result()

    def wait_async(self, name: str, seconds: float, rpc_timeout: float) -> Any:
        """WaitOperation started in the background: a ``grpc.Future``."""
        request = operations_pb2.WaitOperationRequest(
            name=name, timeout=duration_pb2.Duration(nanos=int(seconds * 1e9) % 10**9)
        )
        request.timeout.seconds = int(seconds)
        return self.client.operations_stub.WaitOperation.future(request, timeout=rpc_timeout)


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[OperationsServer]:
    """Serve ``OperationsService`` on a free loopback port for one test."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="operations-server", daemon=True)
    thread.start()
    db = Database(tmp_path / "db")
    store = OperationStore(db)
    db.start()

    async def serve() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers([OperationsService(store).handler()])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(serve(), loop).result(10)
    address = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(address)
    try:
        yield OperationsServer(
            loop, store, address, channel, operations_v1.OperationsClient(channel)
        )
    finally:
        channel.close()
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        db.close()


def _struct(**fields: Any) -> struct_pb2.Struct:
    value = struct_pb2.Struct()
    value.update(fields)
    return value


def test_get_shows_metadata_then_response(ops: OperationsServer) -> None:
    """GetOperation returns the latest state: metadata while running, then the response."""
    created = ops.create(duration_pb2.Duration(seconds=1))
    assert created.name.startswith(f"{PARENT}/operations/")

    running = ops.client.get_operation(created.name, timeout=5)
    assert not running.done
    progress = duration_pb2.Duration()
    assert running.metadata.Unpack(progress)
    assert progress.seconds == 1

    ops.run(ops.store.update_metadata(created.name, duration_pb2.Duration(seconds=2)))
    ops.run(ops.store.finish(created.name, response=_struct(ok=True, url="http://svc")))
    done = ops.client.get_operation(created.name, timeout=5)
    assert done.done
    assert done.WhichOneof("result") == "response"
    result = struct_pb2.Struct()
    assert done.response.Unpack(result)
    assert dict(result) == {"ok": True, "url": "http://svc"}
    assert done.metadata.Unpack(progress)
    assert progress.seconds == 2


def test_unknown_operation_is_not_found(ops: OperationsServer) -> None:
    """Get, cancel and delete of a name that was never created fail with NOT_FOUND."""
    name = f"{PARENT}/operations/does-not-exist"
    with pytest.raises(exceptions.NotFound):
        ops.client.get_operation(name, timeout=5)
    with pytest.raises(exceptions.NotFound):
        ops.client.cancel_operation(name, timeout=5)
    with pytest.raises(exceptions.NotFound):
        ops.client.delete_operation(name, timeout=5)
    with pytest.raises(grpc.RpcError) as caught:
        ops.wait(name, 0.1, rpc_timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_filters_on_done(ops: OperationsServer) -> None:
    """ListOperations lists one parent's operations; ``done=true``/``done=false`` filter them."""
    names = [ops.create().name for _ in range(3)]
    ops.run(ops.store.create("projects/local-project/locations/elsewhere"))
    ops.run(ops.store.finish(names[0], response=_struct()))

    def listed(filter_: str) -> set[str]:
        return {op.name for op in ops.client.list_operations(PARENT, filter_, timeout=5)}

    assert listed("") == set(names)
    assert listed("done=true") == {names[0]}
    assert listed("done=false") == set(names[1:])


def test_list_pages_through_many_operations(ops: OperationsServer) -> None:
    """The client's iterator follows ``next_page_token`` to the last page."""

    async def create_many() -> list[str]:
        created = await asyncio.gather(*(ops.store.create(PARENT) for _ in range(130)))
        return [op.name for op in created]

    names = ops.run(create_many())
    listed = [op.name for op in ops.client.list_operations(PARENT, "", timeout=5)]
    assert sorted(listed) == sorted(names)


def test_cancel_runs_the_owners_hook(ops: OperationsServer) -> None:
    """A cancelled operation is kept, done, with error code CANCELLED (1).

    CancelOperation: "the operation is not deleted; instead, it becomes an operation with
    an Operation.error value with a google.rpc.Status.code of 1".
    """
    asked: list[str] = []

    async def on_cancel(name: str) -> None:
        asked.append(name)
        await ops.store.finish(name, error=cancelled_status())

    created = ops.create(on_cancel=on_cancel)
    ops.client.cancel_operation(created.name, timeout=5)
    assert asked == [created.name]

    cancelled = ops.client.get_operation(created.name, timeout=5)
    assert cancelled.done
    assert cancelled.error.code == code_pb2.CANCELLED


def test_cancel_without_hook_is_failed_precondition(ops: OperationsServer) -> None:
    """An operation its owner cannot stop refuses cancellation and keeps running."""
    created = ops.create()
    with pytest.raises(exceptions.FailedPrecondition):
        ops.client.cancel_operation(created.name, timeout=5)
    assert not ops.client.get_operation(created.name, timeout=5).done


# How long a test lets a WaitOperation take that should return long before its own timeout
# and RPC deadline (both WAIT_SECONDS): a guard against hanging, not a measure of speed.
GUARD_SECONDS = 60
WAIT_SECONDS = 600


def test_wait_returns_once_finished_elsewhere(ops: OperationsServer) -> None:
    """WaitOperation returns as soon as another task finishes the operation (not when its
    own timeout, ten minutes, passes)."""
    created = ops.create()

    async def finish_later() -> None:
        # A pause that is part of the scenario: the finish must come while the Wait is
        # under way (the lower bound below checks that it did).
        await asyncio.sleep(0.3)
        await ops.store.finish(created.name, response=_struct(answer=42))

    ops.loop.call_soon_threadsafe(ops.loop.create_task, finish_later())
    started = time.monotonic()
    waited = ops.wait_async(created.name, WAIT_SECONDS, WAIT_SECONDS).result(GUARD_SECONDS)
    assert waited.done
    assert time.monotonic() - started >= 0.2, "the Wait returned before the finish"
    result = struct_pb2.Struct()
    assert waited.response.Unpack(result)
    assert result["answer"] == 42


def test_wait_returns_not_done_after_its_timeout(ops: OperationsServer) -> None:
    """WaitOperation "returns the latest state" once its timeout passes, done or not."""
    created = ops.create()
    started = time.monotonic()
    waited = ops.wait_async(created.name, 0.3, WAIT_SECONDS).result(GUARD_SECONDS)
    assert not waited.done
    assert time.monotonic() - started >= 0.25


def test_wait_uses_the_shorter_rpc_deadline(ops: OperationsServer) -> None:
    """WaitOperation: "If RPC timeout is also specified, the shorter one will be used."

    Had the server waited its 30 s, the client's 1 s deadline would end the call with
    DEADLINE_EXCEEDED instead of this answer."""
    created = ops.create()
    waited = ops.wait(created.name, 30, rpc_timeout=1.0)
    assert not waited.done


def test_operation_future_polls_to_the_result(ops: OperationsServer) -> None:
    """``google.api_core.operation.from_gapic`` polls GetOperation until done, as client
    libraries do for every long-running method."""
    created = ops.create(duration_pb2.Duration(seconds=5))
    future = operation.from_gapic(
        created, ops.client, struct_pb2.Struct, metadata_type=duration_pb2.Duration
    )

    assert not future.done()  # one GetOperation: still running
    ops.run(ops.store.finish(created.name, response=_struct(state="ready")))
    result = future.result(timeout=GUARD_SECONDS)
    assert result["state"] == "ready"
    assert future.metadata.seconds == 5

    failed = ops.create()
    failed_future = operation.from_gapic(failed, ops.client, struct_pb2.Struct)
    ops.run(ops.store.finish(failed.name, error=cancelled_status("stopped by the test")))
    with pytest.raises(exceptions.GoogleAPICallError) as caught:
        failed_future.result(timeout=5)
    assert "stopped by the test" in str(caught.value)


def test_delete_forgets_the_operation(ops: OperationsServer) -> None:
    """DeleteOperation: the client is no longer interested; the operation is gone."""
    created = ops.create()
    ops.run(ops.store.finish(created.name, response=_struct()))
    ops.client.delete_operation(created.name, timeout=5)
    with pytest.raises(exceptions.NotFound):
        ops.client.get_operation(created.name, timeout=5)
    assert created.name not in {op.name for op in ops.client.list_operations(PARENT, "")}

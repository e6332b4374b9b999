"""Proto3 JSON of large bodies, on the machine's other cores.

Plain messages (``protojson``: the bulk of Pub/Sub's traffic) are transcoded in-process
whatever their size: a 1,000-message pull takes about 4 ms that way, less than handing
its 300 KB to another process and back. The others go through ``json_format``, pure
Python and slow (50 ms and more for a large listing), on the one thread that serves every
API. So such a body past ``THRESHOLD`` is transcoded in a worker process instead: the
server hands over the message's binary form (a C-speed copy) and gets text back, or hands
over the JSON and gets the binary form, and goes on serving meanwhile. Small bodies stay
in-process: a round trip to a worker costs more than they do.

The workers run the same ``transcode`` functions as the server, so the JSON is the same
either way; a body the worker cannot parse is parsed again in-process, which raises the
error the caller sees (errors are rare, and so are kept in one place). The workers start
on the first large body, which is done in-process while they import what they need (a
second or so), so no request ever waits for them; a pool that breaks (a worker killed) is
replaced the same way.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import logging
import multiprocessing
import os
import select
import sys
import threading
from typing import Any

import orjson
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message

from localcloud.core.errors import GoogleError
from localcloud.rest import protojson, transcode

LOG = logging.getLogger(__name__)

THRESHOLD = 16 * 1024  # bytes of a body (binary on the way out, JSON on the way in)


def json_text(body: dict[str, Any], pretty: bool) -> bytes:
    """The response body, UTF-8: Google pretty-prints unless ``prettyPrint=false``.

    orjson, because the standard library's encoder indents in pure Python: 14 ms for a
    1,000-message pull, against 0.3 ms (the same text: two-space indents, ``": "``).
    """
    option = orjson.OPT_APPEND_NEWLINE | (orjson.OPT_INDENT_2 if pretty else 0)
    return orjson.dumps(body, option=option)


def loaded_modules() -> list[str]:
    """The modules of generated messages the server has imported: importing them again in
    a worker registers every message type it may meet, ``Any`` payloads included."""
    return [
        name
        for name, module in list(sys.modules.items())
        if name.endswith("_pb2") or hasattr(module, "__protobuf__")
    ]


def _message(full_name: str) -> Message:
    descriptor = descriptor_pool.Default().FindMessageTypeByName(full_name)
    result: Message = message_factory.GetMessageClass(descriptor)()
    return result


def _start(server: int, modules: tuple[str, ...]) -> None:
    """A worker's start: it ends with the server, and imports the modules that define every
    served message, which registers them in the default descriptor pool (nested and
    ``Any`` payload types included).

    A pool's workers never see their queue close (each holds both ends of it), so a server
    killed outright would leave them, and the forkserver they hold open, running forever:
    each watches the server's pidfd instead, and leaves when it ends.
    """
    watched = os.pidfd_open(server)
    threading.Thread(target=_leave_with, args=(watched,), daemon=True).start()
    for module in modules:
        importlib.import_module(module)


def _leave_with(pidfd: int) -> None:
    select.select([pidfd], [], [])  # readable once the process has ended
    os._exit(0)


def _dumps(full_name: str, data: bytes, pretty: bool) -> bytes:
    message = _message(full_name)
    message.ParseFromString(data)
    return json_text(transcode.to_json(message), pretty)


def _loads(full_name: str, raw: bytes, where: str) -> bytes | None:
    """The binary form of the JSON ``raw``, or None when it does not parse (the server
    parses it again to raise the error)."""
    message = _message(full_name)
    try:
        transcode.parse_body(raw, message, where)
    except GoogleError:
        return None
    return message.SerializeToString()


class Transcoder:
    """JSON in and out for the REST front, large bodies on worker processes."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers if workers is not None else min(4, os.cpu_count() or 1)
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._started: concurrent.futures.Future[Any] | None = None

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor | None:
        """The pool once a worker is up; None until then (and when there are no workers)."""
        if self.workers < 1:
            return None
        if self._pool is None:
            # forkserver: the server has threads, which a forked child must not inherit.
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("forkserver"),
                initializer=_start,
                initargs=(os.getpid(), tuple(loaded_modules())),
            )
            self._started = self._pool.submit(os.getpid)
        assert self._started is not None
        if not self._started.done():
            return None
        if self._started.exception() is not None:
            self._broken(self._started.exception())
            return None
        return self._pool

    def _broken(self, exc: BaseException | None) -> None:
        LOG.warning("REST transcoding workers failed (%s); starting new ones", exc)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._started = None

    async def _offload(self, fn: Any, *args: Any) -> Any:
        pool = self._executor()
        if pool is None:
            return fn(*args)
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except concurrent.futures.BrokenExecutor as exc:
            self._broken(exc)
            return fn(*args)

    async def dumps(self, message: Message, pretty: bool) -> bytes:
        """The response body of ``message``."""
        if protojson.plain(message.DESCRIPTOR) or message.ByteSize() < THRESHOLD:
            return json_text(transcode.to_json(message), pretty)
        body: bytes = await self._offload(
            _dumps, message.DESCRIPTOR.full_name, message.SerializeToString(), pretty
        )
        return body

    async def parse(self, raw: bytes, target: Message, where: str) -> None:
        """Merge the JSON ``raw`` into ``target``, as ``transcode.parse_body`` does."""
        if protojson.plain(target.DESCRIPTOR) or len(raw) < THRESHOLD:
            transcode.parse_body(raw, target, where)
            return
        data = await self._offload(_loads, target.DESCRIPTOR.full_name, raw, where)
        if data is None:
            transcode.parse_body(raw, target, where)  # raises the error the caller sees
            return
        target.MergeFromString(data)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._started = None

"""Acknowledge a request's headers at once, so a body held back by Nagle's algorithm
comes without waiting for a delayed ACK.

Instances reach localcloud's ports through pasta's spliced connections (``run/network.py``),
and pasta (Debian 12's, 2023-03) does not set TCP_NODELAY on the socket it connects to
localcloud with. A client in an instance that writes a request's headers and body apart
(urllib3 does, for every upload and manifest) has the body held back by Nagle's algorithm
on pasta's socket until the headers are acknowledged, while Linux delays that ACK (up to
40 ms) on a connection that answers requests, hoping to send it with the answer: measured,
about one in three Cloud Storage writes of the pipeline's steps took 45-55 ms instead of
7-10 ms, and the push step's two manifest PUTs ~50 ms. ``TCP_QUICKACK`` set when the
headers are in sends the pending ACK at once (``tcp(7)``: not permanent, so per request).

Every aiohttp server of localcloud's an instance may call has it (the HTTP APIs, Cloud
Storage, the registry, the Cloud Run ingress). The gRPC port has not: gRPC's C core reads
its sockets itself, and its clients write a call in one piece more often than not.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def acknowledge(request: web.Request) -> None:
    """Send the ACK of what ``request`` has received so far now, if its body may still be
    on its way."""
    if QUICKACK is None or not request.body_exists or request.transport is None:
        return
    sock = request.transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    acknowledge(request)
    return await handler(request)

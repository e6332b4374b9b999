"""localcloud's HTTP servers acknowledge a request's headers at once (``core/acks.py``).

What pasta's socket does (Nagle's algorithm holding a request's body back until its
headers are acknowledged) is played here by a client socket without TCP_NODELAY; what is
checked is the server's side: once a request's handler runs, the headers the client sent
are acknowledged, before any of its body came, instead of up to 40 ms later.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from aiohttp import web

from localcloud.core import acks

TCP_INFO_UNACKED = (
    24  # struct tcp_info: 8 one-byte fields, then rto, ato, snd_mss, rcv_mss, unacked
)


def unacked(sock: socket.socket) -> int:
    """How many of the segments ``sock`` sent are not acknowledged yet."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("I", info, TCP_INFO_UNACKED)[0]


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"ok"):
        chunk = sock.recv(4096)
        assert chunk, f"the server closed the connection: {data!r}"
        data += chunk
    return data


def test_a_requests_headers_are_acknowledged_before_its_body_is_read() -> None:
    async def scenario() -> list[int]:
        entered = asyncio.Event()
        seen: list[int] = []

        async def answer(request: web.Request) -> web.Response:
            if request.method == "POST":
                entered.set()
                await request.read()
            return web.Response(text="ok")

        app = web.Application(middlewares=[acks.middleware])  # without it: [1, 1, 1, 1, 1]
        app.router.add_route("*", "/", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        client = socket.create_connection(("127.0.0.1", port))  # Nagle's algorithm on
        try:
            for _ in range(5):  # a connection that answers requests: ACKs are delayed
                await asyncio.to_thread(client.sendall, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await asyncio.to_thread(read_response, client)
                client.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
                await asyncio.wait_for(entered.wait(), 10)
                entered.clear()
                seen.append(unacked(client))
                client.sendall(b"body")
                await asyncio.to_thread(read_response, client)
        finally:
            client.close()
            await runner.cleanup()
        return seen

    assert asyncio.run(scenario()) == [0] * 5

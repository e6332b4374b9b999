"""How localcloud tells an instance's connections from the local user's (``core/peers.py``),
through the real gRPC stack: a server in this process serving one Pub/Sub method whose
answer is ``identity.caller()``, called with the official ``PublisherClient``.

This process registers itself as an "instance" (its sockets are then the instance's, as an
unsandboxed instance's are), so the same connections are seen both ways. The instance
tests of ``test_identity.py`` cover the pasta path end to end.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import pubsub_v1
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.types import GetTopicRequest, Topic

from localcloud import testing
from localcloud.core import identity, wire
from localcloud.core.identity import INVALID_CREDENTIALS, MISSING_CREDENTIALS, Resolver
from localcloud.core.oidc import Issuer
from localcloud.core.peers import Identity, Peers, Unidentified, parse_grpc_peer

TOPIC = "projects/local-project/topics/whoami"
ME = Identity("inst@local-project.iam.gserviceaccount.com", "local-project", "us-central1", "r")


class WhoAmI:
    """GetTopic answering with the caller's member as the topic's label."""

    @wire.rpc("GetTopic", GetTopicRequest, Topic)
    async def get_topic(self, request, context):
        return Topic(name=request.topic, labels={"caller": identity.caller().replace(":", "_")})


class Server:
    """A gRPC server on its own loop in a thread of this process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> int:
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers(
            [wire.handler_for("google.pubsub.v1.Publisher", WhoAmI())]
        )
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[Peers, Issuer, int]]:
    peers = Peers()
    peers.open()
    issuer = Issuer(tmp_path / "oidc", "http://127.0.0.1:1")
    server = Server()
    resolver = Resolver(issuer, peers, "127.0.0.1", server.port)
    saved = identity.local_user()
    identity.configure("user:local@example.com", resolver.grpc, resolver.http)
    try:
        yield peers, issuer, server.port
    finally:
        identity.configure(saved)
        server.stop()
        peers.close()


def caller(port: int, metadata=()) -> str:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    client = pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=channel))
    try:
        topic = client.get_topic(topic=TOPIC, metadata=list(metadata))
        return topic.labels["caller"].replace("_", ":", 1)
    finally:
        channel.close()


def test_grpc_calls_are_the_local_user_or_the_instance_holding_the_connection(served):
    peers, issuer, port = served
    assert caller(port) == "user:local@example.com"
    handle = peers.add(ME, os.getpid(), lambda: [os.getpid()])
    try:
        assert caller(port) == ME.member  # the same kind of connection, now an instance's
        token = issuer.mint_access_token("other@local-project.iam.gserviceaccount.com")
        bearer = [("authorization", f"Bearer {token}")]
        assert caller(port, bearer) == "serviceAccount:other@local-project.iam.gserviceaccount.com"
    finally:
        peers.remove(handle)
    assert caller(port) == "user:local@example.com"


def test_grpc_bad_token_is_unauthenticated_with_googles_words(served):
    _, _, port = served
    with pytest.raises(exceptions.Unauthenticated) as refused:
        caller(port, [("authorization", "Bearer nonsense")])
    assert refused.value.message == INVALID_CREDENTIALS


def test_a_sandboxed_connection_no_instance_owns_is_never_the_local_user(served, tmp_path):
    peers, _, _ = served
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    # A socket owned by nobody, as a sandbox's are, in a process no instance owns.
    code = f"import socket; s = socket.create_connection(('127.0.0.1', {port})); s.recv(1)"
    child = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code]
    )
    try:
        conn, peer = listener.accept()
        with pytest.raises(Unidentified, match="sandbox"):
            peers.origin(peer, ("127.0.0.1", port))
        conn.close()
    finally:
        child.wait(10)
        listener.close()


def _outside_ephemeral_range() -> socket.socket:
    """A socket bound to a loopback port below the kernel's ephemeral range
    (``testing.free_port``): once its connection is reset, no connect() elsewhere on the
    machine can take the port before the test binds it again (an ephemeral port was taken
    so once, in a busy suite)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", testing.free_port()))
    return sock


def test_a_closed_connection_is_not_attributed_and_a_reused_port_is_looked_up_again(served):
    peers, _, _ = served
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = _outside_ephemeral_range()
    client.connect(("127.0.0.1", port))
    conn, peer = listener.accept()
    assert peers.origin(peer, ("127.0.0.1", port)) is None  # this process: the local user
    handle = peers.add(ME, os.getpid(), lambda: [os.getpid()])
    try:
        # Registering looks again at connections seen as the local user's: one made by an
        # instance's process just before its registration must not stay the local user's...
        assert peers.origin(peer, ("127.0.0.1", port)) == ME
        # ...but a new connection from the same port is a new socket, looked up afresh.
        # Closed by reset (linger 0): neither end lingers in TIME_WAIT or FIN_WAIT, so the
        # port can be bound again at once, however busy the machine.
        for end in (conn, client):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        client.close()
        with pytest.raises(Unidentified):
            peers.origin(peer, ("127.0.0.1", port))  # gone, or lingering in TIME_WAIT
        again = socket.socket()
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(peer)
        again.connect(("127.0.0.1", port))
        conn, peer2 = listener.accept()
        assert peer2 == peer
        assert peers.origin(peer, ("127.0.0.1", port)) == ME
        again.close()
        conn.close()
    finally:
        peers.remove(handle)
        listener.close()


def test_grpc_peer_strings():
    assert parse_grpc_peer("ipv4:127.0.0.1:5000") == ("127.0.0.1", 5000)
    assert parse_grpc_peer("ipv6:[::1]:5000") == ("::1", 5000)
    assert parse_grpc_peer("unix:/tmp/s") is None
    assert MISSING_CREDENTIALS.startswith("Request is missing required authentication")


def test_http_keep_alive_connections_follow_instances_added_and_removed(served, tmp_path):
    """An HTTP connection's caller is kept for its next requests (``Resolver._by_transport``)
    only until an instance is added or removed: the same keep-alive connection is the local
    user's, then the instance's once this process is registered as one, then the local
    user's again."""
    import requests
    from aiohttp import web

    peers, issuer, _ = served
    resolver = Resolver(issuer, peers, "127.0.0.1", 0)

    async def whoami(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peername")  # type: ignore[union-attr]
        return web.Response(text=f"{resolver.http(request)} {peer[1]}")

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_get("/", whoami)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    runner, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        with requests.Session() as session:

            def who() -> tuple[str, int]:
                member, peer_port = session.get(
                    f"http://127.0.0.1:{port}/", timeout=10
                ).text.split()
                return member, int(peer_port)

            first, local_port = who()
            assert first == "user:local@example.com"
            assert who() == (first, local_port)  # one connection, kept alive
            handle = peers.add(ME, os.getpid(), lambda: [os.getpid()])
            try:
                assert who() == (ME.member, local_port)
            finally:
                peers.remove(handle)
            assert who() == ("user:local@example.com", local_port)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

"""Who each call is served for: the IAM member (``user:…``, ``serviceAccount:…``) that
localcloud checks permissions against.

Every gRPC call is served as its caller (``core/wire.py`` calls ``enter`` before the handler
runs), so any code on the call's path asks ``caller()``
instead of threading the identity through every function. HTTP servers (the storage front,
the ingress, the registry) ask ``resolve_http(request)``.

Who a caller is (:class:`Resolver`), in this order:

1. ``Authorization: Bearer TOKEN``: the token's account, if it is an access token
   localcloud minted (signature, expiry, audience, type checked on every call, results
   cached per token); anything else is UNAUTHENTICATED with Google's words, whoever sends it.
2. No token, and the connection comes from a Cloud Run instance (``core/peers.py`` traces
   it to the instance's pasta or processes): the instance's revision's service account.
   A connection from a sandbox that cannot be traced is UNAUTHENTICATED, never the local
   user.
3. No token, from anywhere else on this machine (the user's shell, ``orch``, the tests):
   the local user, the project's owner unless ``LOCALCLOUD_PRINCIPAL`` names someone else
   (``user:dev@example.com``), so a test or a user can see what a principal with fewer
   rights is refused.
"""

from __future__ import annotations

import contextlib
import re
import time
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from localcloud.core.errors import Unauthenticated
from localcloud.core.oidc import InvalidToken, Issuer, owner_email
from localcloud.core.peers import Identity, Peers, Unidentified, parse_grpc_peer

# What IAM accepts as a member of a binding that names one principal.
MEMBER = re.compile(r"^(user|serviceAccount|group|domain|principal|principalSet):\S+$")

_caller: ContextVar[str | None] = ContextVar("localcloud_caller", default=None)
_local_user = f"serviceAccount:{owner_email('local-project')}"


# Who a gRPC call comes from, given its context; the local user until the server installs
# a resolver that reads credentials.
def _as_local_user(_context: Any) -> str:
    return _local_user


_resolver: Callable[[Any], str] = _as_local_user
_http_resolver: Callable[[Any], str] = _as_local_user

# Google's words for a bad token and for none where one is needed, e.g. any API called with
# a revoked or forged token (seen in client errors across Google's APIs, e.g.
# https://github.com/googleapis/google-api-php-client/issues/2479).
INVALID_CREDENTIALS = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
MISSING_CREDENTIALS = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
TOKEN_CACHE = 4096  # verified tokens remembered: a client reuses its token for an hour


def member_of(email: str) -> str:
    """The IAM member an email signs in as: service accounts are ``serviceAccount:``."""
    kind = "serviceAccount" if email.endswith(".gserviceaccount.com") else "user"
    return f"{kind}:{email}"


def email_of(member: str) -> str:
    return member.partition(":")[2]


@dataclass(frozen=True)
class Caller:
    """A resolved caller: the member, and how localcloud knows (for ``whoami``)."""

    member: str
    via: str  # "token", "instance" or "local user"
    instance: Identity | None = None


class Resolver:
    """Finds the caller of a gRPC call or an HTTP request (see the module's docstring)."""

    def __init__(self, issuer: Issuer, peers: Peers, grpc_host: str, grpc_port: int) -> None:
        self.issuer = issuer
        self.peers = peers
        self.grpc_local = (grpc_host, grpc_port)
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (member, expiry)
        # An HTTP connection's caller, for the next requests on it (keep-alive): its two
        # sockets stay the same while it is open, so only a change of the instances
        # registered (``Peers.generation``) can change the answer, as for ``Peers``' own
        # cache; tracing the socket again costs a netlink round trip a request.
        self._by_transport: weakref.WeakKeyDictionary[Any, tuple[int, Caller]] = (
            weakref.WeakKeyDictionary()
        )

    def grpc(self, context: Any) -> str:
        return self.grpc_caller(context).member

    def grpc_caller(self, context: Any) -> Caller:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                return self._bearer(value)
        peer = parse_grpc_peer(context.peer() or "")
        return self._connection(peer, self.grpc_local)

    def http(self, request: Any) -> str:
        return self.http_caller(request).member

    def http_caller(self, request: Any) -> Caller:
        header = request.headers.get("Authorization")
        if header is not None:
            return self._bearer(header)
        transport = request.transport
        if transport is None:
            return self._connection(None, ("", 0))
        generation = self.peers.generation  # read first: a change meanwhile is seen next time
        known = self._by_transport.get(transport)
        if known is not None and known[0] == generation:
            return known[1]
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        if not peer or not local or not isinstance(peer, tuple):
            return self._connection(None, ("", 0))  # a Unix socket: this machine
        caller = self._connection((peer[0], peer[1]), (local[0], local[1]))
        self._by_transport[transport] = (generation, caller)
        return caller

    def connection(self, peer: tuple[str, int] | None, local: tuple[str, int]) -> Identity | None:
        """The instance a connection comes from (None: not an instance); for the metadata
        server, which answers per asker whatever credentials the request carries."""
        if peer is None:
            return None
        try:
            return self.peers.origin(peer, local)
        except Unidentified as exc:
            raise Unauthenticated(f"{MISSING_CREDENTIALS} ({exc})") from None

    def _connection(self, peer: tuple[str, int] | None, local: tuple[str, int]) -> Caller:
        instance = self.connection(peer, local)
        if instance is not None:
            return Caller(instance.member, "instance", instance)
        return Caller(_local_user, "local user")

    def _bearer(self, header: str) -> Caller:
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated(INVALID_CREDENTIALS)
        cached = self._tokens.get(token)
        now = time.time()
        if cached is not None and cached[1] > now:
            return Caller(cached[0], "token")
        try:
            claims = self.issuer.verify_access(token)
        except InvalidToken:
            raise Unauthenticated(INVALID_CREDENTIALS) from None
        member = member_of(claims["email"])
        if len(self._tokens) >= TOKEN_CACHE:
            self._tokens = {t: v for t, v in self._tokens.items() if v[1] > now}
            if len(self._tokens) >= TOKEN_CACHE:
                self._tokens.clear()
        self._tokens[token] = (member, float(claims["exp"]))
        return Caller(member, "token")


def default_principal(project: str) -> str:
    """The local user when ``LOCALCLOUD_PRINCIPAL`` is unset: the identity the metadata
    server speaks for on the user's machine, owner of the project."""
    return f"serviceAccount:{owner_email(project)}"


def configure(
    local_user: str,
    resolver: Callable[[Any], str] | None = None,
    http_resolver: Callable[[Any], str] | None = None,
) -> None:
    """Set the local user and how a call's identity is found, for gRPC calls (given their
    context) and HTTP requests (given the aiohttp request); the server does, at start."""
    global _local_user, _resolver, _http_resolver
    _local_user = local_user
    _resolver = resolver or _as_local_user
    _http_resolver = http_resolver or _as_local_user


def local_user() -> str:
    return _local_user


def caller() -> str:
    """The member the current call is served for (the local user outside any call)."""
    return _caller.get() or _local_user


def enter(context: Any) -> str:
    """Serve the rest of this call as its caller. grpc.aio runs each call in a task of its
    own, whose context ends with it, so nothing needs resetting."""
    member = _resolver(context)
    _caller.set(member)
    return member


def resolve_http(request: Any) -> str:
    """The member an aiohttp request comes from; ``Unauthenticated`` for a bad token or a
    connection from a sandbox that cannot be traced (answer it with ``http_error``)."""
    return _http_resolver(request)


def http_error(exc: Unauthenticated) -> Any:
    """Google's JSON error for an UNAUTHENTICATED HTTP request (401, with the
    ``WWW-Authenticate`` challenge Google's APIs send)."""
    from aiohttp import web

    body = {"error": {"code": 401, "message": exc.message, "status": "UNAUTHENTICATED"}}
    headers = {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'}
    return web.json_response(body, status=401, headers=headers)


@contextlib.contextmanager
def serving(member: str) -> Iterator[str]:
    token = _caller.set(member)
    try:
        yield member
    finally:
        _caller.reset(token)

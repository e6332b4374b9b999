"""Which Cloud Run instance a TCP connection to localcloud comes from.

An instance calls localcloud's APIs over loopback like everyone else, usually with no
credentials at all (the emulator variables make the official clients anonymous), so its
identity cannot come from the request: it comes from the connection. Whoever holds the
client end of the connection tells who is calling:

- an instance with a network of its own reaches localcloud's ports through its ``pasta``
  (``run/network.py``), which opens the host-side connection itself: the client socket is
  held by that instance's pasta process (running as ``nobody``);
- an instance on the host's network (``LOCALCLOUD_RUN_ISOLATION=filesystem``, unsandboxed,
  or no pasta) holds the socket in one of its own processes.

For each call the client socket is looked up by its exact address pair with the kernel's
``sock_diag`` netlink interface (one request, ~8 µs; ``/proc/net/tcp`` takes milliseconds
on a busy machine), which gives its inode and owner. The inode's holder is then searched
among the registered instances only (their pasta, or their processes), once per
connection: later calls on the same connection find the same inode in a cache. Checking the
inode on every call, not just the port, keeps a connection that reuses a closed one's port
from inheriting its identity.

What cannot be attributed is never the local user: a socket owned by ``nobody`` that no
registered instance holds (a sandbox's), a socket already closed (its inode is gone, or it
lingers in TIME_WAIT with inode 0), or a peer that is not on this machine's network
namespace. Those raise :class:`Unidentified`.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import itertools
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from localcloud.core import procs

NOBODY = 65534  # whom sandboxes and their pasta run as when localcloud runs as root
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NO_COOKIE = 0xFFFFFFFF  # INET_DIAG_NOCOOKIE: match by addresses only
CACHE_SIZE = 4096  # connections remembered (a connection costs a scan only once)


class Unidentified(Exception):
    """A connection localcloud cannot attribute; the message says why."""


@dataclass(frozen=True)
class Identity:
    """Whom an instance acts as: its revision's service account, and where it runs."""

    email: str  # the service account's email
    project: str
    region: str
    revision: str  # full resource name, for whoami and logs

    @property
    def member(self) -> str:
        return f"serviceAccount:{self.email}"


@dataclass(frozen=True)
class _Holder:
    identity: Identity
    uid: int  # owner of the sockets it holds
    root: int
    pids: Callable[[], Iterable[int]] | None  # None: the process tree under ``root``


def _inode_of(
    nl: socket.socket, family: int, src: bytes, sport: int, dst: bytes, dport: int
) -> tuple[int, int] | None:
    """(uid, inode) of the TCP socket whose local end is src:sport and remote dst:dport, or
    None when there is none (inet_diag_req_v2 / inet_diag_msg, linux/inet_diag.h)."""
    sockid = struct.pack("!HH", sport, dport) + src.ljust(16, b"\0") + dst.ljust(16, b"\0")
    sockid += struct.pack("=III", 0, NO_COOKIE, NO_COOKIE)
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    nl.send(struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0) + req)
    data = nl.recv(4096)
    (kind,) = struct.unpack_from("=H", data, 4)
    if kind == NLMSG_ERROR:
        (err,) = struct.unpack_from("=i", data, 16)
        if -err == errno.ENOENT:
            return None
        raise OSError(-err, f"sock_diag: {os.strerror(-err)}")
    uid, inode = struct.unpack_from("=II", data, 16 + 64)  # idiag_uid, idiag_inode
    return uid, inode


@functools.lru_cache(maxsize=256)
def _address(host: str) -> tuple[int, bytes] | None:
    """(family, packed address) of an IP literal; IPv4-mapped IPv6 as IPv4."""
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    return family, ip.packed


def parse_grpc_peer(peer: str) -> tuple[str, int] | None:
    """``ipv4:127.0.0.1:PORT`` / ``ipv6:[::1]:PORT`` -> (host, port); None for others
    (``unix:``), which can only be this machine's."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return None
    host, _, port = rest.rpartition(":")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        return None


class Peers:
    """The registered instances, and which one holds the client end of a connection."""

    def __init__(self) -> None:
        self._holders: dict[int, _Holder] = {}
        self._next = itertools.count(1)
        self._lock = threading.Lock()
        self._nl: socket.socket | None = None
        self._cache: dict[tuple, tuple[int, Identity | None]] = {}
        self._me = os.geteuid()
        # Counts the instances added and removed: what was learnt of a connection before
        # the count last moved may be wrong now.
        self.generation = 0

    def open(self) -> None:
        """Open the netlink socket now, in this thread's (the host's) network namespace."""
        with self._lock:
            if self._nl is None:
                nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
                nl.settimeout(2.0)
                self._nl = nl

    def close(self) -> None:
        with self._lock:
            if self._nl is not None:
                self._nl.close()
                self._nl = None

    def add(
        self, identity: Identity, root_pid: int, pids: Callable[[], Iterable[int]] | None = None
    ) -> int:
        """Register an instance whose connections come from ``pids()`` (its pasta), or by
        default from the process tree under ``root_pid``; a handle for :meth:`remove`."""
        try:
            uid = os.stat(f"/proc/{root_pid}").st_uid
        except OSError:
            uid = self._me
        handle = next(self._next)
        with self._lock:
            self._holders[handle] = _Holder(identity, uid, root_pid, pids)
            self.generation += 1
            # A connection seen before as the local user's may be held by the new instance
            # (gRPC shares one connection between channels to the same address): look again.
            self._cache = {k: v for k, v in self._cache.items() if v[1] is not None}
        return handle

    def remove(self, handle: int | None) -> None:
        if handle is None:
            return
        with self._lock:
            self._holders.pop(handle, None)
            self.generation += 1
            # Its connections are gone or going: forget what was learnt about them.
            self._cache = {k: v for k, v in self._cache.items() if v[1] is None}

    def origin(self, peer: tuple[str, int], local: tuple[str, int]) -> Identity | None:
        """The instance the connection from ``peer`` to our ``local`` address comes from, or
        None when it comes from elsewhere on this machine (the local user). Unidentified
        when it cannot be told."""
        src = _address(peer[0])
        if src is None:
            return None  # not an IP connection: a local socket
        dst = _address(local[0])
        if dst is None or dst[0] != src[0] or not any(dst[1]):
            dst = src  # on this machine a connection's two ends share the address
        key = (src[1], peer[1], dst[1], local[1])
        with self._lock:
            if self._nl is None:
                raise Unidentified("the connection cannot be traced (localcloud is stopping)")
            found = _inode_of(self._nl, src[0], src[1], peer[1], dst[1], local[1])
            if found is None:
                raise Unidentified(
                    f"no socket {peer[0]}:{peer[1]} on this machine: the caller is elsewhere "
                    "or gone"
                )
            uid, inode = found
            if inode == 0:
                raise Unidentified("the connection is already closed")
            cached = self._cache.get(key)
            if cached is not None and cached[0] == inode:
                return cached[1]
            holders = list(self._holders.values())
            generation = self.generation
        identity = _find(inode, uid, holders)
        if identity is None and uid == NOBODY and self._me != NOBODY:
            raise Unidentified("the connection comes from a sandbox no instance owns")
        with self._lock:
            if self.generation == generation:  # else found among instances since changed
                if len(self._cache) >= CACHE_SIZE:
                    del self._cache[next(iter(self._cache))]
                self._cache[key] = (inode, identity)
        return identity


def _trees() -> dict[int, list[int]]:
    """Every live process's children, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = procs.stat_fields(int(entry.name))
            if fields is not None and len(fields) > 1:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def _tree(root: int, children: dict[int, list[int]]) -> list[int]:
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _find(inode: int, uid: int, holders: list[_Holder]) -> Identity | None:
    """The identity of the registered instance one of whose processes holds ``inode``."""
    target = f"socket:[{inode}]"
    children: dict[int, list[int]] | None = None
    for holder in holders:
        if holder.uid != uid:
            continue  # sockets belong to whoever created them: not this instance's
        if holder.pids is not None:
            pids = holder.pids()
        else:
            children = _trees() if children is None else children
            pids = _tree(holder.root, children)
        for pid in pids:
            try:
                with os.scandir(f"/proc/{pid}/fd") as entries:
                    for entry in entries:
                        try:
                            if os.readlink(entry.path) == target:
                                return holder.identity
                        except OSError:
                            continue
            except OSError:
                continue  # the process is gone
    return None


peers = Peers()

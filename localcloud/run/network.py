"""An instance's own network: reachable only through the ingress, reaching only what it should.

Each sandboxed instance gets a network namespace of its own (``bwrap --unshare-net``), so
the port it listens on exists nowhere else: not on the host's addresses, not on another
instance's loopback. Two things connect it to the world:

- **In**: the ingress opens its sockets *inside* the instance's namespace (``setns`` on the
  calling thread for the one ``socket()`` call, then back), so a connection to the
  instance's ``127.0.0.1:PORT`` needs no port on the host at all. This takes
  CAP_SYS_ADMIN, which is why isolation is on only for a root localcloud.
- **Out**: ``pasta`` (Debian's ``passt`` package, the user-space network of rootless
  Podman) attached to the namespace gives it the internet as Cloud Run gives it by default,
  and forwards exactly localcloud's ports from the instance's loopback to the host's
  (``-T``), so the API addresses in its environment work unchanged. The host's other
  loopback services stay out of reach (``--no-map-gw``), and no port of the instance is
  published on the host (``-t none``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import pwd
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from socket import socket as Socket
from typing import Any

LOG = logging.getLogger(__name__)
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetworkError(Exception):
    """The instance's network could not be set up; the message says why."""


def pasta_available() -> str | None:
    return shutil.which("pasta")


@functools.lru_cache(maxsize=1)
def _host_netns() -> int:
    # The thread group leader never leaves the host's namespace: its view is the host's.
    return os.open(f"/proc/{os.getpid()}/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class Namespace:
    """An open handle on one instance's network namespace."""

    def __init__(self, pid: int) -> None:
        self.fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread (and threads it starts) in this namespace, then back.

        Only for a thread of its own: anything else it runs meanwhile is inside too."""
        host = _host_netns()
        _setns(self.fd)
        try:
            yield
        finally:
            _setns(host)  # never leave the calling thread in the instance's network

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> Socket:
        """A socket that lives in this namespace (whichever thread later uses it)."""
        with self.entered():
            return socket.socket(family, kind)

    def socket_factory(self, addr_info: Any) -> Socket:
        """For ``aiohttp.TCPConnector(socket_factory=...)``: connections into the instance."""
        family, kind, _proto, _, _ = addr_info
        sock = self.socket(family, kind)
        sock.setblocking(False)
        return sock

    async def connect(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = self.socket()
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _spec(ports: Iterable[int]) -> str:
    """pasta's port list, consecutive ports folded into ranges: ``8085,8100-8199``."""
    values = sorted({p for p in ports if 0 < p < 65536})
    parts: list[str] = []
    start = prev = None
    for port in values:
        if prev is not None and port == prev + 1:
            prev = port
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = port
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(parts) or "none"


def pasta_argv(pasta: str, pid: int, forward: Iterable[int], pidfile: str) -> list[str]:
    return [
        pasta,
        "--pid",
        pidfile,  # where the daemon says its process id, to be stopped with the instance
        "--config-net",
        "--quiet",
        "--no-map-gw",  # the gateway address is not a way to the host's loopback
        "-t",
        "none",  # nothing of the instance is published on the host...
        "-u",
        "none",
        "-U",
        "none",
        "-T",
        _spec(forward),  # ...and only localcloud's ports are reachable on its loopback
        str(pid),
    ]


LOOPBACK_WAIT = 2.0  # seconds


async def loopback_up(pid: int, timeout: float = LOOPBACK_WAIT) -> None:
    """Wait until the loopback of ``pid``'s network namespace is up (with its 127.0.0.0/8
    routes), as bwrap's ``--unshare-net`` sets it up: its address, then the link.

    pasta brings the loopback up too when it attaches. Had it done so first, the kernel
    would have added 127.0.0.1 itself and bwrap's own RTM_NEWADDR would fail, ending the
    sandbox ("bwrap: loopback: Failed RTM_NEWADDR"): seen when a busy machine slowed
    bwrap's setup. So pasta attaches once the loopback is up. Gives up quietly after
    ``timeout``, or when the process is gone (its exit is reported where it is awaited).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/net/fib_trie") as f:
                if "127.0.0.0/8" in f.read():
                    return
        except OSError:
            return
        if time.monotonic() > deadline:
            LOG.debug("the loopback of %d is not up after %.1f s: attaching anyway", pid, timeout)
            return
        await asyncio.sleep(0.002)


async def attach(pid: int, forward: Iterable[int]) -> int:
    """Start pasta for the namespace of ``pid``; its process id, once the network is up.

    pasta forks to the background once the namespace is configured. It does not leave when
    a namespace given by PID empties (it keeps the namespace itself alive), so whoever
    attaches detaches (:func:`detach`) when the instance is gone: ``--pid`` tells which
    process that is. Cancelled while pasta starts, the pasta that comes up is stopped.
    """
    pasta = pasta_available()
    if pasta is None:
        raise NetworkError("pasta is not installed: install the Debian package passt (make deps)")
    fd, pidfile = tempfile.mkstemp(prefix="localcloud-pasta-", suffix=".pid")
    os.close(fd)
    if os.geteuid() == 0:  # pasta drops root for nobody before it writes the file
        nobody = pwd.getpwnam("nobody")
        os.chown(pidfile, nobody.pw_uid, nobody.pw_gid)
    try:
        process = await asyncio.create_subprocess_exec(
            *pasta_argv(pasta, pid, forward, pidfile),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, err = await asyncio.shield(process.communicate())
        except asyncio.CancelledError:
            await process.wait()
            detach(_read_pid(pidfile))
            raise
        if process.returncode != 0:
            text = err.decode(errors="replace").strip()
            raise NetworkError(f"pasta could not set up the instance's network: {text}")
        daemon = _read_pid(pidfile)
        if daemon is None:
            raise NetworkError("pasta started but did not say its process id")
        try:
            await acknowledge_at_once(pid)
        except asyncio.CancelledError:
            detach(daemon)
            raise
        return daemon
    finally:
        with contextlib.suppress(OSError):
            os.unlink(pidfile)


# The instance's loopback routes (those the kernel makes for ``lo``), with delayed ACKs off.
QUICKACK_ROUTES = b"".join(
    b"route change local %s dev lo table local proto kernel scope host src 127.0.0.1 "
    b"quickack 1\n" % prefix
    for prefix in (b"127.0.0.0/8", b"127.0.0.1")
)


async def acknowledge_at_once(pid: int) -> None:
    """Turn delayed ACKs off on the loopback of ``pid``'s network namespace (the route
    metric ``quickack``, ip-route(8)).

    An instance reaches localcloud through pasta's connections on its own loopback, and
    pasta (Debian 12's) writes to them without TCP_NODELAY: now and then an answer to the
    instance waited for the instance to acknowledge what came before, which Linux delays up
    to 40 ms. Measured in the pipeline's intake, the source archive's download took 3 ms or
    45-50 ms (a third of the deploys, most of them when the answer came in one piece), and
    3 ms every time with this. (Requests to localcloud meet the same on the host's side:
    ``core/acks.py``.) Only the instance's own namespace is changed, never the host's.
    Best effort: without ``nsenter`` or ``ip`` (util-linux, iproute2) the instance only
    answers later.
    """
    nsenter, ip = shutil.which("nsenter"), shutil.which("ip")
    if nsenter is None or ip is None:
        LOG.debug("nsenter or ip is missing: delayed ACKs stay on in the instance's network")
        return
    try:
        process = await asyncio.create_subprocess_exec(
            *(nsenter, f"--net=/proc/{pid}/ns/net", "--", ip, "-batch", "-"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await process.communicate(QUICKACK_ROUTES)
    except OSError as exc:
        LOG.debug("delayed ACKs stay on in the network of %d: %s", pid, exc)
        return
    if process.returncode != 0:
        LOG.debug("delayed ACKs stay on in the network of %d: %s", pid, err.decode()[-300:])


def _read_pid(path: str) -> int | None:
    try:
        return int(Path(path).read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _is_ours(pid: int) -> list[str] | None:
    """The argv of process ``pid`` if it is a pasta as localcloud starts them, else None."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    argv = [a for a in argv if a]
    marks = ("--no-map-gw", "--config-net")
    if not argv or "pasta" not in os.path.basename(argv[0]) or not all(m in argv for m in marks):
        return None
    return argv


def detach(pasta_pid: int | None) -> None:
    """Stop the pasta ``attach`` started (it has done its work once the instance is gone)."""
    if pasta_pid is not None and _is_ours(pasta_pid) is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pasta_pid, signal.SIGTERM)


def reap_orphans() -> int:
    """Stop pastas of localcloud's kind whose instance is gone: what a localcloud killed
    with SIGKILL leaves behind (30 MB each). Their target, the last argument, no longer
    exists. The number stopped."""
    stopped = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = _is_ours(int(entry))
        if argv is None or not argv[-1].isdigit() or os.path.exists(f"/proc/{argv[-1]}"):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(entry), signal.SIGTERM)
            stopped += 1
    return stopped

"""``python -m localcloud serve``: own the data directory, the API server and the children.

One supervisor per data directory (an exclusive ``flock`` on ``localcloud.lock``). The lock,
not ``state.json``, says whether one runs: the kernel lets go of it only when the holder
is gone, while ``state.json`` outlives a SIGKILL and its pid may name a dying process or,
later, another one (``lock_holder``, ``read_state``). Before anything starts, every port is
checked, and a taken one is reported with the variable that moves it. The supervisor
writes ``state.json`` (pid, addresses, the client environment) once every part answers its
health check, and shuts everything down on SIGTERM or SIGINT. Children's logs go to
``logs/<name>.log`` under the data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import gc
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import IO

from localcloud.core.children import Child
from localcloud.core.config import Config
from localcloud.registry import registry
from localcloud.registry.front import RegistryFront
from localcloud.run import stage
from localcloud.server import LocalCloud
from localcloud.storage.front import StorageFront

LOG = logging.getLogger(__name__)
LOCK = "localcloud.lock"
# After a supervisor died without cleaning up (SIGKILL), its children get SIGTERM from
# the kernel (PR_SET_PDEATHSIG) and may hold their ports a little longer than it held the
# lock: a port taken then is waited for this long before it is reported.
CHILDREN_GRACE = 10.0
UNSEEN = 0  # lock_holder: the lock is held by a process this one cannot see


class AlreadyRunning(RuntimeError):
    pass


class PortTaken(RuntimeError):
    pass


def state_path(config: Config) -> Path:
    return config.data_dir / "state.json"


def read_state(config: Config) -> dict | None:
    """The running supervisor's state, or None when none runs on this data directory: a
    state whose pid does not hold the data directory's lock is left over from a crash."""
    try:
        state = json.loads(state_path(config).read_text())
    except (OSError, ValueError):
        return None
    pid = state.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return None
    holder = lock_holder(config)
    if holder is None or holder not in (pid, UNSEEN):
        return None
    return state


def lock_holder(config: Config) -> int | None:
    """The pid holding the data directory's lock, None when it is free, ``UNSEEN`` when
    it is held by a process not visible here (or /proc/locks cannot be read).

    Read from /proc/locks, never by trying the lock: a try that succeeds holds it for a
    moment, and a supervisor starting in that moment would be refused."""
    try:
        st = (config.data_dir / LOCK).stat()
    except FileNotFoundError:
        return None
    except OSError:
        return UNSEEN
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return UNSEEN
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; "1: -> FLOCK ..." is a waiter.
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == inode:
            return int(fields[4]) if fields[4].isdigit() else UNSEEN
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(config: Config) -> IO:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(config.data_dir / LOCK, "a+")  # noqa: SIM115 - held for life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        holder = lock_holder(config)
        pid = f" (pid {holder})" if holder else ""
        raise AlreadyRunning(
            f"localcloud is already running on data directory {config.data_dir}{pid}"
        ) from exc
    return handle


def check_ports(config: Config, grace: float = 0.0) -> None:
    """Every port free, or PortTaken naming the first taken one and its variable; a taken
    port is tried again for ``grace`` seconds (the children of a predecessor that died
    may still hold theirs)."""
    deadline = time.monotonic() + grace
    while True:
        try:
            _check_ports(config)
            return
        except PortTaken:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.1)


def _check_ports(config: Config) -> None:
    for port in config.ports:
        if port.port == 0:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((config.host, port.port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise PortTaken(
                    f"port {port.port} ({port.name}) on {config.host} is taken; "
                    f"set {port.envvar} to move it"
                ) from None


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.cloud = LocalCloud(config)
        # Cloud Storage: our front on the storage port, fake-gcs-server (a child) behind it.
        self.storage = StorageFront(config)
        # Artifact Registry's Docker API: our front on the registry port, the CNCF registry
        # (a child) behind it on a private one.
        self.registry = RegistryFront(config)
        self.children: list[Child] = []
        self.log_dir = config.data_dir / "logs"

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            # What starting made (the API modules, their descriptors, the state loaded) lives
            # as long as the server: kept out of the collector's full passes, which would
            # otherwise walk its ~140,000 objects (about 0.1 s, the server standing still)
            # every few seconds of busy serving.
            gc.collect()  # what starting left unreachable is freed, not frozen
            gc.freeze()
            self.write_state()
            LOG.info("localcloud is ready (data directory %s)", self.config.data_dir)
            watch = loop.create_task(self._watch(stop))
            await stop.wait()
            watch.cancel()
            LOG.info("shutting down")
        finally:
            with contextlib.suppress(OSError):
                state_path(self.config).unlink()
            await self.stop()

    async def start(self) -> None:
        # Children first: forking once gRPC's threads run is unsafe.
        specs = [self.storage.child_spec(), registry.spec(self.config, self.registry.backend_port)]
        self.children = [Child(spec, self.log_dir) for spec in specs]
        for child in self.children:
            await child.start()
        await self.cloud.start()
        self.cloud.health["api"] = "ok"
        assert self.cloud.session is not None  # made by start()
        for child in self.children:
            await child.wait_healthy(self.cloud.session)
            self.cloud.health[child.spec.name] = "ok"
        # Its port opens once the backend answers and a crash's unannounced writes are out.
        # Its requests are authorized against the server's IAM policies (storage/iam.py).
        await self.storage.start(self.cloud.notifier, self.cloud.policies)
        # A pushed image is unpacked for Cloud Run before a revision asks for it.
        await self.registry.start(
            self.cloud.repositories.location_of, self.cloud.autoscaler.cache.prepare
        )

    async def _watch(self, stop: asyncio.Event) -> None:
        """Report a child that died; its log says why."""
        while not stop.is_set():
            await asyncio.sleep(1.0)
            for child in self.children:
                if not child.running and self.cloud.health.get(child.spec.name) == "ok":
                    self.cloud.health[child.spec.name] = "exited"
                    LOG.error(
                        "%s exited unexpectedly; see %s:\n%s",
                        child.spec.name,
                        child.log_path,
                        child.tail(),
                    )

    async def stop(self) -> None:
        await self.storage.stop()
        await self.registry.stop()
        await asyncio.gather(*(child.stop() for child in self.children), return_exceptions=True)
        await self.cloud.stop()

    def write_state(self) -> None:
        cfg = self.config
        state = {
            "pid": os.getpid(),
            "data_dir": str(cfg.data_dir),
            "addresses": {
                "grpc": cfg.grpc_address,
                "storage": f"http://{cfg.storage_address}",
                "registry": cfg.registry_address,
                "http": cfg.http_url,
                "oidc_jwks": f"{cfg.http_url}/oauth2/v3/certs",
                "run_ingress": f"http://{cfg.host}:{cfg.ingress_port}",
            },
            "env": cfg.client_env(),
        }
        tmp = state_path(cfg).with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(state_path(cfg))


def serve(config: Config) -> int:
    """Run in the foreground until SIGTERM/SIGINT. Returns the process exit code."""
    try:
        lock = acquire_lock(config)
    except AlreadyRunning as exc:
        print(f"localcloud: {exc}", file=sys.stderr)
        return 1
    try:
        # A state file the lock's last holder did not remove: it died without cleaning up.
        crashed = state_path(config).exists()
        if crashed:
            LOG.warning("the previous localcloud on %s did not stop cleanly", config.data_dir)
            state_path(config).unlink(missing_ok=True)
        check_ports(config, grace=CHILDREN_GRACE if crashed else 0.0)
        try:
            stage.isolate()  # while this process has one thread (see localcloud/run/stage.py)
        except OSError as exc:
            LOG.warning("no private mount namespace (%s): instances may not start as nobody", exc)
        asyncio.run(Supervisor(config).run())
    except (PortTaken, RuntimeError, OSError) as exc:
        print(f"localcloud: {exc}", file=sys.stderr)
        return 1
    finally:
        lock.close()
    return 0

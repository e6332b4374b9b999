"""Start one Cloud Run instance of an unpacked image, contained as Cloud Run contains it.

localcloud has no container engine, so an instance is a process on this machine, run
under bubblewrap (``bwrap``) and held to what a Cloud Run container may do:

- **its own user namespace**: root inside is ``nobody`` outside (a root localcloud runs
  bwrap as ``nobody``; anyone else's localcloud maps root inside to that user), with every
  capability dropped, no new privileges, and no new namespaces. Host files stay
  the host's: ``/proc/sys`` and the other parts of ``/proc`` that can change the machine
  are read-only, and writing them is refused anyway, since their owner is not mapped;
- **the seccomp filter container runtimes apply by default** (``seccomp.py``);
- **its own PID, IPC, UTS, cgroup and network namespaces**: its port is reachable only
  through the ingress, it reaches localcloud's APIs and the internet (``network.py``);
- **Cloud Run's resource limits**: memory (``/tmp`` is a tmpfs of that size, charged to
  the instance), CPU and a process limit, in a cgroup (``cgroups.py``); an instance over
  its memory is killed, as Cloud Run kills it, and the revision's log says so;
- **its own log**, through a pipe, capped and rotated per revision (``logs.py``);
- the host's system directories (``/usr``, ``/lib``...) and the few files of ``/etc`` a
  Python program needs are bound read-only, because localcloud images carry no OS: the
  buildpack builds them against the host's Python (see ``localcloud/cloudbuild/buildpack.py``);
- the host's interpreter for the image's runtime (``python311`` -> Python 3.11) is bound
  read-only at its own path, with its own site-packages hidden so only the image's layers
  provide packages (as on Google Cloud), and linked as ``/usr/local/bin/python3``, which is
  what the image's ``python3`` entrypoint finds on its ``PATH``; a Node.js image
  (``nodejs20``) gets the host's node of that major version the same way, linked as
  ``/usr/local/bin/node``, its global module folder hidden (``find_node``);
- each top-level directory of the image (``/workspace``, ``/layers``) is bound read-only
  at its path; ``/tmp`` is private; ``/proc`` and ``/dev`` are the sandbox's own;
- the environment is exactly the image's ``Env`` overlaid with the instance's variables.

Not visible inside: the user's home (beyond the bound Python prefix), localcloud's data
directory, the project tree, the host's processes and ports. What this machine cannot
enforce (no root, no cgroups, no pasta) is listed by :func:`isolation`, which ``orch local
status`` prints. Without bubblewrap, instances only run when the user opts out of the
sandbox explicitly (``LOCALCLOUD_RUN_UNSANDBOXED=true``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shlex
import shutil
import signal
import site
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from localcloud.core import procs
from localcloud.core.peers import Identity, peers
from localcloud.run import cgroups, logs, network, seccomp, stage
from localcloud.run.images import UnpackedImage

LOG = logging.getLogger(__name__)

# Host directories bound read-only (or recreated as the same symlink, e.g. /lib -> usr/lib).
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin")
# From /etc, only what a Python program needs: TLS roots, name resolution, users, time zone.
ETC_FILES = (
    "/etc/ssl/certs",  # not all of /etc/ssl: /etc/ssl/private holds the host's private keys
    "/etc/ssl/openssl.cnf",
    "/etc/ca-certificates",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/passwd",
    "/etc/group",
    "/etc/localtime",
    "/etc/ld.so.cache",
)
# Top-level names of an image that are never bound from it: the sandbox provides them.
RESERVED = frozenset({"usr", "lib", "lib64", "lib32", "libx32", "bin", "sbin", "etc"}) | {
    "proc",
    "dev",
    "sys",
    "tmp",
}
PYTHON_BIN = "/usr/local/bin"
NOBODY = 65534  # whom root inside an instance is, outside, when localcloud runs as root
DEFAULT_LIMITS = cgroups.Limits(memory=512 * 1024 * 1024, cpu=1.0, pids=1024)
READY_POLL = 0.005  # a refused connect costs microseconds; cold starts wait less
STOP_SETTLE = 5.0  # how long stop() waits for killed processes to be gone
LOG_TAIL_BYTES = 64 * 1024
# The ingress reuses a connection to an instance while it has been idle for less than
# this: below the 2 s keep-alive of gunicorn (which functions-framework runs) and the 5 s
# of most other servers, so an instance never closes one as idle as a request goes out on
# it (such a request would fail, and is never sent again: see run/ingress.py).
KEEPALIVE = 1.0
STARTUP_REPORT = 30.0  # how long bwrap may take to create the namespaces
NO_BWRAP = (
    "bubblewrap (bwrap) is not installed: install the Debian package bubblewrap (make deps) "
    "or set LOCALCLOUD_RUN_UNSANDBOXED=true to run functions without a sandbox"
)


class SandboxError(Exception):
    """An instance could not be started or did not become ready; the message says why."""


@dataclass
class InstanceSpec:
    """One instance to start.

    ``env`` (the revision's template env, PORT, K_SERVICE, K_REVISION, K_CONFIGURATION,
    GOOGLE_CLOUD_PROJECT, emulator addresses) is laid over the image's ``Env``; ``PORT`` is
    always ``port``. ``command``/``args`` are Cloud Run's container.command/args: a command
    replaces the image's Entrypoint and drops its Cmd; args replace the Cmd.
    """

    image: UnpackedImage
    env: dict[str, str]
    port: int
    log_path: Path
    unsandboxed: bool = False
    command: list[str] | None = None
    args: list[str] | None = None
    limits: cgroups.Limits = DEFAULT_LIMITS
    # Host ports the instance reaches on its own 127.0.0.1 (localcloud's APIs and services).
    forward_ports: tuple[int, ...] = ()
    log_max_bytes: int = logs.DEFAULT_MAX_BYTES
    # False: only the filesystem sandbox (LOCALCLOUD_RUN_ISOLATION=filesystem): no user or
    # network namespace, no seccomp, no limits. For side-by-side benchmarks.
    contained: bool = True
    # Whom the instance acts as (its revision's service account): its connections to
    # localcloud are attributed to it (core/peers.py) while it runs.
    identity: Identity | None = None


class Isolation:
    """What this machine lets the sandbox enforce, found out once per process."""

    def __init__(self) -> None:
        self.root = os.geteuid() == 0
        self.cgroups = cgroups.Cgroups()
        self.pasta = network.pasta_available()
        self.tun = os.path.exists("/dev/net/tun")  # pasta's way out needs it
        self.network = self.root and self.pasta is not None and self.tun
        self.seccomp_problem = ""
        try:
            seccomp.compiled()
        except (seccomp.SeccompUnavailable, OSError) as exc:
            self.seccomp_problem = str(exc)

    def report(self, contained: bool = True) -> dict[str, object]:
        """For ``orch local status``: each protection, on or off, and why when off."""
        missing: dict[str, str] = {}
        if not contained:
            off = "LOCALCLOUD_RUN_ISOLATION=filesystem"
            return {
                "bubblewrap": bwrap_available() is not None,
                "user": "root (filesystem sandbox only)",
                "cgroups": None,
                "network": "the host's",
                "seccomp": False,
                "not_enforced": {
                    "user namespace": off,
                    "network isolation": off,
                    "seccomp filter": off,
                    "memory, cpu and process limits": off,
                },
            }
        if not self.network:
            if self.pasta is None:
                why = "pasta is not installed (Debian package passt)"
            elif not self.tun:
                why = "this machine has no /dev/net/tun, which pasta needs"
            else:
                why = (
                    "needs a localcloud running as root (it opens sockets in each "
                    "instance's network namespace)"
                )
            missing["network isolation"] = why
        if self.seccomp_problem:
            missing["seccomp filter"] = self.seccomp_problem
        if not self.cgroups.enforced:
            missing["memory, cpu and process limits"] = self.cgroups.problem
        return {
            "bubblewrap": bwrap_available() is not None,
            "user": "nobody (root inside)" if self.root else f"uid {os.geteuid()} (root inside)",
            "cgroups": self.cgroups.report().get("cgroups"),
            "network": "own namespace, pasta" if self.network else "the host's",
            "seccomp": not self.seccomp_problem,
            "not_enforced": missing,
        }

    def open(self) -> None:
        """At start: stop the pastas a localcloud killed with SIGKILL left behind."""
        if self.network:
            stopped = network.reap_orphans()
            if stopped:
                LOG.warning("stopped %d pasta processes left by an earlier localcloud", stopped)

    def close(self) -> None:
        self.cgroups.close()


_isolation: Isolation | None = None


def isolation() -> Isolation:
    global _isolation
    if _isolation is None:
        _isolation = Isolation()
    return _isolation


@dataclass(frozen=True)
class PythonInstall:
    """A host Python installation the sandbox can bind: all of it lives under ``prefix``."""

    version: str  # "3.11"
    executable: str  # the real interpreter binary (no venv, no shim)
    prefix: str  # its sys.base_prefix
    site_dirs: tuple[str, ...]  # its global site-packages, hidden in the sandbox

    @property
    def names(self) -> tuple[str, ...]:
        """What the image's entrypoint may call it, linked in /usr/local/bin."""
        return ("python3", "python", f"python{self.version}")


# Run by another interpreter to describe itself (its base install, not a venv's).
_PROBE = """
import json, os, site, sys
exe = os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable)
print(json.dumps({
    "version": "%d.%d" % sys.version_info[:2],
    "executable": exe,
    "prefix": sys.base_prefix,
    "site_dirs": site.getsitepackages([sys.base_prefix]),
}))
"""


def bwrap_available() -> str | None:
    """The path of bwrap, or None when bubblewrap is not installed."""
    return shutil.which("bwrap")


def _base_executable(prefix: str, version: str) -> str | None:
    for name in (f"python{version}", "python3"):
        candidate = os.path.join(prefix, "bin", name)
        if os.path.isfile(candidate):
            return os.path.realpath(candidate)
    found = os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable)
    return found if found.startswith(prefix.rstrip("/") + "/") else None


@functools.lru_cache(maxsize=8)
def find_python(runtime: str) -> PythonInstall:
    """The host's Python for runtime ``python3XY``; SandboxError if this machine has none.

    The running interpreter's base install when the versions match (a venv is only a
    pointer to it), else ``python3.XY`` on PATH, asked where its own base install is (PATH
    may hold a pyenv shim or a venv, neither of which can be bound on its own).
    """
    if not runtime.startswith("python3") or not runtime[7:].isdigit():
        raise SandboxError(f"runtime {runtime!r} is not a Python runtime (e.g. python311)")
    version = f"3.{runtime[7:]}"
    if version == f"{sys.version_info[0]}.{sys.version_info[1]}":
        prefix = sys.base_prefix
        executable = _base_executable(prefix, version)
        if executable is not None:
            dirs = tuple(site.getsitepackages([prefix]))
            return PythonInstall(version, executable, prefix, dirs)
    found = shutil.which(f"python{version}")
    if found is None:
        raise SandboxError(
            f"runtime {runtime} needs python{version}, which this machine does not have"
        )
    try:
        install = describe_python(found)
    except SandboxError as exc:
        raise SandboxError(f"runtime {runtime}: {exc}") from None
    if install.version != version:
        raise SandboxError(f"runtime {runtime}: {found} is Python {install.version}")
    return install


@functools.lru_cache(maxsize=8)
def describe_python(executable: str) -> PythonInstall:
    """The base install behind ``executable`` (a venv's or a shim's python included), as
    the interpreter itself tells; SandboxError when it does not run."""
    try:
        out = subprocess.run(
            [executable, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        doc = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise SandboxError(f"{executable} does not run: {exc}") from None
    return PythonInstall(doc["version"], doc["executable"], doc["prefix"], tuple(doc["site_dirs"]))


@dataclass(frozen=True)
class NodeInstall:
    """A host Node.js the sandbox can bind: its binary, under ``prefix`` (``/usr`` for a
    packaged node, the version's directory for nvm and the like)."""

    version: str  # the major version, "20"
    executable: str  # the real binary (no shim)
    prefix: str
    site_dirs: tuple[str, ...]  # its global module directories, hidden in the sandbox

    @property
    def names(self) -> tuple[str, ...]:
        """What the image's entrypoint may call it, linked in /usr/local/bin."""
        return ("node", "nodejs")


Interpreter = PythonInstall | NodeInstall


@functools.lru_cache(maxsize=8)
def find_node(runtime: str) -> NodeInstall:
    """The host's node for runtime ``nodejsNN`` (``nodeNN`` or ``node`` on PATH, whichever
    is that major version, as the Node.js buildpack chose it); SandboxError if none is."""
    major = runtime.removeprefix("nodejs")
    if not runtime.startswith("nodejs") or not major.isdigit():
        raise SandboxError(f"runtime {runtime!r} is not a Node.js runtime (e.g. nodejs20)")
    seen = []
    for name in (f"node{major}", "node"):
        found = shutil.which(name)
        if found is None:
            continue
        real = os.path.realpath(found)
        try:
            out = subprocess.run(
                [real, "--version"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        seen.append(out)
        if out.removeprefix("v").split(".")[0] == major:
            prefix = os.path.dirname(os.path.dirname(real))
            # node's global folders ($PREFIX/lib/node; $HOME's are not bound): only the
            # image's layers provide modules, as on Google Cloud.
            return NodeInstall(major, real, prefix, (os.path.join(prefix, "lib", "node"),))
    have = f" (its node is {', '.join(seen)})" if seen else ""
    raise SandboxError(
        f"runtime {runtime} needs Node.js {major}, which this machine does not have{have}"
    )


def find_interpreter(runtime: str) -> Interpreter:
    """The host interpreter an image of ``runtime`` (its localcloud.runtime label) runs on."""
    if runtime.startswith("nodejs"):
        return find_node(runtime)
    return find_python(runtime)


def container_argv(spec: InstanceSpec) -> list[str]:
    """The instance's command line, with Cloud Run's command/args rules."""
    image = spec.image
    if spec.command is not None:
        argv = [*spec.command, *(spec.args or [])]
    else:
        argv = [*image.entrypoint, *(spec.args if spec.args is not None else image.cmd)]
    if not argv:
        raise SandboxError(
            f"image {image.digest} has no Entrypoint or Cmd and the service sets no command"
        )
    return argv


def instance_env(spec: InstanceSpec) -> dict[str, str]:
    """The image's Env, then the instance's variables, then PORT (which must match)."""
    env = {**spec.image.env, **spec.env, "PORT": str(spec.port)}
    bad = [k for k in env if not k or "=" in k or "\0" in k or "\0" in env[k]]
    for key in bad:
        LOG.warning("dropping the invalid environment variable %r", key)
        del env[key]
    return env


def _runtime(image: UnpackedImage) -> str | None:
    return image.runtime or image.env.get("GOOGLE_RUNTIME")


def _image_tops(image: UnpackedImage, reserved: set[str]) -> list[Path]:
    """The image's top-level entries that are bound into the instance, sorted."""
    tops = []
    for child in sorted(image.rootfs.iterdir()):
        if child.name in reserved:
            LOG.debug(
                "not binding /%s of image %s: the sandbox provides it", child.name, image.digest
            )
            continue
        tops.append(child)
    return tops


def _reserved(interpreter: Interpreter | None) -> set[str]:
    reserved = set(RESERVED)
    if interpreter is not None and len(Path(interpreter.prefix).parts) > 1:
        reserved.add(Path(interpreter.prefix).parts[1])  # e.g. "root" for /root/.pyenv/...
    return reserved


@dataclass(frozen=True)
class Fds:
    """Descriptors bwrap inherits: the seccomp program, where it reports its child's pid,
    and the pipe it waits on until the instance's cgroup and network are in place."""

    seccomp: int | None = None
    info: int | None = None
    block: int | None = None

    def passed(self) -> tuple[int, ...]:
        return tuple(fd for fd in (self.seccomp, self.info, self.block) if fd is not None)


def system_binds() -> tuple[list[str], list[str]]:
    """What every sandbox (an instance, a build's pip or npm) sees of the host: bwrap
    arguments binding SYSTEM_DIRS and ETC_FILES read-only (a symlinked directory recreated
    as the same symlink), and the directories bound, which already hold what lies under
    them (see :func:`within`)."""
    cmd: list[str] = []
    bound: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            cmd += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            cmd += ["--ro-bind", path, path]
            bound.append(path)
    for path in ETC_FILES:
        if os.path.exists(path):
            cmd += ["--ro-bind", path, path]
    return cmd, bound


def within(path: str, dirs: list[str]) -> bool:
    """Whether ``path`` is one of ``dirs`` or under one of them."""
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dirs)


def bwrap_argv(
    bwrap: str,
    spec: InstanceSpec,
    interpreter: Interpreter | None,
    fds: Fds = Fds(),
    own_network: bool = False,
    program: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> list[str]:
    """The whole bwrap command line for ``spec`` (separate so it can be read and tested);
    ``program`` and ``env`` in place of the container's command and environment."""
    image = spec.image
    cmd = [bwrap, "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    if spec.contained:
        # No --disable-userns: pasta must still join the namespace; the seccomp filter
        # refuses new namespaces to the instance's processes (no CAP_SYS_ADMIN) anyway.
        cmd += ["--unshare-user", "--uid", "0", "--gid", "0", "--unshare-cgroup-try"]
    cmd += ["--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    if own_network:
        cmd += ["--unshare-net"]
    system, bound = system_binds()
    cmd += system
    # /tmp is Cloud Run's in-memory file system: as big as the memory limit, charged to it.
    cmd += ["--proc", "/proc", "--dev", "/dev"]
    if spec.contained:
        cmd += ["--size", str(spec.limits.memory)]
    cmd += ["--tmpfs", "/tmp"]
    if interpreter is not None:
        prefix = interpreter.prefix
        if not within(prefix, bound):
            cmd += ["--ro-bind", stage.reachable(interpreter.prefix), interpreter.prefix]
        for site_dir in interpreter.site_dirs:
            if os.path.isdir(site_dir):
                cmd += ["--tmpfs", site_dir]
        if not os.path.isdir(PYTHON_BIN):
            raise SandboxError(
                f"this machine has no {PYTHON_BIN}, where the sandbox links the image's "
                f"{interpreter.names[0]}"
            )
        cmd += ["--tmpfs", PYTHON_BIN]
        for name in interpreter.names:
            cmd += ["--symlink", interpreter.executable, f"{PYTHON_BIN}/{name}"]
    for top in _image_tops(image, _reserved(interpreter)):
        dest = "/" + top.name
        if top.is_symlink():
            cmd += ["--symlink", os.readlink(top), dest]
        else:
            cmd += ["--ro-bind", stage.reachable(str(top)), dest]
    if fds.seccomp is not None:
        cmd += ["--seccomp", str(fds.seccomp)]
    if fds.info is not None:
        cmd += ["--info-fd", str(fds.info)]
    if fds.block is not None:
        cmd += ["--block-fd", str(fds.block)]
    cmd += ["--chdir", image.working_dir or "/", "--clearenv"]
    for key, value in (instance_env(spec) if env is None else env).items():
        cmd += ["--setenv", key, value]
    return [*cmd, "--", *(container_argv(spec) if program is None else program)]


def _unsandboxed_argv(
    spec: InstanceSpec, interpreter: Interpreter | None
) -> tuple[list[str], dict[str, str], str]:
    """argv, env and cwd to run the image directly on the host, its paths moved into the rootfs."""
    image = spec.image
    rootfs = str(image.rootfs)
    tops = ["/" + p.name for p in _image_tops(image, _reserved(interpreter))]

    def host(path: str) -> str:
        if any(path == t or path.startswith(t + "/") for t in tops):
            return rootfs + path
        return path

    argv = [host(a) for a in container_argv(spec)]
    if interpreter is not None and argv[0] in interpreter.names:
        argv[0] = interpreter.executable
    env = instance_env(spec)
    for key in ("PYTHONPATH", "NODE_PATH", "PATH"):
        if key in env:
            env[key] = ":".join(host(p) for p in env[key].split(":"))
    workdir = image.working_dir or "/"
    cwd = host(workdir) if host(workdir) != workdir else rootfs
    return argv, env, cwd


def _processes() -> dict[int, tuple[int, int]]:
    """Every live process: pid -> (ppid, start time), from /proc/PID/stat; zombies left out.

    The start time tells a process from a later one that reused its pid.
    """
    found: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                found[int(entry.name)] = stat
    return found


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time) of a live process, None if it is gone or a zombie."""
    fields = procs.stat_fields(pid)
    if fields is None or fields[0] == b"Z":
        return None
    try:
        return int(fields[1]), int(fields[19])  # the 4th and 22nd fields of stat
    except (IndexError, ValueError):
        return None


class Instance:
    """One started instance: its process (bwrap, or the program itself when unsandboxed)."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        spec: InstanceSpec,
        argv: list[str],
        log_offset: int,
        sandboxed: bool,
        log: logs.RevisionLog | None = None,
        netns: network.Namespace | None = None,
        cgroup: cgroups.InstanceCgroup | None = None,
        child_pid: int | None = None,
    ) -> None:
        self.process = process
        self.spec = spec
        self.argv = argv
        self.sandboxed = sandboxed
        self.log = log or logs.revision_log(spec.log_path, spec.log_max_bytes)
        self.netns = netns
        self.cgroup = cgroup
        self.child_pid = child_pid  # the sandbox's init, as the host sees it
        self.oom_killed = False
        self.stopping = False  # stop() was called: an exit now is no crash
        # The instance's way out (pasta), set up while the program starts; see wait_ready.
        self.network_ready: asyncio.Future[int] | None = None
        # A tree of its own, removed once it has exited: the root of a sandbox started
        # ahead from its image's base (prestart.py).
        self.scratch: Path | None = None
        self._log_offset = log_offset
        self._rotations = self.log.rotations
        self._session: aiohttp.ClientSession | None = None
        self._oom_fd: int | None = None
        self._peer: int | None = None  # its registration with core/peers.py
        self._exited = asyncio.ensure_future(process.wait())
        self._cleaned = asyncio.ensure_future(self._after_exit())
        if cgroup is not None:
            self._watch_memory(cgroup)

    def _watch_memory(self, cgroup: cgroups.InstanceCgroup) -> None:
        """cgroup v1 kills one process at a time: on its OOM event, end the whole instance
        (v2's ``memory.oom.group`` does that in the kernel)."""
        try:
            fd = cgroup.oom_eventfd()
        except OSError:
            fd = None
        if fd is None:
            return
        self._oom_fd = fd

        def fired() -> None:
            with contextlib.suppress(OSError):
                os.eventfd_read(fd)
            if self.running and not self.oom_killed:
                self.oom_killed = True
                self._kill_sandbox()

        asyncio.get_running_loop().add_reader(fd, fired)

    def identify(self) -> None:
        """Let localcloud tell this instance's connections apart (``core/peers.py``): they
        leave through its pasta once its network is up, or else from its own processes."""
        identity = self.spec.identity
        if identity is None:
            return
        ready = self.network_ready
        if ready is None:
            self._peer = peers.add(identity, self.pid)  # its processes, as they come and go
            return

        def attached(future: asyncio.Future[int]) -> None:
            if future.cancelled() or future.exception() is not None or not self.running:
                return
            pasta = future.result()
            self._peer = peers.add(identity, pasta, lambda: (pasta,))

        ready.add_done_callback(attached)

    def _kill_sandbox(self) -> None:
        # The sandbox's init: when it dies, the kernel kills every process of its namespace.
        target = self.child_pid or self.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(target, signal.SIGKILL)

    async def _after_exit(self) -> None:
        """Once the instance is gone: say why if memory killed it or it exited by itself (not
        by stop()), release what it held."""
        await self._exited
        if self._oom_fd is not None:
            asyncio.get_running_loop().remove_reader(self._oom_fd)
            os.close(self._oom_fd)
            self._oom_fd = None
        group = self.cgroup
        if group is not None:
            if group.oom_kills() or self.oom_killed:
                self.oom_killed = True
                limit = group.limits.memory // (1024 * 1024)
                used = max(group.peak_memory() // (1024 * 1024), limit)
                self.log.write(
                    f"[localcloud] Memory limit of {limit} MiB exceeded with {used} MiB used. "
                    "Consider increasing the memory limit, see "
                    "https://cloud.google.com/run/docs/configuring/memory-limits\n".encode()
                )
                LOG.warning("instance on port %d killed: over its %d MiB", self.port, limit)
            await asyncio.to_thread(group.remove)
        if not self.stopping and not self.oom_killed:
            self.log.write(f"[localcloud] {_exit_words(self.returncode)}\n".encode())
        peers.remove(self._peer)
        self._peer = None
        ready = self.network_ready
        if ready is not None:
            if not ready.done():
                ready.cancel()  # attach stops the pasta it was starting
            elif not ready.cancelled() and ready.exception() is None:
                network.detach(ready.result())  # pasta outlives the namespace otherwise
        if self.netns is not None:
            self.netns.close()
        if self._session is not None:
            await self._session.close()
        if self.scratch is not None:
            await asyncio.to_thread(shutil.rmtree, self.scratch, True)

    @property
    def session(self) -> aiohttp.ClientSession:
        """HTTP to this instance: its connections are opened inside its network."""
        if self._session is None:
            factory = self.netns.socket_factory if self.netns is not None else None
            connector = aiohttp.TCPConnector(
                socket_factory=factory, limit=0, keepalive_timeout=KEEPALIVE
            )
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.returncode}"
        return f"<Instance pid={self.pid} port={self.port} {state}>"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return self.spec.port

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def pids(self) -> list[int]:
        """Host PIDs of the instance's processes: the started one and all its descendants."""
        return [pid for pid, _ in self._tree()]

    def _tree(self) -> list[tuple[int, int]]:
        """(pid, start time) of the started process and its descendants, parents first."""
        if not self.running:
            return []
        processes = _processes()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in processes.items():
            children.setdefault(ppid, []).append(pid)
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop(0)
            if pid in processes:
                found.append((pid, processes[pid][1]))
            todo.extend(sorted(children.get(pid, ())))
        return found

    def log_tail(self, n: int = 20) -> str:
        """The last ``n`` lines this instance wrote to its log (not earlier instances')."""
        offset = self._log_offset if self.log.rotations == self._rotations else 0
        try:
            with open(self.spec.log_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(offset, size - LOG_TAIL_BYTES))
                data = f.read()
        except OSError:
            return ""
        return "\n".join(data.decode(errors="replace").splitlines()[-n:])

    def _program(self) -> int | None:
        """The image's program: the process itself, or the child of the sandbox's init."""
        if not self.sandboxed:
            return self.pid
        found = procs.children(self.child_pid) if self.child_pid else []
        return found[0] if found else None

    async def settle(self, timeout: float = STOP_SETTLE) -> None:
        """After a request's connection to this instance failed: when the instance is on
        its way out (its program gone, exiting or with a SIGKILL pending: a crash, or its
        memory), wait until its exit is seen (``timeout`` at most), so the pool gives the
        next request to another instance, not to one whose listening socket is about to
        close. An instance whose program is well (a worker died; its server forks a new
        one) is left serving."""
        program = self._program()
        if self.running and program is not None and not procs.going(program):
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exited), timeout)

    async def wait_ready(self, timeout: float) -> None:
        """Returns once a TCP connect to 127.0.0.1:port succeeds (Cloud Run's default probe).

        Raises SandboxError with the log's tail if the process exits first or the timeout
        passes; the process is left as it is (the caller stops it).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if not self.running:
                raise SandboxError(
                    f"the instance exited with code {self.returncode} before listening on port "
                    f"{self.port}; its log ends with:\n{self.log_tail()}"
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise SandboxError(
                    f"the instance did not listen on port {self.port} within {timeout:g}s; its "
                    f"log ends with:\n{self.log_tail()}"
                )
            try:
                _, writer = await asyncio.wait_for(self.connect(), min(remaining, 1.0))
            except (OSError, TimeoutError):
                await asyncio.wait({self._exited}, timeout=min(READY_POLL, remaining))
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            if self.running:  # else someone else's listener answered; report the exit
                await self._network_up(max(deadline - loop.time(), 0.1))
                return

    async def _network_up(self, timeout: float) -> None:
        if self.network_ready is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.network_ready), timeout)
        except (network.NetworkError, TimeoutError) as exc:
            raise SandboxError(f"the instance's network was not set up: {exc}") from exc

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.netns is not None:
            return await self.netns.connect(self.port)
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the program, SIGKILL whatever is left after ``grace`` seconds.

        Under bwrap the signal goes to the sandboxed processes themselves: bwrap does not
        forward it, and killing bwrap first would SIGKILL the sandbox without a grace period.
        bwrap exits as soon as the program does, while the sandbox's other processes are
        still being torn down, so stop() also waits (briefly) until every process it saw
        is gone: they are not its children and cannot be waited for.
        """
        self.stopping = True
        tree = self._tree()
        if self.running:
            if self.sandboxed:
                for pid, _ in tree[1:]:  # the sandbox's init ignores it (it has no handler)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            else:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exited), grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)  # bwrap, or the unsandboxed process group
        tree += [t for t in self._tree() if t not in tree]  # forked during the grace period
        for pid, started in tree:
            if _same(pid, started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        await self._exited
        await asyncio.shield(self._cleaned)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_SETTLE
        while any(_same(pid, started) for pid, started in tree):
            if loop.time() > deadline:
                left = [pid for pid, started in tree if _same(pid, started)]
                LOG.warning("instance on port %d: processes %s outlived SIGKILL", self.port, left)
                break
            await asyncio.sleep(0.01)
        LOG.debug("instance pid %d on port %d stopped (%s)", self.pid, self.port, self.returncode)


def _exit_words(code: int | None) -> str:
    """An instance's own exit, in the words of Cloud Run's log ("Container called exit(1).",
    "Container terminated on signal 9."). A signal is a negative code when the program is
    the process itself, 128 + the signal when bwrap reports it, as shells do."""
    if code is not None and (code < 0 or code > 128):
        return f"Container terminated on signal {-code if code < 0 else code - 128}."
    return f"Container called exit({code})."


def _same(pid: int, started: int) -> bool:
    """Whether ``pid`` is still the process that started at ``started`` (and not a zombie)."""
    stat = _stat(pid)
    return stat is not None and stat[1] == started


async def start(spec: InstanceSpec) -> Instance:
    """Starts one instance of ``spec.image`` (not yet ready: call ``wait_ready``)."""
    image = spec.image
    runtime = _runtime(image)
    interpreter = await asyncio.to_thread(find_interpreter, runtime) if runtime else None
    argv = container_argv(spec)
    bwrap = bwrap_available()
    if spec.unsandboxed:
        LOG.warning(
            "running an instance of %s WITHOUT a sandbox (LOCALCLOUD_RUN_UNSANDBOXED): it can "
            "read and write everything this user can",
            image.digest,
        )
        return await _start_unsandboxed(spec, interpreter, argv)
    if bwrap is None:
        raise SandboxError(NO_BWRAP)
    return await _start_sandboxed(bwrap, spec, interpreter, argv)


def _log_start(log: logs.RevisionLog, spec: InstanceSpec, mode: str, argv: list[str]) -> int:
    offset = log.size()
    if mode == "sandboxed" and not spec.contained:
        mode = "sandboxed, filesystem only"
    log.write(f"[localcloud] starting ({mode}, port {spec.port}): {shlex.join(argv)}\n".encode())
    return offset


async def _start_unsandboxed(
    spec: InstanceSpec, interpreter: Interpreter | None, argv: list[str]
) -> Instance:
    cmd, env, cwd = _unsandboxed_argv(spec, interpreter)
    log = logs.revision_log(spec.log_path, spec.log_max_bytes)
    offset = _log_start(log, spec, "UNSANDBOXED", argv)
    read, write = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group, signalled as one by stop()
        )
    except OSError as exc:
        os.close(read)
        raise SandboxError(f"cannot start {cmd[0]}: {exc}") from exc
    finally:
        os.close(write)
    log.pump(read, f"port {spec.port}")
    LOG.info("started instance pid %d (UNSANDBOXED) on port %d", process.pid, spec.port)
    instance = Instance(process, spec, argv, offset, False, log)
    instance.identify()
    return instance


@functools.lru_cache(maxsize=1)
def _as_nobody() -> tuple[str, ...]:
    """The prefix that runs bwrap as ``nobody``, with no groups and no capabilities."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise SandboxError("setpriv (Debian package util-linux) is needed to start instances")
    return (
        setpriv,
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        "--inh-caps=-all",
        "--",
    )


def _read_info(fd: int, timeout: float) -> dict:
    """bwrap's ``--info-fd`` report (``{"child-pid": N, ...}``); closes ``fd``."""
    import select

    data = b""
    try:
        while not data.rstrip().endswith(b"}"):
            ready, _, _ = select.select([fd], [], [], timeout)
            if not ready:
                raise SandboxError(f"bwrap did not report its sandbox within {timeout:g}s")
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    try:
        return json.loads(data)
    except ValueError:
        raise SandboxError("bwrap exited before its sandbox was set up") from None


@dataclass
class _Sandbox:
    """A bwrap started and let go: its program runs, in its cgroup, its network coming."""

    process: asyncio.subprocess.Process
    child: int  # the sandbox's init, as the host sees it
    group: cgroups.InstanceCgroup | None
    netns: network.Namespace | None
    attaching: asyncio.Future[int] | None
    out: int  # the read end of its output, -1 once handed to a log's pump
    stdin: int  # the write end of its standard input, -1 when it has /dev/null


async def _spawn(
    bwrap: str,
    spec: InstanceSpec,
    interpreter: Interpreter | None,
    *,
    program: list[str] | None = None,
    env: dict[str, str] | None = None,
    pump: Callable[[int], object] | None = None,
    stdin_pipe: bool = False,
    background: bool = False,
) -> _Sandbox:
    """bwrap for ``spec`` (running ``program`` with ``env``, by default the container's
    command and environment), in its cgroup, its network attaching. ``pump`` takes its
    output at once (so what bwrap says while it sets up is kept); without it, the caller
    owns ``out``. ``background``: its cgroup gets CPU only when nothing else of
    localcloud's wants it (``cgroups.InstanceCgroup.set_background``). Everything is undone
    when the start fails or is cancelled."""
    iso = isolation()
    contained = spec.contained
    if contained and iso.seccomp_problem:
        raise SandboxError(f"instances need the default seccomp filter: {iso.seccomp_problem}")
    seccomp_fd = seccomp.memfd() if contained else -1
    info_r, info_w = os.pipe()
    block_r, block_w = os.pipe()
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe() if stdin_pipe else (-1, -1)
    fds = Fds(seccomp=seccomp_fd if contained else None, info=info_w, block=block_r)
    for fd in fds.passed():
        os.set_inheritable(fd, True)
    group: cgroups.InstanceCgroup | None = None
    process: asyncio.subprocess.Process | None = None
    netns: network.Namespace | None = None
    attaching: asyncio.Future[int] | None = None
    try:
        network_ns = contained and iso.network
        cmd = bwrap_argv(
            bwrap, spec, interpreter, fds, own_network=network_ns, program=program, env=env
        )
        if contained and iso.cgroups.enforced:
            group = await asyncio.to_thread(iso.cgroups.create, spec.limits)
            if background and group is not None:
                group.set_background(True)
        if contained and iso.root:
            # Not subprocess's user=/group=: they make Python fork() instead of vfork(),
            # and gRPC's fork handlers then crash the child now and then (SIGSEGV, SIGABRT).
            cmd = [*_as_nobody(), *cmd]
        try:
            process = await procs.start_sandbox(  # a session of its own, to end as one
                *cmd,
                stdin=in_r if stdin_pipe else asyncio.subprocess.DEVNULL,
                stdout=out_w,
                stderr=asyncio.subprocess.STDOUT,
                env={},
                cwd="/",
                pass_fds=fds.passed(),
            )
        except OSError as exc:
            raise SandboxError(f"cannot start {cmd[0]}: {exc}") from exc
        for fd in (info_w, block_r, out_w, seccomp_fd, in_r):
            if fd >= 0:
                os.close(fd)
        info_w = block_r = out_w = seccomp_fd = in_r = -1
        if pump is not None:
            pump(out_r)
            out_r = -1
        fd, info_r = info_r, -1
        try:
            info = await asyncio.to_thread(_read_info, fd, STARTUP_REPORT)
        except SandboxError as exc:
            code = await asyncio.wait_for(process.wait(), 5)
            raise SandboxError(f"{exc} (bwrap's exit status {code})") from None
        child = int(info["child-pid"])
        if group is not None:
            await asyncio.to_thread(group.add, child)
        if network_ns:
            netns = network.Namespace(child)
            forward = [p for p in spec.forward_ports if p != spec.port]
            # pasta takes 50-200 ms here, about a third of functions-framework's own start:
            # it is set up while the program starts, and the instance is ready only once
            # both are (wait_ready). A program reaches out only after importing its
            # framework and code, by which time the way out is there.
            attaching = asyncio.ensure_future(_attach(child, forward))
        os.write(block_w, b"go")  # in its cgroup: let the program start
    except BaseException as exc:
        if block_w >= 0:  # a sandbox still waiting to start reads EOF and exits
            os.close(block_w)
            block_w = -1
        await _undo(process, group, netns, attaching)
        if isinstance(exc, (OSError, network.NetworkError)):
            raise SandboxError(f"the instance's sandbox could not be set up: {exc}") from exc
        raise
    finally:
        for fd in (info_r, info_w, block_r, block_w, out_w, seccomp_fd, in_r):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
    sandbox = _Sandbox(process, child, group, netns, attaching, out_r, in_w)
    out_r = in_w = -1
    return sandbox


async def _attach(child: int, forward: list[int]) -> int:
    """pasta for the sandbox of ``child``, once bwrap has its loopback up."""
    await network.loopback_up(child)
    return await network.attach(child, forward)


async def _undo(
    process: asyncio.subprocess.Process | None,
    group: cgroups.InstanceCgroup | None,
    netns: network.Namespace | None,
    attaching: asyncio.Future[int] | None,
) -> None:
    """End a sandbox that never became an instance, and release what it held."""
    if process is not None and process.returncode is None:
        await procs.end_sandbox(process.pid)  # a bwrap still setting up: its child too
        await process.wait()
    if group is not None:
        await asyncio.to_thread(group.remove)
    if netns is not None:
        netns.close()
    if attaching is not None:
        if not attaching.done():
            attaching.cancel()  # attach stops the pasta it was starting
        elif not attaching.cancelled() and attaching.exception() is None:
            network.detach(attaching.result())


async def _start_sandboxed(
    bwrap: str, spec: InstanceSpec, interpreter: Interpreter | None, argv: list[str]
) -> Instance:
    log = logs.revision_log(spec.log_path, spec.log_max_bytes)
    offset = _log_start(log, spec, "sandboxed", argv)
    sb = await _spawn(bwrap, spec, interpreter, pump=lambda fd: log.pump(fd, f"port {spec.port}"))
    LOG.info(
        "started instance pid %d (sandboxed) of %s on port %d",
        sb.process.pid,
        spec.image.digest,
        spec.port,
    )
    return _instance(sb, spec, argv, offset, log)


def _instance(
    sb: _Sandbox, spec: InstanceSpec, argv: list[str], offset: int, log: logs.RevisionLog
) -> Instance:
    instance = Instance(sb.process, spec, argv, offset, True, log, sb.netns, sb.group, sb.child)
    instance.network_ready = sb.attaching
    instance.identify()
    return instance

"""Cloud Run's resource limits for one instance: a cgroup with memory, CPU and process caps.

Cloud Run gives each instance ``resources.limits.memory`` (default 512 MiB; the in-memory
``/tmp`` counts against it, and an instance over it is killed), ``resources.limits.cpu``
(default 1) and a bounded number of processes. localcloud does the same with a cgroup per
instance:

- **cgroup v2** (one unified hierarchy with the ``memory``, ``cpu`` and ``pids``
  controllers): ``memory.max`` with no swap, ``memory.oom.group`` so the whole instance dies
  together, ``cpu.max`` and ``pids.max``;
- **cgroup v1** (a hierarchy per controller, as on machines still booted that way):
  ``memory.limit_in_bytes`` (and ``memsw``), an OOM eventfd through which we kill the
  whole instance ourselves (v1 has no ``oom.group``), ``cpu.cfs_quota_us`` and ``pids.max``.

Where neither is writable (not root, no delegation), :meth:`Cgroups.report` says what is not
enforced; ``orch local status`` prints it. tmpfs pages are charged to the cgroup of the
process that writes them, which is what makes ``/tmp`` count against memory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

LOG = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Limits:
    """What one instance may use; ``cpu`` in CPUs (0.5, 1, 2), ``memory`` in bytes."""

    memory: int
    cpu: float
    pids: int


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _counter(text: str, key: str) -> int:
    match = re.search(rf"^{key} (\d+)$", text, re.M)
    return int(match.group(1)) if match else 0


class InstanceCgroup:
    """The cgroup (one directory per hierarchy) of one instance."""

    def __init__(self, version: int, dirs: dict[str, Path], limits: Limits) -> None:
        self.version = version
        self.dirs = dirs  # controller -> directory (v2: the same one for all)
        self.limits = limits

    @property
    def memory_dir(self) -> Path | None:
        return self.dirs.get("memory")

    def set_background(self, background: bool) -> None:
        """CPU for the group only when nothing else of localcloud's wants it (the least
        weight: cpu.shares 2 of 1024, cpu.weight 1 of 100), or its share back."""
        if self.version == 2:
            (self.dirs["cpu"] / "cpu.weight").write_text("1" if background else "100")
        else:
            (self.dirs["cpu"] / "cpu.shares").write_text("2" if background else "1024")

    def add(self, pid: int) -> None:
        """Move ``pid`` (and so everything it forks from then on) into the cgroup."""
        for path in {p for p in self.dirs.values()}:
            (path / "cgroup.procs").write_text(f"{pid}\n")

    def oom_kills(self) -> int:
        """How many processes the kernel killed here for going over the memory limit."""
        directory = self.memory_dir
        if directory is None:
            return 0
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        return _counter(_read(directory / name), "oom_kill")

    def peak_memory(self) -> int:
        directory = self.memory_dir
        if directory is None:
            return 0
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        text = _read(directory / name).strip()
        return int(text) if text.isdigit() else 0

    def oom_eventfd(self) -> int | None:
        """v1 only: an eventfd that becomes readable when the cgroup runs out of memory."""
        directory = self.memory_dir
        if self.version != 1 or directory is None:
            return None
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        ofd = os.open(directory / "memory.oom_control", os.O_RDONLY | os.O_CLOEXEC)
        try:
            (directory / "cgroup.event_control").write_text(f"{efd} {ofd}")
        except OSError:
            os.close(efd)
            return None
        finally:
            os.close(ofd)
        return efd

    def remove(self, wait: float = 2.0) -> None:
        """Remove the directories once their processes are gone (they linger a moment)."""
        deadline = time.monotonic() + wait
        for path in {p for p in self.dirs.values()}:
            while True:
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        LOG.warning("cgroup %s is still busy; left behind", path)
                        break
                    time.sleep(0.01)


class Cgroups:
    """Where this process may create instance cgroups, and which limits it can enforce."""

    def __init__(self, root: Path = ROOT, owner: str | None = None) -> None:
        self.root = root
        self.owner = owner or f"localcloud-{os.getpid()}"
        self.version = 0
        self.bases: dict[str, Path] = {}
        self.problem = ""
        self._counter = 0
        try:
            self._detect()
        except OSError as exc:
            self.bases, self.version = {}, 0
            self.problem = f"cgroups are not writable here ({exc})"
        if not self.bases and not self.problem:
            self.problem = "no writable cgroup with the memory, cpu and pids controllers"

    # -- detection ------------------------------------------------------------------------
    def _own(self) -> dict[str, str]:
        """controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
        found: dict[str, str] = {}
        for line in _read(Path("/proc/self/cgroup")).splitlines():
            _, names, path = line.split(":", 2)
            for name in names.split(",") if names else [""]:
                found[name] = path
        return found

    def _detect(self) -> None:
        if os.geteuid() != 0:
            self.problem = "localcloud does not run as root, so it cannot create cgroups"
            return
        own = self._own()
        unified = self.root if (self.root / "cgroup.controllers").exists() else None
        if unified is None and (self.root / "unified" / "cgroup.controllers").exists():
            unified = self.root / "unified"
        if unified is not None and "" in own:
            parent = unified / own[""].lstrip("/")
            available = set(_read(parent / "cgroup.controllers").split())
            if set(CONTROLLERS) <= available:
                self._setup_v2(parent)
                return
        v1 = {c: self.root / c / own[c].lstrip("/") for c in CONTROLLERS if c in own}
        if len(v1) == len(CONTROLLERS) and all(p.is_dir() for p in v1.values()):
            for controller, parent in v1.items():
                base = parent / self.owner
                base.mkdir(exist_ok=True)
                self.bases[controller] = base
            self.version = 1

    def _setup_v2(self, parent: Path) -> None:
        """v2 forbids processes in a cgroup whose controllers are delegated to children:
        localcloud moves itself to a leaf ``supervisor`` first, then enables them."""
        base = parent / self.owner
        base.mkdir(exist_ok=True)
        leaf = base / "supervisor"
        leaf.mkdir(exist_ok=True)
        (leaf / "cgroup.procs").write_text(f"{os.getpid()}\n")
        enabled = set(_read(parent / "cgroup.subtree_control").split())
        if not set(CONTROLLERS) <= enabled:
            with contextlib.suppress(OSError):  # others' processes may hold the parent
                (parent / "cgroup.subtree_control").write_text(
                    " ".join(f"+{c}" for c in CONTROLLERS)
                )
        (base / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in CONTROLLERS))
        self.bases = dict.fromkeys(CONTROLLERS, base)
        self.version = 2

    # -- use ------------------------------------------------------------------------------
    @property
    def enforced(self) -> bool:
        return bool(self.bases)

    def report(self) -> dict[str, object]:
        """For ``orch local status``: what is enforced and, if not, why and what is not."""
        if self.enforced:
            return {"cgroups": f"v{self.version}", "enforced": ["memory", "cpu", "pids"]}
        return {
            "cgroups": None,
            "enforced": [],
            "not_enforced": ["memory limit", "cpu limit", "process limit"],
            "why": self.problem,
        }

    def create(self, limits: Limits) -> InstanceCgroup | None:
        if not self.enforced:
            return None
        self._counter += 1
        name = f"i{self._counter}-{time.monotonic_ns() % 10**9}"
        dirs = {c: base / name for c, base in self.bases.items()}
        for path in set(dirs.values()):
            path.mkdir()
        group = InstanceCgroup(self.version, dirs, limits)
        try:
            self._limit(group)
        except OSError:
            group.remove(wait=0)
            raise
        return group

    def _limit(self, group: InstanceCgroup) -> None:
        limits = group.limits
        quota = max(int(limits.cpu * CPU_PERIOD_US), 1000)
        if group.version == 2:
            d = group.dirs["memory"]
            (d / "memory.max").write_text(str(limits.memory))
            with contextlib.suppress(OSError):
                (d / "memory.swap.max").write_text("0")
            (d / "memory.oom.group").write_text("1")
            (d / "cpu.max").write_text(f"{quota} {CPU_PERIOD_US}")
            (d / "pids.max").write_text(str(limits.pids))
            return
        mem = group.dirs["memory"]
        (mem / "memory.limit_in_bytes").write_text(str(limits.memory))
        if (mem / "memory.memsw.limit_in_bytes").exists():
            with contextlib.suppress(OSError):
                (mem / "memory.memsw.limit_in_bytes").write_text(str(limits.memory))
        cpu = group.dirs["cpu"]
        (cpu / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
        (cpu / "cpu.cfs_quota_us").write_text(str(quota))
        (group.dirs["pids"] / "pids.max").write_text(str(limits.pids))

    def close(self) -> None:
        """Remove this process's base directories (instances are gone by then)."""
        for base in set(self.bases.values()):
            with contextlib.suppress(OSError):
                for child in base.iterdir():
                    if child.is_dir() and child.name != "supervisor":
                        child.rmdir()
            if self.version == 1:
                with contextlib.suppress(OSError):
                    base.rmdir()

"""The seccomp filter that container runtimes apply by default, compiled for bubblewrap.

Cloud Run runs containers under gVisor, which exposes far fewer system calls than Linux;
the closest thing a Debian machine ships is the default profile of the OCI runtimes
(Docker's, maintained by the containers project): ``/usr/share/containers/seccomp.json``
from the Debian package ``golang-github-containers-common``. We do not keep a syscall
table of our own: this module reads that profile and compiles it with libseccomp (through
``pyseccomp``) into the BPF program that ``bwrap --seccomp FD`` loads.

The profile's rules are conditional on capabilities and architectures. Instances have no
capabilities at all, so rules that ``include`` a capability are left out and rules that
``exclude`` one apply, exactly what runc/crun do for a container with an empty capability
set.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

LOG = logging.getLogger(__name__)

PROFILE_PATHS = (
    Path("/usr/share/containers/seccomp.json"),  # golang-github-containers-common
    Path("/etc/containers/seccomp.json"),
)
PROFILE_PACKAGE = "golang-github-containers-common"

# The profile's names for architectures (Go's GOARCH), as ``includes.arches`` uses them.
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}


class SeccompUnavailable(Exception):
    """The default profile or libseccomp is missing; the message says what to install."""


def profile_path() -> Path | None:
    return next((p for p in PROFILE_PATHS if p.is_file()), None)


def _applies(rule: dict[str, Any], arch: str) -> bool:
    includes = rule.get("includes") or {}
    excludes = rule.get("excludes") or {}
    if includes.get("caps"):  # instances hold no capability
        return False
    if includes.get("arches") and arch not in includes["arches"]:
        return False
    if excludes.get("arches") and arch in excludes["arches"]:
        return False
    # minKernel needs a kernel-version check runc does; leaving the rule out only refuses more
    return not includes.get("minKernel")


def _action(sc: Any, name: str, errno_ret: int | None, default_errno: int) -> int:
    actions = {
        "SCMP_ACT_ALLOW": sc.ALLOW,
        "SCMP_ACT_KILL": sc.KILL,
        "SCMP_ACT_KILL_THREAD": sc.KILL,
        "SCMP_ACT_KILL_PROCESS": getattr(sc, "KILL_PROCESS", sc.KILL),
        "SCMP_ACT_LOG": getattr(sc, "LOG", sc.ALLOW),
    }
    if name == "SCMP_ACT_ERRNO":
        return int(sc.ERRNO(errno_ret if errno_ret is not None else default_errno))
    if name == "SCMP_ACT_TRACE":  # nobody traces: the kernel answers ENOSYS
        return int(sc.ERRNO(errno.ENOSYS))
    if name not in actions:
        raise SeccompUnavailable(f"the seccomp profile uses the unknown action {name}")
    return int(actions[name])


@functools.lru_cache(maxsize=1)
def compiled() -> bytes:
    """The BPF program for this machine's architecture (compiled once per process)."""
    path = profile_path()
    if path is None:
        raise SeccompUnavailable(
            "the container runtimes' default seccomp profile is missing: install the Debian "
            f"package {PROFILE_PACKAGE} (make deps)"
        )
    try:
        import pyseccomp as sc
    except (ImportError, RuntimeError) as exc:  # RuntimeError: libseccomp.so is missing
        raise SeccompUnavailable(f"libseccomp is not usable ({exc}): install libseccomp2") from exc
    profile = json.loads(path.read_text())
    machine = platform.machine()
    arch = _GOARCH.get(machine, machine)
    default_errno = int(profile.get("defaultErrnoRet") or errno.EPERM)
    default = _action(sc, profile["defaultAction"], profile.get("defaultErrnoRet"), default_errno)
    flt = sc.SyscallFilter(default)
    try:  # a binary tree instead of a list: every system call of the function pays for it
        flt.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    except Exception:  # libseccomp older than 2.5 has no such attribute
        LOG.debug("seccomp: libseccomp cannot build a binary tree; using its list")
    ops = {
        "SCMP_CMP_NE": sc.NE,
        "SCMP_CMP_LT": sc.LT,
        "SCMP_CMP_LE": sc.LE,
        "SCMP_CMP_EQ": sc.EQ,
        "SCMP_CMP_GE": sc.GE,
        "SCMP_CMP_GT": sc.GT,
        "SCMP_CMP_MASKED_EQ": sc.MASKED_EQ,
    }
    # 32-bit sub-architectures of the native one (x86 and x32 on x86_64), as runc adds them.
    for entry in profile.get("archMap") or []:
        if entry["architecture"] == f"SCMP_ARCH_{machine.upper()}":
            for sub in entry.get("subArchitectures") or []:
                value = getattr(sc.Arch, sub.removeprefix("SCMP_ARCH_"), None)
                if value is not None:
                    try:
                        flt.add_arch(value)
                    except Exception:  # an arch the kernel lacks is simply absent
                        LOG.debug("seccomp: sub-architecture %s not added", sub)
    skipped = 0
    for rule in profile.get("syscalls") or []:
        if not _applies(rule, arch):
            continue
        action = _action(sc, rule["action"], rule.get("errnoRet"), default_errno)
        if action == default:
            continue
        args = [
            sc.Arg(a["index"], ops[a["op"]], a["value"], a.get("valueTwo", 0))
            for a in rule.get("args") or []
        ]
        for name in rule.get("names") or []:
            try:
                flt.add_rule(action, name, *args)
            except Exception:  # a syscall this architecture does not have
                skipped += 1
    LOG.debug("seccomp: compiled %s (%d names unknown here)", path, skipped)
    with tempfile.TemporaryFile() as out:
        flt.export_bpf(out)
        out.seek(0)
        return out.read()


def memfd() -> int:
    """A fresh file descriptor holding the program, for ``bwrap --seccomp FD`` (caller closes)."""
    program = compiled()
    fd = os.memfd_create("localcloud-seccomp", 0)  # not close-on-exec: bwrap inherits it
    try:
        os.write(fd, program)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd

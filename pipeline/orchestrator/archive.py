"""Intake's look at a source archive: refuse a bad zip before a build is ever started.

Only the zip's central directory is read (names, types, declared sizes); nothing is
unpacked here. The builder unpacks later and checks again as it streams (a header can
lie), but a user learns about a zip-slip entry, a bomb or a missing ``main.py`` from the
``accepted`` status event within a second, not from a build log.
"""

from __future__ import annotations

import io
import stat
import zipfile
import zlib
from dataclasses import dataclass

MAX_ARCHIVE_BYTES = 100 * 1024 * 1024  # what intake downloads at most
MAX_UNPACKED_BYTES = 512 * 1024 * 1024
MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_ENTRIES = 20_000
MAX_RATIO = 100.0  # unpacked / packed, for entries (and totals) over RATIO_FLOOR
RATIO_FLOOR = 1 << 20


class ArchiveProblem(ValueError):
    """The archive cannot be deployed; the message names the entry and the rule."""


# What the zipfile module raises on a damaged or crafted archive besides BadZipFile (an
# unknown format version, an undecodable name, a truncated or corrupt stream).
DAMAGED = (
    zipfile.BadZipFile,
    NotImplementedError,
    UnicodeDecodeError,
    ValueError,
    IndexError,
    EOFError,
    OSError,
    zlib.error,
)


@dataclass(frozen=True)
class Contents:
    files: frozenset[str]
    unpacked_bytes: int


def _name_problem(name: str) -> str | None:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path; entries must be relative to the archive root"
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return "climbs out of the archive root with '..'"
    if "\x00" in name:
        return "has a NUL byte in its name"
    return None


def inspect(data: bytes) -> Contents:
    """Check ``data`` is a zip a function can be built from; raise ArchiveProblem if not."""
    try:
        return _inspect(data)
    except ArchiveProblem:
        raise
    except DAMAGED as exc:
        raise ArchiveProblem(f"the zip archive is damaged: {type(exc).__name__}: {exc}") from None


def _inspect(data: bytes) -> Contents:
    if len(data) > MAX_ARCHIVE_BYTES:
        raise ArchiveProblem(
            f"the archive is {len(data)} bytes; the limit is {MAX_ARCHIVE_BYTES} bytes"
        )
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ArchiveProblem(f"the source is not a valid zip archive: {exc}") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:
            raise ArchiveProblem(
                f"the archive has {len(infos)} entries; the limit is {MAX_ENTRIES}"
            )
        files: set[str] = set()
        total = 0
        for info in infos:
            name = info.filename
            problem = _name_problem(name)
            if problem:
                raise ArchiveProblem(f"entry {name!r} {problem}")
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveProblem(
                    f"entry {name!r} is a symbolic link; links are not allowed in sources"
                )
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise ArchiveProblem(f"entry {name!r} is not a regular file or directory")
            if info.flag_bits & 0x1:
                raise ArchiveProblem(f"entry {name!r} is encrypted")
            if info.is_dir():
                continue
            if name in files:
                raise ArchiveProblem(f"entry {name!r} appears more than once")
            if info.file_size > MAX_FILE_BYTES:
                raise ArchiveProblem(
                    f"entry {name!r} unpacks to {info.file_size} bytes; the limit for one "
                    f"file is {MAX_FILE_BYTES}"
                )
            if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(
                info.compress_size, 1
            ):
                raise ArchiveProblem(
                    f"entry {name!r} unpacks {info.compress_size} bytes to {info.file_size}, "
                    f"over {MAX_RATIO:g}x: a zip bomb?"
                )
            total += info.file_size
            files.add(name)
        if total > MAX_UNPACKED_BYTES:
            raise ArchiveProblem(
                f"the archive unpacks to {total} bytes; the limit is {MAX_UNPACKED_BYTES}"
            )
        if total > RATIO_FLOOR and total > MAX_RATIO * max(len(data), 1):
            raise ArchiveProblem(
                f"the archive unpacks {len(data)} bytes to {total}, over {MAX_RATIO:g}x: "
                "a zip bomb?"
            )
    if "main.py" not in files:
        roots = {f.split("/", 1)[0] for f in files if "/" in f}
        hint = ""
        if len(roots) == 1 and f"{next(iter(roots))}/main.py" in files:
            hint = (
                f" (it is under {next(iter(roots))}/: zip the directory's contents, "
                "not the directory)"
            )
        raise ArchiveProblem(f"the archive has no main.py at its root{hint}")
    return Contents(frozenset(files), total)

"""Source archives for Cloud Build: refuse a bad .zip or .tar.gz before anything is unpacked.

A function's source archive comes from a user's bucket, so it is untrusted input. Every entry
is checked from the archive's own directory (names, types, links, declared sizes) before a
single byte is written; extraction then streams each entry through a byte counter, because a
header can lie. A refusal is an ``ArchiveError`` whose ``code`` says why and whose message
names the entry, so the build log tells the user what to fix.
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

CHUNK = 1 << 16
RATIO_FLOOR = 1 << 20  # below this many unpacked bytes any compression ratio is harmless
MAX_LINK_TARGET = 4096  # PATH_MAX: a longer zip "symlink" cannot be a real one
MAX_TAR_HEADER = 1 << 20  # tarfile reads pax and GNU long-name headers into memory whole
MAX_LINK_HOPS = 40  # the kernel's own limit on symlinks followed in one lookup
ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_TAR_META = {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE}
_TAR_META |= {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
_DRIVE = re.compile(r"[A-Za-z]:")
# What the stdlib readers raise on a damaged archive; to the user all of them mean "corrupt".
_READ_ERRORS: tuple[type[Exception], ...] = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    OSError,
    zlib.error,
    lzma.LZMAError,
    struct.error,
    NotImplementedError,
    ValueError,
)

# Every refusal of one entry: (code, what is wrong with it). Fields are filled in per call.
_WHY = {
    "absolute": ("absolute_path", "has an absolute path; entries must be relative to the root"),
    "climbs": ("path_traversal", "climbs out of the archive root with '..'"),
    "is_root": ("path_traversal", "names the archive root itself, not a file inside it"),
    "via_link": ("path_traversal", "would be written through the symlink {link}"),
    "link_abs": ("link_outside", "is a symlink to {target}; only relative links are allowed"),
    "link_out": ("link_outside", "is a symlink to {target}, which is outside the archive root"),
    "link_loop": ("link_outside", "is part of a symlink loop"),
    "hardlink": ("link_outside", "is a hard link to {target}, not to an earlier file in it"),
    "special": ("special_file", "is a {what}; only files, directories and symlinks are allowed"),
    "file_size": ("too_large", "unpacks to {size} bytes; the limit for one file is {limit}"),
    "total": ("too_large", "takes the unpacked total over the limit of {limit} bytes"),
    "meta": ("too_large", "is a {size}-byte tar extension header; refusing to read it"),
    "overflow": ("too_large", "unpacks to more than the {size} bytes its header declares"),
    "ratio": (
        "compression_ratio",
        "unpacks {packed} bytes to {size}, over {ratio:g}x: a zip bomb?",
    ),
    "total_ratio": ("compression_ratio", "takes the archive past {ratio:g}x its size: a bomb?"),
    "duplicate": ("duplicate_entry", "appears more than once"),
    "not_dir": ("duplicate_entry", "needs {parent} to be a directory, but it is a file"),
    "encrypted": ("encrypted", "is encrypted; upload the archive without a password"),
    "method": ("corrupt", "uses compression method {method}, which cannot be unpacked"),
    "long_link": ("corrupt", "is a symlink with an over-long target"),
    "short": ("corrupt", "unpacks to {got} bytes but its header declares {size}"),
    "damaged": ("corrupt", "is damaged: {error}"),
}


class ArchiveError(ValueError):
    """Why an archive was refused; str() is a message a person can act on, naming the entry."""

    def __init__(self, code: str, message: str, entry: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.entry = entry


def _refuse(why: str, entry: str, **facts: object) -> ArchiveError:
    code, text = _WHY[why]
    return ArchiveError(code, f"entry {_show(entry)} {text.format(**facts)}", entry)


def _show(name: str) -> str:
    """Quotes a name for a message: control characters escaped, very long names cut."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)
    return f"'{text[:200]}...'" if len(text) > 200 else f"'{text}'"


@dataclass(frozen=True)
class Limits:
    max_entries: int = 10_000
    max_total_bytes: int = 512 * 1024 * 1024  # total unpacked size
    max_file_bytes: int = 256 * 1024 * 1024
    max_ratio: float = 100.0  # unpacked / packed, per entry and overall (zip bomb)


@dataclass(frozen=True)
class Member:
    """One entry as it will be unpacked.

    ``mode`` is the normalized mode extract() applies (0o644/0o755 files, 0o755 dirs, 0o777
    symlinks), so layers built later are reproducible. A tar hard link is a ``file`` whose
    ``link_target`` names the earlier member it copies.
    """

    name: str
    size: int
    kind: Literal["file", "dir", "symlink"]
    mode: int
    link_target: str | None = None


def detect(data_or_path: bytes | bytearray | memoryview | str | os.PathLike[str]) -> str:
    """Returns "zip" or "tar.gz" from magic bytes: an upload's file name proves nothing."""
    if isinstance(data_or_path, bytes | bytearray | memoryview):
        head, label = bytes(data_or_path[:262]), "the data"
    else:
        with open(data_or_path, "rb") as f:
            head, label = f.read(262), Path(data_or_path).name
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    why = "it is empty" if not head else "it starts with neither zip nor gzip magic bytes"
    if head[257:262] == b"ustar":
        why = "it is an uncompressed tar; gzip it"
    raise ArchiveError("not_an_archive", f"{label} is not a .zip or .tar.gz archive: {why}", label)


def _normalize(raw: str) -> str:
    """The entry's clean posix path under the root ('' is the root); refuses escapes."""
    text = raw.replace("\\", "/")  # zips made on Windows use backslashes as separators
    if text.startswith("/") or _DRIVE.match(text):
        raise _refuse("absolute", raw)
    parts: list[str] = []
    for part in text.split("/"):
        if part == "..":
            if not parts:
                raise _refuse("climbs", raw)
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts)


def _symlink(name: str, raw: str, target: str) -> Member:
    """A symlink member; where it leads is judged once every entry is known."""
    target = target.replace("\\", "/")
    if not target or target.startswith("/") or _DRIVE.match(target):
        raise _refuse("link_abs", raw, target=_show(target))
    return Member(name, len(target), "symlink", 0o777, target)


def _file_mode(mode: int) -> int:
    return 0o755 if mode & 0o111 else 0o644


class _Budget:
    """Running total of declared unpacked bytes against the limits, entry by entry."""

    def __init__(self, limits: Limits, archive_bytes: int) -> None:
        self.limits, self.archive_bytes, self.total = limits, archive_bytes, 0

    def add(self, raw: str, size: int, packed: int | None = None) -> None:
        lim = self.limits
        if size > lim.max_file_bytes:
            raise _refuse("file_size", raw, size=size, limit=lim.max_file_bytes)
        if packed is not None and size > RATIO_FLOOR and size > lim.max_ratio * packed:
            raise _refuse("ratio", raw, packed=packed, size=size, ratio=lim.max_ratio)
        self.total += size
        if self.total > lim.max_total_bytes:
            raise _refuse("total", raw, limit=lim.max_total_bytes)
        if self.total > RATIO_FLOOR and self.total > lim.max_ratio * self.archive_bytes:
            raise _refuse("total_ratio", raw, ratio=lim.max_ratio)


class _GuardedTarInfo(tarfile.TarInfo):
    """Refuses oversized pax / GNU long-name headers, which tarfile would read into memory."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _TAR_META and self.size > MAX_TAR_HEADER:
            raise _refuse("meta", self.name, size=self.size)
        return super()._proc_member(tarfile_)  # type: ignore[misc]  # private, not in typeshed


Handle = zipfile.ZipInfo | tarfile.TarInfo


class _Reader:
    """One open archive, fully checked on construction, that can stream each entry's bytes."""

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path, self.limits = Path(path), limits
        fmt = detect(self.path)
        self.budget = _Budget(limits, max(self.path.stat().st_size, 1))
        self.arc: zipfile.ZipFile | tarfile.TarFile | None = None
        try:
            if fmt == "zip":
                self.arc = zipfile.ZipFile(self.path)
                self.entries = self._scan_zip(self.arc)
            else:
                self.arc = tarfile.open(self.path, "r:gz", tarinfo=_GuardedTarInfo)  # noqa: SIM115
                self.entries = self._scan_tar(self.arc)
            _cross_check([m for m, _ in self.entries])
        except BaseException as e:
            self.close()
            if isinstance(e, _READ_ERRORS) and not isinstance(e, ArchiveError):
                msg = f"{self.path.name} is a damaged {fmt} archive: {e}"
                raise ArchiveError("corrupt", msg, self.path.name) from e
            raise

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.arc is not None:
            self.arc.close()

    def _too_many(self, count: str) -> ArchiveError:
        msg = f"{self.path.name} has {count} entries; the limit is {self.limits.max_entries}"
        return ArchiveError("too_many_entries", msg, self.path.name)

    def _scan_zip(self, zf: zipfile.ZipFile) -> list[tuple[Member, Handle]]:
        infos = zf.infolist()
        if len(infos) > self.limits.max_entries:
            raise self._too_many(str(len(infos)))
        out: list[tuple[Member, Handle]] = []
        for info in infos:
            raw, unix = info.filename, info.external_attr >> 16
            ftype, name = stat.S_IFMT(unix), _normalize(raw)
            if info.flag_bits & 0x1:
                raise _refuse("encrypted", raw)
            if info.compress_type not in ZIP_METHODS:
                raise _refuse("method", raw, method=info.compress_type)
            if raw.endswith(("/", "\\")) or ftype == stat.S_IFDIR:
                member = Member(name, 0, "dir", 0o755)
            elif ftype == stat.S_IFLNK:  # unix zips store the link target as the content
                if info.file_size > MAX_LINK_TARGET:
                    raise _refuse("long_link", raw)
                try:
                    target = os.fsdecode(zf.read(info))
                except _READ_ERRORS as e:
                    raise _refuse("damaged", raw, error=e) from e
                member = _symlink(name, raw, target)
            elif ftype not in (0, stat.S_IFREG):
                raise _refuse("special", raw, what="device, FIFO or socket")
            else:
                self.budget.add(raw, info.file_size, info.compress_size)
                member = Member(name, info.file_size, "file", _file_mode(unix))
            out.append((_named(member, raw), info))
        return out

    def _scan_tar(self, tf: tarfile.TarFile) -> list[tuple[Member, Handle]]:
        out: list[tuple[Member, Handle]] = []
        files: dict[str, Member] = {}
        while (ti := tf.next()) is not None:
            if len(out) >= self.limits.max_entries:  # stop early: never walk a million headers
                raise self._too_many(f"more than {self.limits.max_entries}")
            raw = ti.name
            name = _normalize(raw)
            if ti.isdir():
                member = Member(name, 0, "dir", 0o755)
            elif ti.issym():
                member = _symlink(name, raw, ti.linkname)
            elif ti.islnk():  # tar names the target from the root, and it must come earlier
                target = ti.linkname.replace("\\", "/")
                source = files.get("/".join(p for p in target.split("/") if p not in ("", ".")))
                if source is None:
                    raise _refuse("hardlink", raw, target=_show(ti.linkname))
                self.budget.add(raw, source.size)
                member = Member(name, source.size, "file", _file_mode(ti.mode), source.name)
            elif ti.isreg():
                self.budget.add(raw, ti.size)
                member = Member(name, ti.size, "file", _file_mode(ti.mode))
            else:
                what = "device" if ti.ischr() or ti.isblk() else "FIFO" if ti.isfifo() else "entry"
                raise _refuse("special", raw, what=f"{what} (tar type {ti.type!r})")
            out.append((_named(member, raw), ti))
            if member.kind == "file":
                files[name] = member
        return out

    def open(self, handle: Handle) -> IO[bytes]:
        if isinstance(self.arc, zipfile.ZipFile):
            assert isinstance(handle, zipfile.ZipInfo)
            return self.arc.open(handle)
        assert isinstance(self.arc, tarfile.TarFile) and isinstance(handle, tarfile.TarInfo)
        src = self.arc.extractfile(handle)
        assert src is not None
        return src


def _named(member: Member, raw: str) -> Member:
    """Refuses a non-directory whose name is the root itself (``a/..``, ``.``)."""
    if not member.name and member.kind != "dir":
        raise _refuse("is_root", raw)
    return member


def _cross_check(members: list[Member]) -> None:
    """Checks that need every entry: duplicates, files used as dirs, and where symlinks lead."""
    seen: dict[str, Member] = {}
    for m in members:
        prev = seen.get(m.name)
        if prev is not None and not prev.kind == m.kind == "dir":
            raise _refuse("duplicate", m.name)
        seen[m.name] = m
    for m in members:
        parts = m.name.split("/")
        for i in range(1, len(parts)):
            above = seen.get("/".join(parts[:i]))
            if above is not None and above.kind == "symlink":
                raise _refuse("via_link", m.name, link=_show(above.name))
            if above is not None and above.kind == "file":
                raise _refuse("not_dir", m.name, parent=_show(above.name))
    links = {m.name: m.link_target or "" for m in members if m.kind == "symlink"}
    for name in links:
        _follow(name, links)


def _follow(link: str, links: dict[str, str]) -> None:
    """Resolves ``link`` as the kernel will once unpacked, following links through links."""
    stack = link.split("/")[:-1]
    todo = deque(links[link].split("/"))
    hops = 0
    while todo:
        part = todo.popleft()
        if part == "..":
            if not stack:
                raise _refuse("link_out", link, target=_show(links[link]))
            stack.pop()
        elif part not in ("", "."):
            stack.append(part)
            target = links.get("/".join(stack))
            if target is not None:
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise _refuse("link_loop", link)
                stack.pop()
                todo.extendleft(reversed(target.split("/")))


def check(path: Path, limits: Limits = Limits()) -> list[Member]:
    """Validates the whole archive from its directory without extracting; members in order.

    Entries for the root directory itself (``./``) are harmless and left out.
    """
    with _Reader(path, limits) as reader:
        return [m for m, _ in reader.entries if m.name]


def extract(path: Path, dest: Path, limits: Limits = Limits()) -> list[Member]:
    """check(), then unpack into ``dest`` (empty or absent); on any failure ``dest`` is emptied."""
    dest = Path(dest)
    if os.path.lexists(dest) and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest} must be an empty directory or not exist")
    created = None  # the outermost directory this call creates, removed again on failure
    for folder in (dest, *dest.parents):
        if os.path.lexists(folder):
            break
        created = folder
    with _Reader(path, limits) as reader:
        dest.mkdir(parents=True, exist_ok=True)
        try:
            _write(reader, dest)
        except BaseException:
            _clear(dest, created)
            raise
        return [m for m, _ in reader.entries if m.name]


def _write(reader: _Reader, dest: Path) -> None:
    """Unpacks checked entries. Symlinks come last so no file is ever written through one."""
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | nofollow | getattr(os, "O_BINARY", 0)
    for m, handle in reader.entries:
        target = dest.joinpath(*m.name.split("/")) if m.name else dest
        if m.kind == "dir":
            target.mkdir(parents=True, exist_ok=True)
        elif m.kind == "file":
            target.parent.mkdir(parents=True, exist_ok=True)
            # A tar hard link copies the file already unpacked rather than rewinding the stream.
            src = reader.open(handle) if m.link_target is None else _read_own(dest / m.link_target)
            with src, open(os.open(target, flags, 0o600), "wb") as out:
                _copy(src, out, m.name, m.size)
            os.chmod(target, m.mode)
    for m, _ in reader.entries:
        if m.kind == "symlink":
            target = dest.joinpath(*m.name.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(m.link_target or "", target)
    for root, dirs, files in os.walk(dest, topdown=False):
        for name in dirs + files:
            p = os.path.join(root, name)
            if not os.path.islink(p) and os.path.isdir(p):
                os.chmod(p, 0o755)
            os.utime(p, (0, 0), follow_symlinks=False)
    os.utime(dest, (0, 0))


def _read_own(path: Path) -> IO[bytes]:
    return open(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb")


def _copy(src: IO[bytes], out: IO[bytes], name: str, declared: int) -> int:
    """Copies one entry trusting the bytes that arrive, not the header that announced them.

    Declared sizes already passed the limits, so holding each entry to its declared size also
    holds the actual per-file and total bytes to the limits.
    """
    written = 0
    while True:
        try:
            chunk = src.read(CHUNK)
        except _READ_ERRORS as e:
            raise _refuse("damaged", name, error=e) from e
        if not chunk:
            break
        written += len(chunk)
        if written > declared:
            raise _refuse("overflow", name, size=declared)
        out.write(chunk)
    if written != declared:
        raise _refuse("short", name, got=written, size=declared)
    return written


def _clear(dest: Path, created: Path | None) -> None:
    """Undoes a failed extraction: ``dest`` (and parents made for it) absent again, or empty."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def strip_common_root(dest: Path) -> Path:
    """The single top-level directory of a GitHub-style zip (``repo-main/``), else ``dest``."""
    children = list(Path(dest).iterdir())
    if len(children) == 1 and children[0].is_dir() and not children[0].is_symlink():
        return children[0]
    return Path(dest)

"""Intake's look at a source archive: refuse a bad zip before a build is ever started.

Only the zip's central directory is read (names, types, declared sizes), and for a Node.js
source its ``package.json``, at most :data:`MAX_PACKAGE_JSON_BYTES` of it; nothing is
unpacked here. The builder unpacks later and checks again as it streams (a header can
lie), but a user learns about a zip-slip entry, a bomb, a missing ``main.py`` or a
``package.json`` that is not JSON from the ``accepted`` status event within a second, not
from a build log.

``node_modules/`` is checked like every other entry: the build is given the uploaded
object as it is, and the builder unpacks all of it before Google's Node.js buildpack
deletes ``node_modules`` and installs the dependencies ``package.json`` names
(https://github.com/GoogleCloudPlatform/buildpacks, ``cmd/nodejs/npm``: ``RemoveAll``
unless ``GOOGLE_VENDOR_NPM_DEPENDENCIES``). So a link or a bomb in it is refused, with a
hint to leave it out; what it holds never counts as the function (its main file cannot
be there).
"""

from __future__ import annotations

import io
import posixpath
import stat
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

from orchestrator import runtimes
from orchestrator.bounds import InputTooComplex, clip, loads_json

MAX_ARCHIVE_BYTES = 100 * 1024 * 1024  # what intake downloads at most
MAX_UNPACKED_BYTES = 512 * 1024 * 1024
MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_ENTRIES = 20_000
MAX_RATIO = 100.0  # unpacked / packed, for entries (and totals) over RATIO_FLOOR
RATIO_FLOOR = 1 << 20
# npm's own package.json files are a few KB; a megabyte leaves room for any real one and
# still bounds what the intake parses.
MAX_PACKAGE_JSON_BYTES = 1024 * 1024
NODE_MODULES = "node_modules"
NODE_EXTENSIONS = (".js", ".json", ".node")  # what require() tries after the bare path
INDEX_FILES = tuple(f"index{ext}" for ext in NODE_EXTENSIONS)
NODE_MODULES_HINT = (
    " (node_modules/ need not be uploaded: the build installs what package.json names and "
    "replaces it, as Google's builder does; leave it out of the zip)"
)


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

    @property
    def languages(self) -> frozenset[str]:
        """The languages whose entry file is at the root (``main.py``, ``package.json``)."""
        return frozenset(
            lang for lang, entry in runtimes.ENTRY_FILES.items() if entry in self.files
        )


def _in_node_modules(name: str) -> bool:
    return name.replace("\\", "/").split("/", 1)[0] == NODE_MODULES


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
            modules = any(_in_node_modules(info.filename) for info in infos)
            raise ArchiveProblem(
                f"the archive has {len(infos)} entries; the limit is {MAX_ENTRIES}"
                + (NODE_MODULES_HINT if modules else "")
            )
        files: set[str] = set()
        total = 0
        for info in infos:
            try:
                total += _check_entry(info, files)
            except ArchiveProblem as exc:
                hint = NODE_MODULES_HINT if _in_node_modules(info.filename) else ""
                raise ArchiveProblem(f"{exc}{hint}") from None
        hint = NODE_MODULES_HINT if any(map(_in_node_modules, files)) else ""
        if total > MAX_UNPACKED_BYTES:
            raise ArchiveProblem(
                f"the archive unpacks to {total} bytes; the limit is {MAX_UNPACKED_BYTES}{hint}"
            )
        if total > RATIO_FLOOR and total > MAX_RATIO * max(len(data), 1):
            raise ArchiveProblem(
                f"the archive unpacks {len(data)} bytes to {total}, over {MAX_RATIO:g}x: "
                f"a zip bomb?{hint}"
            )
    contents = Contents(frozenset(files), total)
    if not contents.languages:
        entries = " or ".join(runtimes.ENTRY_FILES.values())
        roots = {f.split("/", 1)[0] for f in files if "/" in f and not _in_node_modules(f)}
        hint = ""
        if len(roots) == 1 and any(
            f"{next(iter(roots))}/{entry}" in files for entry in runtimes.ENTRY_FILES.values()
        ):
            hint = (
                f" (it is under {next(iter(roots))}/: zip the directory's contents, "
                "not the directory)"
            )
        raise ArchiveProblem(
            f"the archive has no {entries} at its root: a function is main.py (Python) or "
            f"package.json and the file it names (Node.js){hint}"
        )
    return contents


def _check_entry(info: zipfile.ZipInfo, files: set[str]) -> int:
    """Check one entry from its directory record; the bytes it adds (0 for a directory)."""
    name = info.filename
    problem = _name_problem(name)
    if problem:
        raise ArchiveProblem(f"entry {name!r} {problem}")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ArchiveProblem(f"entry {name!r} is a symbolic link; links are not allowed in sources")
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ArchiveProblem(f"entry {name!r} is not a regular file or directory")
    if info.flag_bits & 0x1:
        raise ArchiveProblem(f"entry {name!r} is encrypted")
    if info.is_dir():
        return 0
    if name in files:
        raise ArchiveProblem(f"entry {name!r} appears more than once")
    if info.file_size > MAX_FILE_BYTES:
        raise ArchiveProblem(
            f"entry {name!r} unpacks to {info.file_size} bytes; the limit for one "
            f"file is {MAX_FILE_BYTES}"
        )
    if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise ArchiveProblem(
            f"entry {name!r} unpacks {info.compress_size} bytes to {info.file_size}, "
            f"over {MAX_RATIO:g}x: a zip bomb?"
        )
    files.add(name)
    return info.file_size


def read_package_json(data: bytes) -> dict[str, Any]:
    """The archive's root ``package.json``, parsed within its bounds: a JSON object, or
    ArchiveProblem saying what it is instead (npm refuses the same files)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            info = archive.getinfo(runtimes.ENTRY_FILES[runtimes.NODEJS])
            if info.file_size > MAX_PACKAGE_JSON_BYTES:
                raise ArchiveProblem(
                    f"package.json is {info.file_size:,} bytes; the limit is "
                    f"{MAX_PACKAGE_JSON_BYTES:,}"
                )
            with archive.open(info) as member:
                raw = member.read(MAX_PACKAGE_JSON_BYTES + 1)
    except KeyError:
        raise ArchiveProblem("the archive has no package.json at its root") from None
    except ArchiveProblem:
        raise
    except (*DAMAGED, RuntimeError) as exc:
        raise ArchiveProblem(f"package.json cannot be read from the archive: {exc}") from None
    try:  # npm reads it as UTF-8, a byte order mark stripped (json.loads would take UTF-16)
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ArchiveProblem(f"package.json is not valid JSON: not UTF-8 text ({exc})") from None
    try:
        package = loads_json(text, "package.json", MAX_PACKAGE_JSON_BYTES)
    except InputTooComplex as exc:
        raise ArchiveProblem(str(exc)) from None
    except ValueError as exc:
        raise ArchiveProblem(f"package.json is not valid JSON: {exc}") from None
    if not isinstance(package, dict):
        raise ArchiveProblem(
            f"package.json is a JSON {_json_type(package)}, not an object: npm reads its "
            'fields ("main", "dependencies") from an object'
        )
    return package


def _json_type(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def node_main(contents: Contents, package: dict[str, Any]) -> str:
    """The file a Node.js source's ``main`` resolves to, as Node.js resolves it
    (https://nodejs.org/api/modules.html#all-together: the path, then with ``.js``,
    ``.json``, ``.node``, then as a directory's ``index`` file); the root's ``index.js``
    when there is no ``main`` (https://docs.npmjs.com/cli/v10/configuring-npm/package-json#main).
    ArchiveProblem when that file is not in the archive, or not where the build keeps it."""
    if "main" not in package:
        for candidate in INDEX_FILES:
            if candidate in contents.files:
                return candidate
        raise ArchiveProblem(
            "the archive has no index.js at its root, the main file of a package.json without "
            '"main": add it, or name the function\'s file in "main"'
        )
    main = package["main"]
    if not isinstance(main, str) or not main.strip():
        raise ArchiveProblem(
            f'package.json: "main" is {clip(repr(main), 80)}; it must name the function\'s '
            'file, such as "index.js"'
        )
    path = posixpath.normpath(main.strip().replace("\\", "/"))
    problem = _name_problem(path)
    if problem:
        raise ArchiveProblem(f'package.json: "main" {main!r} {problem}')
    if _in_node_modules(path):
        raise ArchiveProblem(
            f'package.json: "main" {main!r} is under node_modules/, which the build replaces '
            "with the dependencies package.json names"
        )
    base = "" if path == "." else path
    candidates = [base, *(base + ext for ext in NODE_EXTENSIONS)] if base else []
    candidates += [posixpath.join(base, index) for index in INDEX_FILES]
    for candidate in candidates:
        if candidate in contents.files:
            return candidate
    raise ArchiveProblem(
        f'package.json names {main!r} as its "main" file, but the archive has no such file '
        f"(looked for {', '.join(candidates)})"
    )

"""Pack a function's directory into a zip the same way every time.

The archive is deterministic: entries sorted by path, every timestamp fixed (1980-01-01,
the zip epoch), permissions normalised (0644, or 0755 for executables), one compression
level. The same tree gives the same bytes, so an unchanged function uploads an identical
object.

What is left out follows ``gcloud``'s ``.gcloudignore``
(https://cloud.google.com/sdk/gcloud/reference/topic/gcloudignore): gitignore syntax
(``#`` comments, ``!`` negation, a trailing ``/`` for directories, a ``/`` inside a pattern
anchors it to the directory, ``*``, ``?``, ``[...]`` and ``**``), a file inside an ignored
directory cannot be re-included, and ``#!include:FILE`` inserts another file's patterns
(``#!include:.gitignore`` is the usual one). Without a ``.gcloudignore``, gcloud's default
applies: ``.gcloudignore``, ``.git``, ``.gitignore`` and, when there is one, the
``.gitignore``'s patterns. ``.git``, ``__pycache__`` and ``.venv`` directories are always
left out.
"""

from __future__ import annotations

import io
import os
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

IGNORE_FILE = ".gcloudignore"
ALWAYS_SKIPPED = frozenset({".git", "__pycache__", ".venv"})
DEFAULT_PATTERNS = (".gcloudignore", ".git", ".gitignore", "#!include:.gitignore")
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
INCLUDE_DIRECTIVE = "#!include:"


class PackingError(ValueError):
    """The directory cannot be packed (missing, empty after ignores, bad include)."""


@dataclass(frozen=True)
class Rule:
    """One gitignore pattern, compiled."""

    pattern: str
    regex: re.Pattern[str]
    negated: bool
    directory_only: bool

    def matches(self, path: str, is_dir: bool) -> bool:
        if self.directory_only and not is_dir:
            return False
        return self.regex.fullmatch(path) is not None


def _translate_glob(glob: str) -> str:
    """A gitignore glob (no leading or trailing slash) as a regex over ``/``-joined paths."""
    out: list[str] = []
    i, n = 0, len(glob)
    while i < n:
        c = glob[i]
        if c == "*":
            if glob.startswith("**", i):
                before_ok = i == 0 or glob[i - 1] == "/"
                after = glob[i + 2 : i + 3]
                if before_ok and after == "/":  # "**/": zero or more directories
                    out.append("(?:.*/)?")
                    i += 3
                    continue
                if before_ok and i + 2 == n:  # trailing "/**" (or a bare "**"): everything
                    out.append(".*")
                    i += 2
                    continue
                out.append("[^/]*")  # "**" elsewhere is just "*"
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = glob.find("]", i + 2 if glob[i + 1 : i + 2] in ("!", "^", "]") else i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = glob[i + 1 : end]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\").replace("/", "") + "]")
                i = end
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(glob[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def compile_pattern(line: str) -> Rule | None:
    """One line of a .gcloudignore/.gitignore; None for blanks and comments."""
    text = line.rstrip("\n").rstrip("\r")
    # Trailing spaces are ignored unless escaped with a backslash.
    stripped = text.rstrip(" ")
    if stripped.endswith("\\") and len(stripped) < len(text):
        stripped += " "
    text = stripped
    if not text or text.startswith("#"):
        return None
    negated = text.startswith("!")
    if negated or text.startswith(("\\!", "\\#")):
        text = text[1:]
    directory_only = text.endswith("/")
    text = text.rstrip("/")
    if not text:
        return None
    anchored = "/" in text
    text = text.lstrip("/")
    body = _translate_glob(text)
    regex = body if anchored else f"(?:.*/)?{body}"
    return Rule(line.strip(), re.compile(regex, re.DOTALL), negated, directory_only)


class IgnoreRules:
    """The ordered rules of one directory's .gcloudignore (the last match decides)."""

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules

    @classmethod
    def parse(cls, text: str, root: Path | None = None, _seen: frozenset[str] = frozenset()):
        rules: list[Rule] = []
        for line in text.splitlines():
            if line.startswith(INCLUDE_DIRECTIVE):
                name = line[len(INCLUDE_DIRECTIVE) :].strip()
                if root is None or not name:
                    continue
                if "/" in name or name in _seen:
                    # gcloud only includes files next to the .gcloudignore, once.
                    raise PackingError(
                        f"{IGNORE_FILE}: cannot include {name!r}: only a file in the same "
                        "directory can be included, once"
                    )
                included = root / name
                if included.is_file():
                    rules.extend(
                        cls.parse(included.read_text(errors="replace"), root, _seen | {name}).rules
                    )
                continue
            rule = compile_pattern(line)
            if rule is not None:
                rules.append(rule)
        return cls(rules)

    @classmethod
    def for_directory(cls, root: Path) -> IgnoreRules:
        ignore_file = root / IGNORE_FILE
        if ignore_file.is_file():
            return cls.parse(ignore_file.read_text(errors="replace"), root)
        return cls.parse("\n".join(DEFAULT_PATTERNS), root)

    def ignored(self, path: str, is_dir: bool) -> bool:
        """Whether ``path`` (relative, ``/``-separated) is ignored by these rules alone."""
        result = False
        for rule in self.rules:
            if rule.matches(path, is_dir):
                result = not rule.negated
        return result


def list_files(root: Path) -> list[tuple[str, Path]]:
    """``(archive name, path)`` of every file to pack, sorted by archive name."""
    root = Path(root)
    if not root.is_dir():
        raise PackingError(f"{root} is not a directory")
    rules = IgnoreRules.for_directory(root)
    found: list[tuple[str, Path]] = []
    for current, dirs, files in os.walk(root, followlinks=False):
        base = Path(current)
        rel_base = base.relative_to(root).as_posix()
        prefix = "" if rel_base == "." else rel_base + "/"
        kept_dirs = []
        for name in dirs:
            path = base / name
            if name in ALWAYS_SKIPPED or path.is_symlink():
                continue  # directory symlinks could loop or leave the tree
            if not rules.ignored(prefix + name, True):
                kept_dirs.append(name)
        dirs[:] = sorted(kept_dirs)  # an ignored directory is not entered: no re-includes
        for name in files:
            path = base / name
            if not path.is_file():  # broken symlinks, sockets, fifos
                continue
            if not rules.ignored(prefix + name, False):
                found.append((prefix + name, path))
    return sorted(found)


def zip_directory(root: Path) -> bytes:
    """The deterministic zip of ``root`` (see the module's docstring)."""
    files = list_files(root)
    if not files:
        raise PackingError(f"nothing to pack in {root}: every file is ignored or it is empty")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for name, path in files:
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            mode = 0o755 if os.stat(path).st_mode & stat.S_IXUSR else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.create_system = 3  # Unix, whatever the packing host
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes(), compresslevel=6)
    return buffer.getvalue()


def pack(path: Path) -> tuple[bytes, str]:
    """``(zip bytes, archive base name)`` for a directory or an existing ``.zip`` file."""
    path = Path(path)
    if path.is_dir():
        return zip_directory(path), path.resolve().name
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise PackingError(f"{path} is neither a directory nor a zip archive")
        name = path.name[: -len(".zip")] if path.name.lower().endswith(".zip") else path.stem
        return path.read_bytes(), name
    raise PackingError(f"{path} does not exist")

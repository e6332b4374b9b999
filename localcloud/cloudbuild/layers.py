"""Reproducible OCI layers: the same tree always gives the same digest.

Entries are sorted, owners cleared, modification times zeroed, modes normalized (0755 for
directories and executables, 0644 otherwise) and gzip's own header timestamp fixed, so a
layer's digest depends only on the files' names and contents.

Byte code is left out unless the caller says it compiled the tree itself
(``bytecode=True``, see ``bytecode.py``): a ``.pyc`` written by an import or by pip embeds its
source's modification time, so it would make the digest depend on when the tree was
unpacked. With ``bytecode=True`` the ``__pycache__`` directories go in (their hash-based
``.pyc`` depend only on the source); ``.pyc`` files outside them never do, since Python
would import such a file even without its source.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, BinaryIO, cast

OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
SKIP_DIRS = frozenset({"__pycache__", ".git"})
PYCACHE = "__pycache__"


@dataclass(frozen=True)
class Layer:
    path: str  # the .tar.gz file
    digest: str  # sha256 of the compressed blob
    diff_id: str  # sha256 of the uncompressed tar (the config's rootfs.diff_ids)
    size: int
    description: str

    def save(self, meta: Path) -> None:
        meta.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, meta: Path) -> Layer:
        return cls(**json.loads(meta.read_text()))


class _Hashing:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, target: BinaryIO | gzip.GzipFile) -> None:
        self.target = target
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.target.write(data)

    def flush(self) -> None:
        self.target.flush()


def _walk(root: Path, bytecode: bool = False) -> Iterator[Path]:
    """Every path under ``root``, skipping caches (but ``__pycache__`` with ``bytecode``)."""
    skip = SKIP_DIRS - {PYCACHE} if bytecode else SKIP_DIRS
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        base = Path(dirpath)
        cache = base.name == PYCACHE and bytecode
        for name in dirnames:
            yield base / name
        for name in sorted(filenames):
            if cache or not name.endswith((".pyc", ".pyo")):
                yield base / name


def _info(name: str, path: Path | None, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    if kind == tarfile.DIRTYPE:
        info.mode = 0o755
    elif path is not None and kind == tarfile.REGTYPE:
        executable = path.stat().st_mode & (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        info.mode = 0o755 if executable else 0o644
        info.size = path.stat().st_size
    else:
        info.mode = 0o777
    return info


def write_layer(
    root: Path, prefix: str, out: Path, description: str, bytecode: bool = False
) -> Layer:
    """Tar ``root`` as ``prefix/...`` into ``out`` (gzip), reproducibly; with ``bytecode``,
    its ``__pycache__`` directories too (only for byte code compiled reproducibly)."""
    prefix = prefix.strip("/")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".partial")
    with open(tmp, "wb") as raw:
        compressed = _Hashing(raw)
        with gzip.GzipFile(
            filename="", fileobj=compressed, mode="wb", compresslevel=6, mtime=0
        ) as gz:
            plain = _Hashing(gz)
            # A stream ("w|") only writes: _Hashing is file enough, though not an IO.
            stream = cast(IO[bytes], plain)
            with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                parts = prefix.split("/") if prefix else []
                for i in range(len(parts)):
                    tar.addfile(_info("/".join(parts[: i + 1]) + "/", None, tarfile.DIRTYPE))
                for path in sorted(
                    _walk(root, bytecode), key=lambda p: p.relative_to(root).as_posix()
                ):
                    rel = path.relative_to(root).as_posix()
                    name = f"{prefix}/{rel}" if prefix else rel
                    if path.is_symlink():
                        info = _info(name, path, tarfile.SYMTYPE)
                        info.linkname = os.readlink(path)
                        tar.addfile(info)
                    elif path.is_dir():
                        tar.addfile(_info(name + "/", path, tarfile.DIRTYPE))
                    elif path.is_file():
                        with open(path, "rb") as handle:
                            tar.addfile(_info(name, path, tarfile.REGTYPE), handle)
    tmp.replace(out)
    return Layer(
        path=str(out),
        digest=f"sha256:{compressed.sha.hexdigest()}",
        diff_id=f"sha256:{plain.sha.hexdigest()}",
        size=compressed.size,
        description=description,
    )

"""How object names are laid out in fake-gcs-server's file system root, and its upkeep.

fake-gcs-server's filesystem backend (``internal/backend/fs.go``) stores object ``NAME`` of
bucket ``B`` at ``ROOT/B/NAME``, joined as it is. Any name Google accepts then becomes a
host path: ``../../x`` escapes the root, a name over 255 bytes (or with a 256-byte part) is
``ENAMETOOLONG``, ``a`` and ``a/b`` cannot both exist (a file cannot be a directory), a
name ending in ``/`` stores nothing. So the storage front (``front.py``) never gives the
backend a name as it is: it gives ``encode(name)``, and decodes every name that comes
back. The encoding is

    hex(UTF-8 bytes of the name), cut into parts of WIDTH characters joined by "/",
    with END ("-") after the last part

``a/../b`` -> ``612f2e2e2f62-``. It is what fs.go needs:

- the path is inside the bucket directory: parts are lowercase hex, never ``.``/``..``;
- every part is at most WIDTH + 1 characters, so even the backend's derived names (the
  ``.metadata`` sidecar, renameio's ``.NAME1234567890`` temporary file) stay under the
  255-byte limit of a file name; a 1,024-byte name is 2,048 characters in 11 parts;
- one-to-one, and no object's file is another object's directory: directories are full
  parts (exactly WIDTH hex digits), files end in END;
- prefixes are kept: ``name`` starts with ``p`` exactly when ``encode(name)`` starts with
  ``encode_prefix(p)``, so the backend still filters a listing by prefix; the order of
  encoded names is the byte order of the names, the order Cloud Storage lists in.

Custom metadata is kept out of extended attributes (``gcs.py`` makes fake-gcs-server's
xattr calls fail, so fs.go keeps it in a ``NAME.metadata`` file next to the object):
xattrs hold a few KB on ext4, less than Cloud Storage's 8 KiB, and a failed xattr write
left the new content without metadata, which read as a deleted object.

``prepare`` runs before fake-gcs-server starts: it migrates a root written by the earlier
layout (names as paths, metadata in xattrs) and clears what a crash may leave behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import uuid
from pathlib import Path

LOG = logging.getLogger(__name__)

WIDTH = 200
END = "-"  # sorts before "/" and every hex digit, so a name sorts before its extensions
SIDECAR = ".metadata"  # fs.go's metadataFile suffix
XATTR = "user.metadata"  # fs.go's metadataXattr key
MARKER = ".localcloud-layout"  # in the root; fs.go lists only directories there
LAYOUT_VERSION = "2"
_PART = re.compile(r"[0-9a-f]+")


def encode(name: str) -> str:
    """The backend's name (a relative path) for object ``name``."""
    return encode_prefix(name) + END


def encode_prefix(prefix: str) -> str:
    """What every encoded name of an object starting with ``prefix`` starts with."""
    digits = prefix.encode("utf-8").hex()
    return "/".join(digits[i : i + WIDTH] for i in range(0, len(digits), WIDTH))


def decode(encoded: str) -> str:
    """The object name of a backend name; ValueError when ``encoded`` is not one we made."""
    if not encoded.endswith(END):
        raise ValueError(f"not an encoded object name: {encoded[:80]!r}")
    parts = encoded[: -len(END)].split("/")
    if any(not _PART.fullmatch(p) or len(p) > WIDTH for p in parts) or any(
        len(p) != WIDTH for p in parts[:-1]
    ):
        raise ValueError(f"not an encoded object name: {encoded[:80]!r}")
    digits = "".join(parts)
    if len(digits) % 2:
        raise ValueError(f"not an encoded object name: {encoded[:80]!r}")
    return bytes.fromhex(digits).decode("utf-8")


def prepare(root: Path) -> None:
    """Make ``root`` a store in this layout before fake-gcs-server opens it.

    A root without the layout marker holds the earlier layout: it is renamed to
    ``storage.legacy`` next to it and every object is moved into a fresh root under its
    encoded name, with its metadata (from its xattr or its sidecar file) in a sidecar.
    The move is resumable: a crash leaves ``storage.legacy``, and the next start carries
    on. Then the root is swept for what a crash in the middle of a write leaves: a
    temporary file, content without its metadata (moved to ``storage.quarantine``), a
    metadata file without content, empty directories.
    """
    legacy = root.with_name(root.name + ".legacy")
    earlier = root.exists() and not (root / MARKER).exists() and any(root.iterdir())
    if earlier and not legacy.exists():
        root.rename(legacy)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text(LAYOUT_VERSION + "\n")
    if legacy.exists():
        _migrate(legacy, root)
    _sweep(root)


def _migrate(legacy: Path, root: Path) -> None:
    moved = 0
    for entry in sorted(legacy.iterdir()):
        if entry.is_file() and entry.name.endswith(".bucketMetadata"):
            os.replace(entry, root / entry.name)
            continue
        if not entry.is_dir():
            continue
        bucket = root / entry.name
        bucket.mkdir(exist_ok=True)
        for path in sorted(p for p in entry.rglob("*") if p.is_file()):
            name = path.relative_to(entry).as_posix()
            metadata = _legacy_metadata(path)
            if metadata is None:
                continue  # a sidecar, or a file the earlier layout never finished
            target = bucket / encode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            # Metadata first: a crash before the content moves leaves the legacy file to
            # move again; the other order would leave content with no metadata.
            _write_atomic(Path(str(target) + SIDECAR), metadata)
            os.replace(path, target)
            moved += 1
    leftovers = [p for p in legacy.rglob("*") if p.is_file() and not _is_sidecar(p)]
    if leftovers:
        place = _quarantine_dir(root)
        for path in leftovers:
            os.replace(path, place / f"{uuid.uuid4().hex}-{path.name[:100]}")
        LOG.warning(
            "storage: %d files of the earlier layout had no metadata; moved to %s",
            len(leftovers),
            place,
        )
    _remove_tree(legacy)
    LOG.info("storage: moved %d objects to the encoded layout", moved)


def _legacy_metadata(path: Path) -> bytes | None:
    """The object attributes fs.go stored for ``path`` (xattr, else sidecar), or None."""
    try:
        return os.getxattr(path, XATTR)
    except OSError:
        pass
    if _is_sidecar(path):
        return None
    try:
        data = Path(str(path) + SIDECAR).read_bytes()
    except OSError:
        return None
    try:
        json.loads(data)
    except ValueError:
        return None
    return data


def _is_sidecar(path: Path) -> bool:
    return path.name.endswith(SIDECAR)


def _sweep(root: Path) -> None:
    quarantined = 0
    for bucket in (p for p in root.iterdir() if p.is_dir()):
        for directory, _dirs, files in os.walk(bucket, topdown=False):
            here = Path(directory)
            present = set(files)
            for name in files:
                path = here / name
                if name.startswith("."):  # renameio's temporary file: never an object
                    path.unlink(missing_ok=True)
                elif name.endswith(SIDECAR):
                    if name[: -len(SIDECAR)] not in present:
                        path.unlink(missing_ok=True)
                elif name + SIDECAR not in present:
                    # Content whose metadata was never written: the write did not finish.
                    place = _quarantine_dir(root) / bucket.name
                    place.mkdir(parents=True, exist_ok=True)
                    os.replace(path, place / f"{uuid.uuid4().hex}-{name[:100]}")
                    quarantined += 1
            if here != bucket:  # fs.go leaves a deleted object's directories behind
                with contextlib.suppress(OSError):  # not empty: kept
                    here.rmdir()
    if quarantined:
        LOG.warning("storage: %d unfinished writes moved to %s", quarantined, _quarantine_dir(root))


def _quarantine_dir(root: Path) -> Path:
    place = root.with_name(root.name + ".quarantine")
    place.mkdir(parents=True, exist_ok=True)
    return place


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name[:150]}.{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _remove_tree(path: Path) -> None:
    for directory, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            Path(directory, name).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            Path(directory).rmdir()

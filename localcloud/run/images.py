"""The Cloud Run runtime's image cache: pull an image by digest once, unpack it into a rootfs.

localcloud runs containers without a container engine, so an image has to become a plain
directory tree that the sandbox (``localcloud.run.sandbox``) can bind into an instance.
Each image is pulled from the local registry, its layers applied in order with OCI
whiteouts, and the result kept under ``<root>/<digest hex>/`` next to the parts of the
image config an instance needs (``image.json``).

Design choices, and why:

- The cache is keyed by manifest digest: it names immutable content, so an unpacked tree
  never goes stale. A tag is resolved to its digest first and the digest is what is cached.
- One unpack per digest: callers for the same digest wait on one asyncio lock, and the
  tree is built in a temporary directory renamed into place only when complete, so a
  crash never leaves a half-unpacked image that looks cached.
- Layers are untrusted input (anyone who can push to the registry wrote them). An entry
  may not name an absolute path or climb out with ``..``; nothing is ever written, linked
  or deleted through a symlink; a hard link must name a regular file already in the tree;
  symlinks that would lead out of the rootfs on the host are refused, and absolute symlink
  targets are rewritten to the equivalent relative ones (identical inside the sandbox,
  where every image directory is mounted at its own path, and contained on the host).
  Devices and FIFOs are skipped: an instance gets its own minimal ``/dev``.
- Tar work blocks, so it runs in ``asyncio.to_thread``.
- Redeploying a function changes only its top (source) layer. The tree of every layer but
  the last is kept under ``bases/<chain id>/`` (the chain id hashes those layers' digests in
  order, as Docker's chain ids do), and a new image over the same base is a hard-link clone
  of it with only its last layer downloaded and applied: milliseconds instead of fetching
  and unpacking the dependencies again. Applying a layer never writes into an existing
  file (it unlinks and creates), so a clone cannot change its base, and the sandbox mounts
  images read-only; an instance run unsandboxed (``LOCALCLOUD_RUN_UNSANDBOXED``, by the
  user's choice) could write through to the base, as it could to its own image.

- An image is unpacked when it is pushed (the registry front calls ``prepare`` for every
  manifest stored), not when a revision first asks for it: a deployment pushes its image,
  then reports, saves and hands over to the deploy step, and the revision's first
  instance would otherwise wait for the pull and the unpack (0.13-0.25 s of a deploy's
  critical path, issue 19). The unpack ahead is made as the image's project's agent and
  grants nothing: the revision's own ``ensure`` still reads the manifest as its agent.

- Cloud Run imports a revision's image as its project's Cloud Run Service Agent
  (``registry/agents.py``), not as the local user: with an issuer, a revision's pull
  presents a token minted for that agent, so the registry front lets it read its own
  project's repositories and another project's only where the agent was granted
  ``roles/artifactregistry.reader``
  (https://cloud.google.com/artifact-registry/docs/integrate-cloud-run). A revision's
  first ``ensure`` reads the manifest even when the digest is unpacked already (one
  project's pull must not hand another project an image its agent may not read); the
  import is then marked in the image's directory, as Cloud Run keeps the revision's copy.

Spec: https://github.com/opencontainers/image-spec/blob/main/layer.md (whiteouts),
https://github.com/opencontainers/image-spec/blob/main/manifest.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gzip
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from localcloud.core.oidc import Issuer
from localcloud.registry import agents
from localcloud.registry.client import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V2,
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    DigestMismatchError,
    RegistryClient,
    RegistryError,
)
from localcloud.registry.names import DIGEST_RE, ImageNameError, parse_image

LOG = logging.getLogger(__name__)

IMAGE_MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST_V2)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
LAYER_TYPES = (OCI_LAYER, OCI_LAYER_GZIP, DOCKER_LAYER_GZIP, DOCKER_LAYER)
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
META = "image.json"
T = TypeVar("T")
PREPARE_AT_ONCE = 2  # images unpacked ahead of their revision at the same time
PREPARE_QUEUE = 16  # pushes waiting for that at most; more are left to their revisions
# An image whose layers are bigger than this is unpacked only when a revision asks for it:
# pushing (artifactregistry.writer) must not be a way to fill the disk of Cloud Run's cache.
PREPARE_MAX_BYTES = 1 << 30
IMPORTS = "imported-by"  # one empty file per revision that imported the image
MAX_LINK_HOPS = 40  # the kernel's own limit on symlinks followed in one lookup
# How long a pull waits for a registry that is starting (the supervisor opens its port
# after the engines start).
REGISTRY_START_SECONDS = 30.0
STALE_TMP_SECONDS = 3600.0  # leftovers of a crashed unpack older than this are removed
# What reading a damaged layer raises (gzip.BadGzipFile is an OSError, so is listed alone:
# other OSErrors, such as a full disk, are not the layer's fault and propagate).
_DAMAGED = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


class ImageError(Exception):
    """An image cannot be run: not found, not a runnable manifest, or a layer is unsafe."""


class ImageAccessDenied(ImageError):
    """The Cloud Run Service Agent may not read the image; the message is Cloud Run's."""


@dataclass(frozen=True)
class UnpackedImage:
    """An image unpacked on disk, with what an instance needs from its config."""

    digest: str  # the manifest digest, sha256:...
    rootfs: Path
    env: dict[str, str]
    entrypoint: list[str]
    cmd: list[str]
    working_dir: str
    runtime: str | None  # the localcloud.runtime label, e.g. "python311"
    exposed_port: int | None
    # The tree of its lower layers (``bases/<chain id>``), the one top-level directory its
    # last layer wrote and the paths it wrote there, when that layer wrote nothing else,
    # removed nothing, and replaced nothing of the base but directories: the image is then
    # its base with those paths added (a buildpack's source layer, in ``/workspace``),
    # which lets a sandbox of the base started ahead become an instance of it
    # (``prestart.py``).
    base: str | None = None
    top: str | None = None
    added: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "env": self.env,
            "entrypoint": self.entrypoint,
            "cmd": self.cmd,
            "working_dir": self.working_dir,
            "runtime": self.runtime,
            "exposed_port": self.exposed_port,
            "base": self.base,
            "top": self.top,
            "added": list(self.added),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any], rootfs: Path) -> UnpackedImage:
        return cls(
            digest=doc["digest"],
            rootfs=rootfs,
            env=dict(doc["env"]),
            entrypoint=list(doc["entrypoint"]),
            cmd=list(doc["cmd"]),
            working_dir=doc["working_dir"],
            runtime=doc["runtime"],
            exposed_port=doc["exposed_port"],
            base=doc.get("base"),
            top=doc.get("top"),
            added=tuple(doc.get("added") or ()),
        )


BASE_DONE = ".localcloud-base-complete"


def _link_or_copy(source: str, dest: str) -> None:
    """A hard link where the filesystem allows one (and the inode has links to spare)."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


# The symlinks of each base (by path) this process knows: a base never changes once made.
_BASE_LINKS: dict[str, set[tuple[str, ...]]] = {}


def _clone(base: Path, dest: Path) -> None:
    """``dest``, a copy of the tree ``base`` made of hard links to its files.

    GNU ``cp -al`` first: the same copy in C, 3-5x faster than ``shutil.copytree`` (20 ms
    for the functions-framework base against 60-130 ms while localcloud is busy), and out
    of this process, so the serving loop is not held behind a thousand ``os.link`` calls in
    Python during the deploy it serves. ``copytree`` where cp is missing or fails (a link
    limit reached: it copies those files)."""
    cp = shutil.which("cp")
    if cp is not None:
        done = subprocess.run(
            [cp, "-a", "--link", "--no-target-directory", "--", str(base), str(dest)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        if done.returncode == 0:
            (dest / BASE_DONE).unlink(missing_ok=True)
            return
        LOG.debug("cp -al %s failed (%s): copying it", base, done.stderr[-500:])
        shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(
        base,
        dest,
        symlinks=True,
        copy_function=_link_or_copy,
        ignore=shutil.ignore_patterns(BASE_DONE),
    )


# -- unpacking ---------------------------------------------------------------------------


def _parts(raw: str, what: str) -> list[str]:
    """The clean components of a path in a layer; refuses absolute ones and climbing out.

    ``what`` says which path it is ("layer entry", "hard link target") for the message.
    """
    if raw.startswith("/"):
        raise ImageError(f"{what} {raw!r} has an absolute path; it must be relative")
    parts: list[str] = []
    for part in raw.split("/"):
        if part == "..":
            if not parts:
                raise ImageError(f"{what} {raw!r} climbs out of the image root with '..'")
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return parts


def _show(parts: Sequence[str]) -> str:
    return "/" + "/".join(parts)


def _directory(root: Path, parts: Sequence[str], create: bool) -> Path | None:
    """``root/parts`` as a real directory reached without following any symlink.

    Missing directories are created when ``create``, else None is returned. A symlink or a
    file on the way is refused: following it could write or delete outside the tree.
    """
    current = root
    for i, part in enumerate(parts):
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            if not create:
                return None
            os.mkdir(current, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise ImageError(
                f"layer entry under {_show(parts)} would be written through the symlink "
                f"{_show(parts[: i + 1])}"
            )
        if not stat.S_ISDIR(st.st_mode):
            raise ImageError(
                f"layer entry under {_show(parts)} needs {_show(parts[: i + 1])} to be a "
                "directory, but it is a file"
            )
    return current


def _remove(path: Path) -> None:
    """Deletes ``path`` whatever it is, never following a symlink."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _make_opaque(directory: Path, rel: tuple[str, ...], mine: set[tuple[str, ...]]) -> None:
    """Removes what lower layers put in ``directory``; this layer's own entries stay."""
    for child in list(os.scandir(directory)):
        key = (*rel, child.name)
        if key not in mine:
            _remove(Path(child.path))
        elif child.is_dir(follow_symlinks=False):
            _make_opaque(Path(child.path), key, mine)


def _relative_target(link_parts: Sequence[str], target: str) -> str:
    """An absolute symlink target as the relative one that means the same in the image."""
    inside = _parts(target.lstrip("/"), f"the target of the symlink {_show(link_parts)}")
    depth = len(link_parts) - 1
    return "/".join([".."] * depth + inside) if depth or inside else "."


def _apply_layer(
    path: Path, root: Path, removed: set[tuple[str, ...]] | None = None
) -> set[tuple[str, ...]]:
    """Applies one layer (tar, optionally gzip) on top of ``root``; the paths it wrote
    (with their parents). ``removed`` collects the directories its whiteouts and opaque
    markers are in."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"\x28\xb5\x2f\xfd":
        raise ImageError(f"layer {path.name} is zstd-compressed, which is not supported")
    mine: set[tuple[str, ...]] = set()  # entries of this layer: whiteouts never remove them
    opaque: list[tuple[str, ...]] = []
    try:
        with tarfile.open(path, "r|*") as tar:  # streamed: one pass, no seeking
            for info in tar:
                _apply_entry(tar, info, root, mine, opaque, removed)
    except _DAMAGED as exc:
        raise ImageError(f"layer {path.name} is damaged or not a tar archive: {exc}") from exc
    # Opaque markers may come after this layer's own entries in that directory, so lower
    # content is removed only once the whole layer is known.
    for rel in opaque:
        directory = _directory(root, rel, create=True)
        assert directory is not None
        _make_opaque(directory, rel, mine)
    return mine


def _apply_entry(
    tar: tarfile.TarFile,
    info: tarfile.TarInfo,
    root: Path,
    mine: set[tuple[str, ...]],
    opaque: list[tuple[str, ...]],
    removed: set[tuple[str, ...]] | None = None,
) -> None:
    parts = _parts(info.name, "layer entry")
    if not parts:
        return  # the root directory itself
    name = parts[-1]
    if removed is not None and (name == OPAQUE or name.startswith(WHITEOUT)):
        removed.add(tuple(parts[:-1]))
    if name == OPAQUE:
        opaque.append(tuple(parts[:-1]))
        return
    if name.startswith(WHITEOUT):
        hidden = name[len(WHITEOUT) :]
        if hidden.startswith(WHITEOUT) or not hidden or hidden in (".", ".."):
            return  # other aufs metadata (.wh..wh.plnk, ...): nothing to apply
        target = (*parts[:-1], hidden)
        if target in mine:
            return  # a whiteout only hides lower layers' content
        directory = _directory(root, parts[:-1], create=False)
        if directory is not None:
            _remove(directory / hidden)
        return
    parent = _directory(root, parts[:-1], create=True)
    assert parent is not None
    dest = parent / name
    mine.add(tuple(parts))
    for i in range(1, len(parts)):
        mine.add(tuple(parts[:i]))
    if info.isdir():
        try:
            st = os.lstat(dest)
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(dest)
                os.mkdir(dest)
        except FileNotFoundError:
            os.mkdir(dest)
        os.chmod(dest, (info.mode & 0o1777) | 0o700)
        return
    if info.isreg():
        _remove(dest)
        source = tar.extractfile(info)
        assert source is not None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        with source, open(os.open(dest, flags, 0o600), "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        os.chmod(dest, info.mode & 0o777)  # setuid/setgid bits are dropped
        os.utime(dest, (info.mtime, info.mtime))
    elif info.issym():
        link = info.linkname
        if not link:
            raise ImageError(f"layer entry {_show(parts)} is a symlink with an empty target")
        if link.startswith("/"):
            link = _relative_target(parts, link)
        _remove(dest)
        os.symlink(link, dest)
    elif info.islnk():
        _hard_link(root, parts, info.linkname)
    else:
        LOG.debug("skipping special file %s in an image layer", _show(parts))


def _hard_link(root: Path, parts: list[str], target: str) -> None:
    """A tar hard link: a regular file already in the tree, linked (or copied) to ``parts``."""
    target_parts = _parts(target, f"the target of the hard link {_show(parts)}")
    if not target_parts:
        raise ImageError(f"layer entry {_show(parts)} is a hard link to the image root")
    directory = _directory(root, target_parts[:-1], create=False)
    source = None if directory is None else directory / target_parts[-1]
    try:
        ok = source is not None and stat.S_ISREG(os.lstat(source).st_mode)
    except FileNotFoundError:
        ok = False
    if not ok or source is None:
        raise ImageError(
            f"layer entry {_show(parts)} is a hard link to {target!r}, which is not a regular "
            "file in the image"
        )
    parent = _directory(root, parts[:-1], create=True)
    assert parent is not None
    dest = parent / parts[-1]
    if dest == source:
        return
    _remove(dest)
    try:
        os.link(source, dest, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, dest, follow_symlinks=False)


def _symlinks(root: Path) -> set[tuple[str, ...]]:
    """Every symlink in the tree ``root``, as path parts."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root).parts
        for name in dirnames + filenames:
            if os.path.islink(os.path.join(dirpath, name)):
                found.add((*rel, name))
    return found


def _check_links(
    root: Path, candidates: set[tuple[str, ...]] | None = None
) -> set[tuple[str, ...]]:
    """Refuses a symlink that, followed on the host, would lead out of ``root``; returns
    the symlinks checked.

    Checked on the final tree, following links through links as the kernel will, because
    each link can be harmless alone and escape in combination (``a -> ..`` and ``b -> a/..``).
    ``candidates``, when given, holds every path of ``root`` that may be a symlink (a
    checked tree's symlinks and whatever was written over it since): only those are looked
    at, instead of every entry of the tree.
    """
    if candidates is None:
        links = _symlinks(root)
    else:
        links = {c for c in candidates if os.path.islink(root.joinpath(*c))}
    for link in sorted(links):
        _follow(root, list(link))
    return links


def _follow(root: Path, link: list[str]) -> None:
    stack = link[:-1]
    todo = deque(os.readlink(root.joinpath(*link)).split("/"))
    if todo and todo[0] == "":
        raise ImageError(f"the symlink {_show(link)} has an absolute target")
    hops = 0
    while todo:
        part = todo.popleft()
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                raise ImageError(
                    f"the symlink {_show(link)} -> {os.readlink(root.joinpath(*link))} leads "
                    "out of the image"
                )
            stack.pop()
            continue
        stack.append(part)
        path = root.joinpath(*stack)
        if path.is_symlink():
            hops += 1
            if hops > MAX_LINK_HOPS:
                return  # the kernel gives up too (ELOOP): nothing is reached through it
            target = os.readlink(path)
            if target.startswith("/"):
                raise ImageError(f"the symlink {_show(stack)} has an absolute target")
            stack.pop()
            todo.extendleft(reversed(target.split("/")))
        elif todo and not path.is_dir():
            return  # a missing or non-directory component ends the lookup (ENOENT/ENOTDIR)


def unpack_layers(
    layer_paths: Iterable[Path], dest: Path, links: set[tuple[str, ...]] | None = None
) -> set[tuple[str, ...]]:
    """Applies layers in order into ``dest`` (created if missing), with OCI whiteouts;
    returns the final tree's symlinks.

    ``links``: ``dest`` is a copy of a tree already checked, whose symlinks these are, so
    only they and the paths the layers write can be symlinks, and only those are checked
    (a clone of a base gets its source layer in milliseconds, not a walk of the base).
    Blocking; raises ImageError for an unsafe or damaged layer, leaving ``dest`` partly
    written (callers unpack into a temporary directory).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written: set[tuple[str, ...]] = set()
    for path in layer_paths:
        written |= _apply_layer(Path(path), dest)
    return _check_links(dest, None if links is None else links | written)


# -- the cache ---------------------------------------------------------------------------


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ImageError(f"{what} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ImageError(f"{what} is not a JSON object")
    return doc


def _string_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"the image config's {what} is not a list of strings")
    return list(value)


def _exposed_port(ports: Any) -> int | None:
    for key in sorted(ports or {}):
        number, _, proto = str(key).partition("/")
        if proto in ("", "tcp") and number.isdigit():
            return int(number)
    return None


def image_from_config(digest: str, config: dict[str, Any], rootfs: Path) -> UnpackedImage:
    """The parts of an OCI/Docker image config an instance needs."""
    if config.get("os", "linux") != "linux":
        raise ImageError(f"the image is for {config.get('os')!r}; only linux images can run")
    body = config.get("config") or {}
    if not isinstance(body, dict):
        raise ImageError("the image config's config field is not an object")
    env: dict[str, str] = {}
    for item in _string_list(body.get("Env"), "Env"):
        key, eq, value = item.partition("=")
        if eq and key:
            env[key] = value
    labels = body.get("Labels") or {}
    runtime = labels.get("localcloud.runtime") if isinstance(labels, dict) else None
    return UnpackedImage(
        digest=digest,
        rootfs=rootfs,
        env=env,
        entrypoint=_string_list(body.get("Entrypoint"), "Entrypoint"),
        cmd=_string_list(body.get("Cmd"), "Cmd"),
        working_dir=body.get("WorkingDir") or "/",
        runtime=runtime if isinstance(runtime, str) and runtime else None,
        exposed_port=_exposed_port(body.get("ExposedPorts")),
    )


class ImageCache:
    """Images unpacked under ``root``, pulled from the registry at ``registry_address``.

    ``session`` is shared with the registry client if given; otherwise the client owns one,
    closed by ``close()``. With ``issuer``, pulls for a project are made as its Cloud Run
    Service Agent (see the module's docstring).
    """

    def __init__(
        self,
        root: Path,
        registry_address: str,
        session: aiohttp.ClientSession | None = None,
        issuer: Issuer | None = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.registry = RegistryClient(registry_address, session)
        self.registry_address = registry_address
        self.issuer = issuer
        self._locks: dict[str, asyncio.Lock] = {}
        self._images: dict[str, UnpackedImage] = {}
        self._preparing: dict[str, asyncio.Task[None]] = {}
        self._prepare_slots = asyncio.Semaphore(PREPARE_AT_ONCE)
        # Told of each image unpacked ahead: Cloud Run starts a sandbox of it (prestart.py).
        self.on_prepared: Callable[[UnpackedImage], None] | None = None
        self._clean_stale()

    async def close(self) -> None:
        for task in list(self._preparing.values()):
            task.cancel()
        await asyncio.gather(*self._preparing.values(), return_exceptions=True)
        await self.registry.close()

    def _client(self, project: str | None) -> RegistryClient:
        """The registry as ``project``'s Cloud Run Service Agent (without a project or an
        issuer: the shared client, whose requests carry no credentials)."""
        if project is None or self.issuer is None:
            return self.registry
        token = self.issuer.mint_access_token(agents.run_agent(project))
        return RegistryClient(self.registry_address, self.registry.session, token=token)

    def _clean_stale(self) -> None:
        """Removes temporary trees a crashed unpack left behind (old enough not to be live)."""
        now = time.time()
        for child in self.root.glob(".tmp-*"):
            with contextlib.suppress(OSError):
                if now - child.lstat().st_mtime > STALE_TMP_SECONDS:
                    shutil.rmtree(child, ignore_errors=True)

    def _load(self, digest: str) -> UnpackedImage | None:
        cached = self._images.get(digest)
        if cached is not None:
            return cached
        image = _read_slot(self.root / digest.removeprefix("sha256:"))
        if image is not None:
            self._images[digest] = image
        return image

    async def ensure(self, image: str, revision: str | None = None) -> UnpackedImage:
        """The unpacked image for ``image`` (by digest, or a tag resolved to its digest).

        Without ``revision``, a digest already unpacked is returned without touching the
        network. For a revision (``projects/P/.../revisions/R``), Cloud Run imports the
        image once, when the revision is deployed, as P's Cloud Run Service Agent, and
        "keeps this copy of the container image as long as it is used by a serving
        revision" (https://cloud.google.com/run/docs/deploying): the agent reads the
        manifest the first time whatever is unpacked already (another project's pull
        grants nothing), and the import is remembered, so the revision's instances start
        later, after a restart too, without asking the registry again.
        """
        try:
            ref = parse_image(image)
        except ImageNameError as exc:
            raise ImageError(str(exc)) from None
        repo = ref.path
        project = revision.split("/")[1] if revision else None
        if ref.digest is not None and revision is not None:
            cached = self._load(ref.digest)
            if cached is not None and self._import_mark(ref.digest, revision).exists():
                return cached
        client = self._client(project)
        manifest: tuple[bytes, str] | None = None
        if ref.digest is not None and revision is None:
            digest = ref.digest
        else:
            body, media_type, digest = await self._manifest(
                client, image, repo, ref.reference, project
            )
            manifest = (body, media_type)
        unpacked = await self._unpacked(client, image, repo, digest, manifest, project)
        if revision is not None:
            await asyncio.to_thread(_touch, self._import_mark(digest, revision))
        return unpacked

    async def _unpacked(
        self,
        client: RegistryClient,
        image: str,
        repo: str,
        digest: str,
        manifest: tuple[bytes, str] | None,
        project: str | None,
    ) -> UnpackedImage:
        """The unpacked ``digest``, pulled (once, whoever else is asking) if it is not yet."""
        unpacked = self._load(digest)
        if unpacked is None:
            lock = self._locks.setdefault(digest, asyncio.Lock())
            async with lock:
                unpacked = self._load(digest)
                if unpacked is None:
                    if manifest is None:
                        body, media_type, _ = await self._manifest(
                            client, image, repo, digest, project
                        )
                        manifest = (body, media_type)
                    unpacked = await self._pull(client, image, repo, digest, *manifest)
                    self._images[digest] = unpacked
        return unpacked

    def prepare(self, repo: str, digest: str) -> None:
        """Start unpacking an image the moment it is pushed (``repo``, the registry path
        ``PROJECT/REPOSITORY/IMAGE``), as its project's Cloud Run Service Agent.

        A deployment pushes its image and only then asks for a revision of it: unpacked
        meanwhile, the revision's first instance starts without waiting for the pull
        (issue 19: start the new revision while the previous step is still reported).
        Nothing is granted by it: a revision still reads the manifest as its own
        project's agent when it is deployed (``ensure``). An image the agent may not read,
        or that is malformed, is left for the deployment to report; at most
        ``PREPARE_AT_ONCE`` are unpacked ahead at a time (up to ``PREPARE_QUEUE`` more wait),
        and only single-platform images of at most ``PREPARE_MAX_BYTES`` of layers.
        """
        if digest in self._images or digest in self._preparing:
            return
        if len(self._preparing) >= PREPARE_QUEUE or not DIGEST_RE.fullmatch(digest):
            return
        task = asyncio.get_running_loop().create_task(self._prepare(repo, digest))
        self._preparing[digest] = task
        task.add_done_callback(lambda _: self._preparing.pop(digest, None))

    async def _prepare(self, repo: str, digest: str) -> None:
        project = repo.split("/", 1)[0]
        image = f"{self.registry_address}/{repo}@{digest}"
        try:
            async with self._prepare_slots:
                client = self._client(project)
                body, media_type, _ = await self._manifest(client, image, repo, digest, project)
                size = _layers_size(body)
                if size is None or size > PREPARE_MAX_BYTES:
                    LOG.debug("not unpacking %s ahead: not one platform's image, or too big", image)
                    return
                unpacked = await self._unpacked(
                    client, image, repo, digest, (body, media_type), project
                )
            if self.on_prepared is not None:
                self.on_prepared(unpacked)
        except ImageError as exc:
            LOG.debug("not unpacking %s ahead of a revision: %s", image, exc)
        except Exception:  # never a crash: the deployment pulls it again and reports
            LOG.exception("unpacking %s ahead of a revision failed", image)

    def _import_mark(self, digest: str, revision: str) -> Path:
        """The file that says ``revision`` imported the unpacked ``digest``."""
        key = hashlib.sha256(revision.encode()).hexdigest()[:32]
        return self.root / digest.removeprefix("sha256:") / IMPORTS / key

    async def _manifest(
        self,
        client: RegistryClient,
        image: str,
        repo: str,
        reference: str,
        project: str | None = None,
    ) -> tuple[bytes, str, str]:
        try:
            return await self._while_starting(lambda: client.get_manifest(repo, reference))
        except DigestMismatchError as exc:
            raise ImageError(f"digest mismatch pulling {image}: {exc}") from exc
        except RegistryError as exc:
            if exc.status == 403 and project is not None:
                denied = agents.image_denied(image, repo.split("/", 1)[0], project)
                raise ImageAccessDenied(denied) from exc
            if exc.status == 404:
                raise ImageError(f"image {image} not found in the registry") from exc
            raise ImageError(f"cannot pull {image}: {exc}") from exc

    @staticmethod
    async def _while_starting(call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, asked again while the registry cannot be reached or says it is
        starting: localcloud starts the revisions it was serving (minimum instances, a
        reconcile a crash cut short) before its registry port is open, and they must wait
        for it rather than fail."""
        deadline = time.monotonic() + REGISTRY_START_SECONDS
        pause = 0.1
        while True:
            try:
                return await call()
            except DigestMismatchError:
                raise
            except RegistryError as exc:
                if exc.status not in (None, 503) or time.monotonic() + pause > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)

    async def _pull(
        self,
        client: RegistryClient,
        image: str,
        repo: str,
        digest: str,
        body: bytes,
        media_type: str,
    ) -> UnpackedImage:
        doc = _json(body, f"the manifest of {image}")
        if media_type not in MANIFEST_TYPES:  # a registry may answer a generic type
            media_type = str(doc.get("mediaType") or media_type)
        if media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST):
            raise ImageError(
                f"{image} is a multi-platform image index; deploy the digest of its linux/amd64 "
                "image manifest instead"
            )
        if media_type not in IMAGE_MANIFESTS:
            raise ImageError(
                f"{image} is not an OCI or Docker v2 image manifest (media type "
                f"{media_type or 'missing'!r})"
            )
        if doc.get("schemaVersion") != 2 or not isinstance(doc.get("config"), dict):
            raise ImageError(f"the manifest of {image} is not a schema 2 image manifest")
        config_desc = doc["config"]
        if config_desc.get("mediaType") not in CONFIG_TYPES:
            raise ImageError(
                f"{image} has a config of media type {config_desc.get('mediaType')!r}, not an "
                "image config"
            )
        layers = doc.get("layers") or []
        if not isinstance(layers, list) or not all(isinstance(x, dict) for x in layers):
            raise ImageError(f"the manifest of {image} has a malformed layers list")
        for layer in layers:
            if layer.get("mediaType") not in LAYER_TYPES:
                raise ImageError(
                    f"{image} has a layer of unsupported media type {layer.get('mediaType')!r} "
                    f"(supported: {', '.join(LAYER_TYPES)})"
                )
        digests = [config_desc.get("digest"), *(x.get("digest") for x in layers)]
        if not all(isinstance(d, str) and DIGEST_RE.fullmatch(d) for d in digests):
            raise ImageError(f"the manifest of {image} has a missing or malformed digest")
        try:
            slot = self.root / digest.removeprefix("sha256:")
            base = self._base_dir([x["digest"] for x in layers[:-1]])
            have_base = base is not None and (base / BASE_DONE).exists()
            fetch = layers[-1:] if have_base else layers
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{slot.name[:12]}-", dir=self.root))
            try:
                # The config and the layers at once (one round trip instead of two or more).
                try:
                    async with asyncio.TaskGroup() as group:
                        reading = group.create_task(
                            client.get_blob_bytes(repo, config_desc["digest"])
                        )
                        fetching = [
                            group.create_task(
                                client.get_blob(repo, layer["digest"], tmp / f"layer-{i}.tar")
                            )
                            for i, layer in enumerate(fetch)
                        ]
                except BaseExceptionGroup as failed:  # the first failure, as a lone call's
                    raise failed.exceptions[0] from None
                config = _json(reading.result(), f"the config of {image}")
                diff_ids = (config.get("rootfs") or {}).get("diff_ids")
                if isinstance(diff_ids, list) and len(diff_ids) != len(layers):
                    raise ImageError(
                        f"{image} lists {len(layers)} layers but its config {len(diff_ids)} "
                        "diff_ids"
                    )
                paths = [task.result() for task in fetching]
                unpacked = image_from_config(digest, config, slot / "rootfs")
                work = asyncio.ensure_future(
                    asyncio.to_thread(self._unpack, paths, tmp, slot, unpacked, base, have_base)
                )
                try:
                    unpacked = await asyncio.shield(work)
                except asyncio.CancelledError:
                    # The thread cannot be stopped: let it finish before its tree is
                    # removed, or a half-removed base could be renamed into place.
                    await asyncio.wait({work})
                    raise
            finally:
                await asyncio.to_thread(shutil.rmtree, tmp, True)
        except DigestMismatchError as exc:
            raise ImageError(f"digest mismatch pulling {image}: {exc}") from exc
        except RegistryError as exc:
            raise ImageError(f"cannot pull {image}: {exc}") from exc
        LOG.info("unpacked %s (%d layers) into %s", image, len(layers), slot)
        return unpacked

    def _base_dir(self, digests: list[str]) -> Path | None:
        """Where the tree of these lower layers is kept; None for a one-layer image."""
        if not digests:
            return None
        chain = hashlib.sha256("\n".join(digests).encode()).hexdigest()
        return self.root / "bases" / chain

    @staticmethod
    def _unpack(
        paths: list[Path],
        tmp: Path,
        slot: Path,
        image: UnpackedImage,
        base: Path | None = None,
        have_base: bool = False,
    ) -> UnpackedImage:
        """Unpacks into ``tmp``, then renames it to ``slot``: the cache never holds half a tree.

        With ``base``, ``paths`` are every layer (``have_base`` false: the lower ones are
        unpacked into a new base first) or only the last one (a clone of ``base`` gets it).
        Returns ``image``, with its base and top directory when it is one over its base.
        """
        rootfs = tmp / "rootfs"
        downloaded = list(paths)
        if base is None:
            unpack_layers(paths, rootfs)
        else:
            if not have_base:
                staging = tmp / "base"
                _BASE_LINKS[str(base)] = unpack_layers(paths[:-1], staging)
                (staging / BASE_DONE).touch()
                base.parent.mkdir(parents=True, exist_ok=True)
                try:
                    staging.rename(base)
                except OSError as exc:  # built meanwhile by another process: same content
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                    shutil.rmtree(staging)
                paths = paths[-1:]
            _clone(base, rootfs)
            links = _BASE_LINKS.get(str(base))
            if links is None:  # a base unpacked before this process started
                links = _BASE_LINKS[str(base)] = _symlinks(base)
            (last,) = paths
            removed: set[tuple[str, ...]] = set()
            written = _apply_layer(Path(last), rootfs, removed)
            _check_links(rootfs, links | written)
            tops = {p[0] for p in written | removed if p}
            if len(tops) == 1 and not removed and _adds_only(base, rootfs, written):
                added = tuple(sorted("/".join(p) for p in written))
                image = replace(image, base=str(base), top=tops.pop(), added=added)
        for path in downloaded:
            path.unlink()
        (tmp / META).write_text(json.dumps(image.to_json(), indent=1, sort_keys=True))
        if slot.exists() and _read_slot(slot) is None:
            shutil.rmtree(slot)  # damaged by hand (no image.json or no rootfs): replace it
        try:
            tmp.rename(slot)
        except OSError as exc:
            # Another process sharing this data directory unpacked it first: same content.
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or _read_slot(slot) is None:
                raise
        return image


def _adds_only(base: Path, rootfs: Path, written: set[tuple[str, ...]]) -> bool:
    """Whether the paths a layer ``written`` over ``base`` into ``rootfs`` are all new,
    but for directories that stayed directories, and are all still there as written (not
    skipped, as a device is, nor under what the layer later made a symlink)."""
    try:
        modes = {parts: os.lstat(rootfs.joinpath(*parts)).st_mode for parts in written}
    except OSError:  # skipped (a device), or under what the layer made a link
        return False
    links = {parts for parts, mode in modes.items() if stat.S_ISLNK(mode)}
    for parts, mode in modes.items():
        if any(parts[:i] in links for i in range(1, len(parts))):
            return False
        below = base.joinpath(*parts)
        if os.path.lexists(below) and not (_real_dir(below) and stat.S_ISDIR(mode)):
            return False
    return True


def _real_dir(path: Path) -> bool:
    return not path.is_symlink() and path.is_dir()


def _layers_size(body: bytes) -> int | None:
    """The bytes of an image manifest's layers; None for anything else (an index)."""
    try:
        doc = json.loads(body)
        return sum(int(layer["size"]) for layer in doc["layers"])
    except (ValueError, KeyError, TypeError):
        return None


def _touch(path: Path) -> None:
    path.parent.mkdir(exist_ok=True)
    path.touch()


def _read_slot(slot: Path) -> UnpackedImage | None:
    """The image unpacked in ``slot``, or None if it is missing or incomplete."""
    try:
        doc = json.loads((slot / META).read_text())
        image = UnpackedImage.from_json(doc, slot / "rootfs")
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        LOG.warning("the cached image in %s has a damaged %s; unpacking it again", slot, META)
        return None
    return image if image.rootfs.is_dir() else None

"""The Cloud Run runtime's image cache and sandbox, on images built by the real Cloud Build.

Images are built through the official ``google-cloud-build`` client (the ``gcloud builds
submit --pack`` request), pulled from localcloud's registry by ``ImageCache`` and started by
``sandbox.start`` under bubblewrap. A probe function reports what the sandbox lets it see,
so the isolation claims in ``localcloud/run/sandbox.py`` are checked from the inside.
Whiteouts and unsafe layers are checked on hand-made layers through ``unpack_layers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import platform
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from google.api_core import exceptions
from google.cloud.devtools import cloudbuild_v1

from localcloud.registry.client import OCI_INDEX, OCI_LAYER_GZIP, OCI_MANIFEST
from localcloud.registry.names import parse_image
from localcloud.run import cgroups, images, network, prestart, sandbox
from localcloud.run.autoscaler import Autoscaler
from localcloud.run.images import ImageCache, ImageError, UnpackedImage, unpack_layers
from localcloud.run.prestart import Prestarts
from localcloud.run.sandbox import InstanceSpec, SandboxError
from localcloud.testing import free_port, pack_build, zip_dir, zip_tree
from orchestrator.clients import Clients, Environment

FUNCTIONS = Path(__file__).parent.parent / "functions"
PROJECT = "local-project"
S = cloudbuild_v1.Build.Status
T = TypeVar("T")

needs_bwrap = pytest.mark.skipif(
    sandbox.bwrap_available() is None, reason="bubblewrap (bwrap) is not installed"
)

# Reports what the sandbox lets a function see; the paths to try come from PROBE_PATHS.
PROBE_MAIN = """\
import json
import os
import subprocess
import sys

import __main__


def probe(request):
    status = open("/proc/self/status").read()
    return json.dumps({
        "pid": os.getpid(),
        "argv": sys.argv,
        "path": sys.path,
        "main": getattr(__main__, "__file__", None),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "exists": {p: os.path.exists(p) for p in json.loads(os.environ["PROBE_PATHS"])},
        "workspace_writable": os.access("/workspace", os.W_OK),
        "caps": status.split("CapEff:")[1].split()[0],
        "calendar": getattr(sys.modules.get("calendar"), "SHADOWED", False),
    })
"""
# The function's own module of a name functions-framework imports, standing in for it.
SHADOW_CALENDAR = """\
import importlib.util
import os
import sysconfig

_spec = importlib.util.spec_from_file_location(
    "_stdlib_calendar", os.path.join(sysconfig.get_path("stdlib"), "calendar.py")
)
_real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_real)
globals().update({k: v for k, v in vars(_real).items() if not k.startswith("__")})
SHADOWED = True
"""
CRASH_MAIN = """\
raise RuntimeError("boom: this function fails at import")


def hello(request):
    return "never"
"""


# -- helpers ----------------------------------------------------------------------------


def run(coro: Awaitable[T], timeout: float = 60) -> T:
    """Runs a scenario on a fresh loop, bounded: a hung instance fails the test, not the run."""
    return asyncio.run(asyncio.wait_for(coro, timeout))  # type: ignore[arg-type]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


async def get(instance: sandbox.Instance, path: str = "/") -> tuple[int, str]:
    """A request the way the ingress sends it: through the instance's own network."""
    timeout = aiohttp.ClientTimeout(total=10)
    async with instance.session.get(f"{instance.url}{path}", timeout=timeout) as resp:
        return resp.status, await resp.text()


def spec_for(image: UnpackedImage, log_path: Path, **env: str) -> InstanceSpec:
    port = free_port()
    base = {
        "PORT": str(port),
        "K_SERVICE": "sandbox-test",
        "K_REVISION": "sandbox-test-00001-abc",
        "K_CONFIGURATION": "sandbox-test",
        "GOOGLE_CLOUD_PROJECT": PROJECT,
    }
    return InstanceSpec(image=image, env={**base, **env}, port=port, log_path=log_path)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(localcloud: Any) -> dict[str, tuple[str, str]]:
    """Functions built at once: name -> (image, digest)."""
    clients = Clients(Environment.from_env(localcloud.env))
    bucket = clients.storage.create_bucket(f"sandbox-src-{uuid.uuid4().hex[:8]}")
    sources = {
        "hello": (zip_dir(FUNCTIONS / "hello_http"), "hello"),
        "probe": (zip_tree({"main.py": PROBE_MAIN}), "probe"),
        "shadow": (zip_tree({"main.py": PROBE_MAIN, "calendar.py": SHADOW_CALENDAR}), "probe"),
        "crash": (zip_tree({"main.py": CRASH_MAIN}), "hello"),
    }
    started = {}
    for name, (data, target) in sources.items():
        blob = bucket.blob(f"{name}.zip")
        blob.upload_from_string(data)
        image = (
            f"us-central1-docker.pkg.dev/{PROJECT}/functions/sandbox-{name}-{uuid.uuid4().hex[:8]}"
        )
        build = pack_build(
            (bucket.name, blob.name, blob.generation), image, {"GOOGLE_FUNCTION_TARGET": target}
        )
        started[name] = (image, clients.cloud_build.create_build(project_id=PROJECT, build=build))
    images = {}
    for name, (image, operation) in started.items():
        with contextlib.suppress(exceptions.GoogleAPICallError):
            operation.result(timeout=110)
        build = clients.cloud_build.get_build(project_id=PROJECT, id=operation.metadata.build.id)
        assert build.status == S.SUCCESS, f"{name}: {build.status_detail}"
        images[name] = (image, build.results.images[0].digest)
    return images


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("run-images")


def unpacked(localcloud: Any, cache_root: Path, image: str, digest: str) -> UnpackedImage:
    async def pull() -> UnpackedImage:
        cache = ImageCache(cache_root, localcloud.config.registry_address)
        try:
            return await cache.ensure(f"{image}@{digest}")
        finally:
            await cache.close()

    return run(pull())


# -- the image cache -----------------------------------------------------------------------


def test_ensure_unpacks_once_per_digest(localcloud, built, tmp_path):
    image, digest = built["hello"]
    root = tmp_path / "images"
    requests: list[str] = []

    async def count(_session: Any, _ctx: Any, params: aiohttp.TraceRequestStartParams) -> None:
        requests.append(params.url.path)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(count)

    async def scenario() -> None:
        async with aiohttp.ClientSession(trace_configs=[trace]) as session:
            cache = ImageCache(root, localcloud.config.registry_address, session)
            by_digest = f"{image}@{digest}"
            first = await cache.ensure(by_digest)
            assert first.digest == digest
            assert first.rootfs == root / digest.removeprefix("sha256:") / "rootfs"
            assert (first.rootfs / "workspace" / "main.py").read_text().startswith('"""A minimal')
            assert (first.rootfs / "layers" / "python" / "functions-framework" / "lib").is_dir()
            assert first.entrypoint == ["python3", "-m", "functions_framework"]
            assert first.working_dir == "/workspace"
            assert first.runtime is not None and first.runtime.startswith("python3")
            assert first.exposed_port == 8080
            assert first.env["GOOGLE_FUNCTION_TARGET"] == "hello"
            pulled, mtime = len(requests), first.rootfs.stat().st_mtime_ns
            assert pulled >= 3  # manifest, config, layers

            assert await cache.ensure(by_digest) == first
            # A restarted localcloud (a new cache on the same directory) finds it on disk:
            # no request (it has no registry to ask), nothing unpacked again.
            assert await ImageCache(root, "127.0.0.1:1", session).ensure(by_digest) == first
            assert len(requests) == pulled, requests[pulled:]
            assert first.rootfs.stat().st_mtime_ns == mtime

            # A tag costs one manifest request to resolve, then the digest is what is cached.
            tagged = await cache.ensure(image)
            assert tagged == first
            assert requests[pulled:] == [f"/v2/{image.split('/', 1)[1]}/manifests/latest"]
            assert {p.name for p in root.iterdir()} == {"bases", digest.removeprefix("sha256:")}

            # Callers racing for one digest share one pull.
            other = ImageCache(tmp_path / "racing", localcloud.config.registry_address, session)
            before = len(requests)
            results = await asyncio.gather(*(other.ensure(by_digest) for _ in range(4)))
            assert len({r.rootfs for r in results}) == 1
            assert sum("/manifests/" in p for p in requests[before:]) == 1

    run(scenario())


def test_an_image_over_known_lower_layers_fetches_and_unpacks_only_its_top(
    localcloud, built, tmp_path
):
    """Redeploys change the source layer only: the rest is a hard-link clone of a base."""
    root = tmp_path / "images"
    blobs: list[str] = []

    async def count(_session: Any, _ctx: Any, params: aiohttp.TraceRequestStartParams) -> None:
        if "/blobs/" in params.url.path:
            blobs.append(params.url.path)

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(count)

    async def scenario() -> tuple[UnpackedImage, UnpackedImage, int]:
        async with aiohttp.ClientSession(trace_configs=[trace]) as session:
            cache = ImageCache(root, localcloud.config.registry_address, session)
            first = await cache.ensure("@".join(built["probe"]))
            before = len(blobs)
            second = await cache.ensure("@".join(built["crash"]))
            return first, second, len(blobs) - before

    first, second, fetched = run(scenario())
    assert fetched == 2, "the config and the top layer only"
    assert (first.rootfs / "workspace" / "main.py").read_text() == PROBE_MAIN
    assert (second.rootfs / "workspace" / "main.py").read_text() == CRASH_MAIN
    shared = first.rootfs / "layers" / "python" / "functions-framework" / "lib"
    module = next(p for p in shared.rglob("*.py"))
    twin = second.rootfs / module.relative_to(first.rootfs)
    assert module.stat().st_ino == twin.stat().st_ino, "lower layers are shared, not copied"
    (base,) = (root / "bases").iterdir()
    assert not (base / "workspace" / "main.py").exists(), "the base holds no top layer"


def test_ensure_reports_missing_and_malformed_images(localcloud, built, tmp_path):
    image, digest = built["hello"]
    repo = parse_image(image).path

    def manifest(media_type: str, **fields: Any) -> bytes:
        return json.dumps({"schemaVersion": 2, "mediaType": media_type, **fields}).encode()

    async def scenario() -> None:
        cache = ImageCache(tmp_path, localcloud.config.registry_address)
        try:
            with pytest.raises(ImageError, match="not found"):
                await cache.ensure(f"{image}@sha256:{'0' * 64}")
            with pytest.raises(ImageError, match="not found"):
                await cache.ensure(f"{image}-absent:latest")
            with pytest.raises(ImageError, match="not an Artifact Registry"):
                await cache.ensure("docker.io/library/python:3.11")

            registry = cache.registry
            body, _, _ = await registry.get_manifest(repo, digest)
            index = manifest(
                OCI_INDEX,
                manifests=[{"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body)}],
            )
            await registry.put_manifest(repo, "index", index, OCI_INDEX)
            with pytest.raises(ImageError, match="multi-platform image index"):
                await cache.ensure(f"{image}:index")

            config = json.loads(body)["config"]
            blob, size = await registry.push_blob(repo, b"not really zstd")
            zstd_layer = {"mediaType": OCI_LAYER_GZIP[:-4] + "zstd", "digest": blob, "size": size}
            odd = manifest(OCI_MANIFEST, config=config, layers=[zstd_layer])
            await registry.put_manifest(repo, "zstd", odd, OCI_MANIFEST)
            with pytest.raises(ImageError, match="unsupported media type"):
                await cache.ensure(f"{image}:zstd")
            assert [p.name for p in tmp_path.iterdir()] == []  # nothing half-unpacked is kept
        finally:
            await cache.close()

    run(scenario())


# -- layers: whiteouts and unsafe entries --------------------------------------------------


def layer(path: Path, *entries: tuple[str, ...]) -> Path:
    """A gzipped tar layer from (kind, name[, data or link target]) entries, in order."""
    with tarfile.open(path, "w:gz") as tar:
        for kind, name, *rest in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                data = rest[0].encode() if rest else b""
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            info.mode = 0o755 if kind == "dir" else 0o777
            info.linkname = rest[0] if rest else ""
            tar.addfile(info)
    return path


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root``: file contents, "->target" for links, "/" for directories."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = "->" + os.readlink(path)
        elif path.is_dir():
            out[rel] = "/"
        else:
            out[rel] = path.read_text()
    return out


def test_unpack_applies_whiteouts_and_opaque_directories(tmp_path):
    lower = layer(
        tmp_path / "1.tar.gz",
        ("dir", "./"),
        ("dir", "./a/"),
        ("file", "./a/gone.txt", "old"),
        ("file", "./a/kept.txt", "kept"),
        ("dir", "./opaque/"),
        ("file", "./opaque/old.txt", "lower"),
        ("dir", "./opaque/sub/"),
        ("file", "./opaque/sub/deep.txt", "lower"),
        ("file", "./lone.txt", "alone"),
        ("file", "./replaced", "a file that becomes a directory"),
        ("fifo", "./a/pipe"),
    )
    upper = layer(
        tmp_path / "2.tar.gz",
        ("file", "a/.wh.gone.txt"),
        ("dir", "opaque/"),
        ("file", "opaque/new.txt", "upper"),  # before the marker: still this layer's own
        ("file", "opaque/.wh..wh..opq"),
        ("dir", "opaque/sub/"),
        ("file", "opaque/sub/fresh.txt", "upper"),
        ("file", ".wh.lone.txt"),
        ("file", "same.txt", "a whiteout in its own layer does not hide it"),
        ("file", ".wh.same.txt"),
        ("file", ".wh.never-existed"),
        ("dir", "replaced/"),
        ("symlink", "abs-link", "/workspace/main.py"),
        ("symlink", "a/rel-link", "kept.txt"),
        ("hardlink", "hard.txt", "a/kept.txt"),
    )
    unpack_layers([lower, upper], tmp_path / "rootfs")
    assert tree(tmp_path / "rootfs") == {
        "a": "/",
        "a/kept.txt": "kept",
        "a/rel-link": "->kept.txt",
        "abs-link": "->workspace/main.py",  # rewritten: the same inside, contained outside
        "hard.txt": "kept",
        "opaque": "/",
        "opaque/new.txt": "upper",
        "opaque/sub": "/",
        "opaque/sub/fresh.txt": "upper",
        "replaced": "/",
        "same.txt": "a whiteout in its own layer does not hide it",
    }

    # Whiting out a directory removes it whole; a later layer can bring a name back.
    third = layer(tmp_path / "3.tar.gz", ("file", ".wh.opaque"), ("file", "lone.txt", "back"))
    unpack_layers([lower, upper, third], tmp_path / "again")
    assert "opaque" not in tree(tmp_path / "again")
    assert (tmp_path / "again" / "lone.txt").read_text() == "back"


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([[("file", "/etc/cron.d/evil", "x")]], "absolute path"),
        ([[("file", "a/../../escape", "x")]], "climbs out"),
        ([[("symlink", "up", "../..")]], "leads out of the image"),
        ([[("dir", "s/"), ("symlink", "s/y", ".."), ("symlink", "s/x", "y/../..")]], "leads out"),
        ([[("symlink", "d", "/tmp")], [("file", "d/evil", "x")]], "through the symlink /d"),
        ([[("symlink", "d", "..")], [("file", "d/.wh.x")]], "through the symlink /d"),
        ([[("dir", "k/"), ("symlink", "k/d", "../k")], [("file", "k/d/.wh.x")]], "through"),
        ([[("hardlink", "h", "../../etc/passwd")]], "climbs out"),
        ([[("hardlink", "h", "missing")]], "not a regular file"),
        ([[("symlink", "l", "/x"), ("hardlink", "h", "l")]], "not a regular file"),
    ],
)
def test_unpack_refuses_unsafe_layers(tmp_path, layers, message):
    paths = [layer(tmp_path / f"{i}.tar.gz", *entries) for i, entries in enumerate(layers)]
    with pytest.raises(ImageError, match=message):
        unpack_layers(paths, tmp_path / "root" / "rootfs")
    assert not (tmp_path / "escape").exists()
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize(
    ("lower", "top", "message"),
    [
        # A link the top layer adds, escaping through a link of the base.
        ([("dir", "s/"), ("symlink", "s/y", "..")], [("symlink", "s/x", "y/../..")], "/s/x"),
        # A link of the base, harmless over the base, escaping once the top layer turns the
        # directory it passes through into a link: only a check of the base's links sees it.
        ([("dir", "s/"), ("dir", "s/y/"), ("symlink", "s/x", "y/../..")], [], None),
        (
            [("dir", "s/"), ("dir", "s/y/"), ("symlink", "s/x", "y/../..")],
            [("file", "s/.wh.y"), ("symlink", "s/y", "..")],
            "/s/x",
        ),
    ],
)
def test_a_clone_of_a_checked_base_is_checked_where_it_changed(tmp_path, lower, top, message):
    """An image over a known base is a hard-link clone of it with its top layer applied,
    whose links are checked without walking the base again: the base's own links and what
    the top layer wrote. The tree and the verdict must be those of unpacking every layer."""
    base_layer = layer(tmp_path / "base.tar.gz", *lower)
    top_layer = layer(tmp_path / "top.tar.gz", *top)
    links = unpack_layers([base_layer], tmp_path / "base")
    images._clone(tmp_path / "base", tmp_path / "clone")
    if message is None:
        unpack_layers([top_layer], tmp_path / "clone", links)
        unpack_layers([base_layer, top_layer], tmp_path / "whole")
        assert tree(tmp_path / "clone") == tree(tmp_path / "whole")
        return
    before = tree(tmp_path / "base")
    with pytest.raises(ImageError, match=message):
        unpack_layers([top_layer], tmp_path / "clone", links)
    with pytest.raises(ImageError, match=message):
        unpack_layers([base_layer, top_layer], tmp_path / "whole")
    assert tree(tmp_path / "base") == before  # the clone's changes never reach its base


@pytest.mark.parametrize(
    ("top", "over_base"),
    [
        (
            [("dir", "workspace/"), ("file", "workspace/main.py", "x"), ("dir", "workspace/d/")],
            True,
        ),
        ([("file", "workspace/main.py", "x"), ("symlink", "workspace/l", "main.py")], True),
        ([("file", "workspace/node_modules/new.js", "x")], True),  # into a base's directory
        ([("dir", "workspace/node_modules/"), ("hardlink", "workspace/h", "layers/lib.txt")], True),
        ([("file", "etc/main.py", "x")], True),  # any one directory
        ([("file", "workspace/main.py", "x"), ("file", "layers/extra.txt", "y")], False),
        ([("file", "workspace/main.py", "x"), ("file", "layers/.wh.lib.txt")], False),
        ([("dir", "workspace/"), ("file", "workspace/.wh..wh..opq")], False),
        ([("file", "layers/lib.txt", "changed")], False),
        ([("file", "workspace/node_modules/m.js", "changed")], False),
        ([("file", "workspace/node_modules", "a file where the base has a directory")], False),
        (  # written, then under what the layer made a symlink: not there as written
            [
                ("dir", "workspace/d/"),
                ("file", "workspace/d/m.js", "x"),
                ("symlink", "workspace/d", "node_modules"),
            ],
            False,
        ),
        (
            [
                ("dir", "workspace/d/"),
                ("file", "workspace/d/f", "x"),
                ("symlink", "workspace/d", "e"),
            ],
            False,
        ),
    ],
)
def test_an_image_over_its_base_is_told_apart(tmp_path, top, over_base):
    """An image is its base with paths added under one top directory (what a spare of the
    base can become, prestart.py) only when its last layer wrote nothing else, removed
    nothing and replaced nothing but directories; the spare's copy of the base, filled,
    is then the image's tree."""
    lower = layer(
        tmp_path / "lower.tar.gz",
        ("dir", "layers/"),
        ("file", "layers/lib.txt", "l"),
        ("dir", "workspace/"),
        ("dir", "workspace/node_modules/"),
        ("file", "workspace/node_modules/m.js", "m"),
    )
    last = layer(tmp_path / "last.tar.gz", *top)
    slot, base = tmp_path / "slot", tmp_path / "bases" / "chain"
    image = UnpackedImage(
        "sha256:" + "0" * 64, slot / "rootfs", {}, [], [], "/workspace", None, None
    )
    for i, have_base in enumerate((False, True)):  # the base made now, then found made
        tmp = tmp_path / f"tmp-{i}"
        tmp.mkdir()
        paths = [lower, last] if not have_base else [last]
        copies = [tmp / f"l{n}.tar.gz" for n in range(len(paths))]
        for src, dest in zip(paths, copies, strict=True):
            shutil.copy(src, dest)
        done = ImageCache._unpack(copies, tmp, slot, image, base, have_base)
        whole = tmp_path / f"whole-{i}"
        unpack_layers([lower, last], whole)
        assert tree(slot / "rootfs") == tree(whole)
        assert UnpackedImage.from_json(json.loads((slot / "image.json").read_text()), slot) == (
            replace(done, rootfs=slot)
        )
        if not over_base:
            assert (done.base, done.top, done.added) == (None, None, ())
        else:
            assert (done.base, done.top) == (str(base), top[0][1].split("/")[0])
            spare = tmp_path / f"spare-{i}"
            prestart._spare_tree(base, spare, done.top)
            prestart._fill(done, spare)
            assert tree(spare) == tree(whole)
            assert (spare / "layers" / "lib.txt").read_text() == "l"  # the base unchanged
        shutil.rmtree(slot)


def test_unpack_refuses_damaged_and_zstd_layers(tmp_path):
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x1f\x8b" + os.urandom(64))
    with pytest.raises(ImageError, match="damaged or not a tar"):
        unpack_layers([garbage], tmp_path / "a")
    zstd = tmp_path / "zstd"
    zstd.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(64))
    with pytest.raises(ImageError, match="zstd"):
        unpack_layers([zstd], tmp_path / "b")


# -- instances -----------------------------------------------------------------------------


@needs_bwrap
@pytest.mark.parametrize("contained", [True, False], ids=["contained", "filesystem-only"])
def test_instance_serves_requests_and_stops_without_leftovers(
    localcloud, built, cache_root, tmp_path, contained
):
    image = unpacked(localcloud, cache_root, *built["hello"])

    async def scenario() -> None:
        spec = spec_for(image, tmp_path / "hello.log")
        spec.contained = contained  # LOCALCLOUD_RUN_ISOLATION=full | filesystem
        instance = await sandbox.start(spec)
        try:
            assert instance.sandboxed
            await instance.wait_ready(30)
            assert await get(instance) == (200, "hello from a localcloud build")
            pids = instance.pids()
            assert len(pids) >= 3  # bwrap, the sandbox's init, the function's server
            if instance.network_ready is not None:  # its pasta, outside the sandbox
                pids.append(instance.network_ready.result())
                assert alive(pids[-1])
        finally:
            await instance.stop(grace=5)
        assert not instance.running
        deadline = time.monotonic() + 10  # pasta leaves on SIGTERM, in its own time
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert [pid for pid in pids if alive(pid)] == []
        with pytest.raises(OSError):
            await instance.connect()
        if instance.cgroup is not None:  # its cgroup went with it
            assert not any(path.exists() for path in instance.cgroup.dirs.values())

    run(scenario())
    assert "[localcloud] starting (sandboxed" in (tmp_path / "hello.log").read_text()


async def namespace_like_an_instance() -> asyncio.subprocess.Process:
    """A process in a namespace like an instance's: nobody's user namespace, its own
    network (kill and wait for it when done)."""
    target = await asyncio.create_subprocess_exec(
        *("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"),
        *("unshare", "--user", "--map-root-user", "--net", "sleep", "60"),
    )
    deadline = time.monotonic() + 10
    while os.readlink(f"/proc/{target.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
        assert time.monotonic() < deadline, "unshare did not enter its namespaces"
        await asyncio.sleep(0.01)
    return target


@pytest.mark.skipif(not sandbox.isolation().network, reason="needs root, pasta and /dev/net/tun")
def test_pastas_left_by_a_killed_localcloud_are_stopped_at_start():
    """pasta keeps a namespace given by PID alive and so never leaves by itself: one whose
    instance is gone (what a SIGKILLed localcloud leaves) is stopped at the next start."""

    async def scenario() -> None:
        target = await namespace_like_an_instance()
        try:
            pasta = await network.attach(target.pid, [])
            assert alive(pasta)
        finally:
            target.kill()
            await target.wait()
        assert alive(pasta)  # the leak
        assert network.reap_orphans() >= 1
        deadline = time.monotonic() + 10
        while alive(pasta) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert not alive(pasta)

    run(scenario())


@pytest.mark.skipif(not sandbox.isolation().network, reason="needs root, pasta and /dev/net/tun")
def test_an_instance_network_acknowledges_at_once_and_the_host_is_unchanged():
    """The loopback routes of an instance's namespace carry ``quickack`` (pasta's writes to
    the instance would otherwise wait for its delayed ACKs); the host's do not change."""
    host_routes = subprocess.run(
        ["ip", "route", "show", "table", "local"], capture_output=True, text=True, check=True
    ).stdout

    async def scenario() -> str:
        target = await namespace_like_an_instance()
        try:
            pasta = await network.attach(target.pid, [])
            try:
                shown = await asyncio.create_subprocess_exec(
                    *("nsenter", f"--net=/proc/{target.pid}/ns/net", "--"),
                    *("ip", "route", "show", "table", "local"),
                    stdout=asyncio.subprocess.PIPE,
                )
                out, _ = await shown.communicate()
                return out.decode()
            finally:
                network.detach(pasta)
        finally:
            target.kill()
            await target.wait()

    routes = {line.split(" dev ")[0]: line for line in run(scenario()).splitlines()}
    assert "quickack 1" in routes["local 127.0.0.1"]
    assert "quickack 1" in routes["local 127.0.0.0/8"]
    after = subprocess.run(
        ["ip", "route", "show", "table", "local"], capture_output=True, text=True, check=True
    ).stdout
    assert after == host_routes
    assert "quickack" not in host_routes


@pytest.mark.skipif(not sandbox.isolation().network, reason="needs root, pasta and /dev/net/tun")
def test_pasta_attaches_once_the_sandbox_has_its_loopback_up():
    """pasta brings an instance's loopback up itself: had it done so before bwrap did, the
    kernel's own 127.0.0.1 would make bwrap's RTM_NEWADDR fail and end the sandbox. So
    the attach waits for the loopback (and not for a process that is gone)."""

    async def scenario() -> None:
        target = await namespace_like_an_instance()
        try:
            waiting = asyncio.ensure_future(network.loopback_up(target.pid, timeout=30))
            await asyncio.sleep(0.2)
            assert not waiting.done()  # lo is down: unshare does not bring it up
            up = await asyncio.create_subprocess_exec(
                *("nsenter", f"--net=/proc/{target.pid}/ns/net", "--"),
                *("ip", "link", "set", "lo", "up"),
            )
            assert await up.wait() == 0
            await asyncio.wait_for(waiting, 5)
        finally:
            target.kill()
            await target.wait()
        await asyncio.wait_for(network.loopback_up(target.pid, timeout=30), 1)  # gone

    run(scenario())


async def until(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


READ_SYSCALL = {"aarch64": "63"}.get(platform.machine(), "0")


def reading_stdin(pid: int) -> bool:
    """Whether a process of the tree under ``pid`` is blocked reading its standard input."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            if f.read().split()[:2] == [READ_SYSCALL, "0x0"]:  # read(0, ...)
                return True
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        return False
    return any(reading_stdin(child) for child in children)


async def spare_of(prestarts: Prestarts, spec: InstanceSpec, seen: list[Path]) -> Path:
    """The tree of the next spare for ``spec`` (not one of ``seen``), once its
    framework is loaded (it waits on its stdin): taken over sooner, the modules it loads
    after the image's tree is in come from that tree."""
    image = spec.image
    key = prestart.spare_key(spec)
    assert key is not None
    await until(lambda: key in prestarts.waiting and prestarts.waiting[key].root not in seen)
    spare = prestarts.waiting[key]
    assert spare.root is not None and image.base is not None
    has = sorted(p.name for p in (Path(image.base) / "workspace").glob("*"))
    assert sorted(p.name for p in (spare.root / "workspace").iterdir()) == has  # the base's
    await until(lambda: reading_stdin(spare.sandbox.child))
    return spare.root


async def answers_of(started: dict[str, sandbox.Instance]) -> dict[str, dict[str, Any]]:
    """What each instance answers once ready (the probe's JSON)."""
    answers = {}
    for name, instance in started.items():
        await instance.wait_ready(30)
        status, text = await get(instance)
        assert status == 200, text
        answers[name] = json.loads(text)
    return answers


def ahead_of(image: UnpackedImage, tmp_path: Path) -> InstanceSpec:
    """What Cloud Run starts when an image is pushed: no revision, no environment yet."""
    return InstanceSpec(image=image, env={}, port=0, log_path=tmp_path / "never-written.log")


def test_only_a_functions_framework_entrypoint_is_started_ahead(tmp_path):
    """What is started ahead: Python's and Node.js's framework entrypoints as the buildpacks
    write them; not another program, nor an image with nothing to run (which its revision
    reports), without an error."""

    def spec(entrypoint: list[str]) -> InstanceSpec:
        image = UnpackedImage("sha256:" + "1" * 64, tmp_path, {}, entrypoint, [], "/", None, None)
        return InstanceSpec(image=image, env={}, port=0, log_path=tmp_path / "x.log")

    main_js = "/layers/nodejs/functions-framework/node_modules/x/build/src/main.js"
    assert prestart.starter(spec(["python3", "-m", "functions_framework"]))[0].name == "python"
    assert prestart.starter(spec(["node", main_js]))[0].name == "nodejs"
    for other in (
        spec([]),
        spec(["python3", "-m", "http.server"]),
        spec(["node", "main.js"]),
        spec(["node", main_js, "--target=x"]),
    ):
        assert prestart.starter(other) is None


@needs_bwrap
def test_an_instance_started_ahead_is_the_instance_started_anew(
    localcloud, built, cache_root, tmp_path
):
    """A revision's first instance that takes over the sandbox started when its image was
    pushed (prestart.py) runs the function as one started anew would: the same
    environment, arguments, import path, working directory and capabilities; its log is
    the revision's."""
    image = unpacked(localcloud, cache_root, *built["probe"])
    paths = json.dumps(["/workspace/main.py", "/tmp"])

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        prestarts = Prestarts()
        started: list[sandbox.Instance] = []
        try:
            prestarts.offer(ahead_of(image, tmp_path))
            await until(lambda: image.digest in prestarts.waiting)
            taken = await prestarts.take(spec_for(image, tmp_path / "ahead.log", PROBE_PATHS=paths))
            assert taken is not None
            started.append(taken)
            assert image.digest not in prestarts.waiting  # taken once
            fresh = await sandbox.start(spec_for(image, tmp_path / "anew.log", PROBE_PATHS=paths))
            started.append(fresh)
            answers = []
            for instance in started:
                await instance.wait_ready(30)
                status, text = await get(instance)
                assert status == 200, text
                answers.append(json.loads(text))
            return answers[0], answers[1]
        finally:
            for instance in started:
                await instance.stop(grace=2)
            await prestarts.close()

    ahead, anew = run(scenario())
    for answer in (ahead, anew):
        assert answer["env"].pop("PORT") != "0"
        answer.pop("pid")
    assert ahead["env"]["K_REVISION"] == "sandbox-test-00001-abc"
    both = {*ahead["env"], *anew["env"]}
    assert sorted(k for k in both if ahead["env"].get(k) != anew["env"].get(k)) == []
    assert ahead == anew
    assert ahead["argv"][0].endswith("functions_framework/__main__.py")
    assert ahead["path"][0] == "/workspace"
    log = (tmp_path / "ahead.log").read_text()
    assert "[localcloud] starting (sandboxed, started ahead" in log
    assert not (tmp_path / "never-written.log").exists()


@needs_bwrap
def test_a_spare_of_a_base_becomes_an_instance_of_the_next_image_over_it(
    localcloud, built, cache_root, tmp_path, monkeypatch
):
    """Once an instance of an image over a base has started, a spare of that base waits
    (prestart.py): the next image over it takes it over, its /workspace linked in, and runs
    as an instance started anew would, also when the function has a module of the name of
    one the framework imported (the sandbox then starts anew in place). A spare that does
    not fit an instance started anew is renewed for it. An instance's copy of the base is
    removed when it exits; a waiting spare's when it is renewed or localcloud stops."""
    monkeypatch.setattr(prestart, "SPARE_DELAY", 0.0)
    probe = unpacked(localcloud, cache_root, *built["probe"])
    shadow = unpacked(localcloud, cache_root, *built["shadow"])
    assert probe.base is not None and probe.top == "workspace"
    assert (shadow.base, shadow.top) == (probe.base, probe.top)
    paths = json.dumps(["/workspace/main.py", "/workspace/calendar.py", "/tmp"])
    roots: list[Path] = []

    async def next_spare(prestarts: Prestarts) -> None:
        roots.append(await spare_of(prestarts, spec_for(probe, tmp_path / "x.log"), roots))

    async def scenario() -> dict[str, dict[str, Any]]:
        prestarts = Prestarts(tmp_path / "spares")
        started: dict[str, sandbox.Instance] = {}

        async def start(name: str, image: UnpackedImage, ahead: bool) -> None:
            spec = spec_for(image, tmp_path / f"{name}.log", PROBE_PATHS=paths)
            started[name] = await (prestarts.start(spec) if ahead else sandbox.start(spec))

        try:
            await start("anew", probe, True)  # no spare yet: started anew, a spare planned
            await next_spare(prestarts)
            await start("ahead", probe, True)
            assert started["ahead"].scratch == roots[0]
            await next_spare(prestarts)  # planned again after the take-over
            other_limits = spec_for(shadow, tmp_path / "x.log")
            other_limits.limits = cgroups.Limits(memory=256 * 1024 * 1024, cpu=1.0, pids=1024)
            assert await prestarts.take(other_limits) is None  # a spare is of its limits
            await start("shadow-ahead", shadow, True)
            assert started["shadow-ahead"].scratch == roots[1]
            await start("shadow-anew", shadow, False)
            await next_spare(prestarts)
            # One that does not fit the instance just started anew is renewed for it.
            seeded = spec_for(probe, tmp_path / "seeded.log", PROBE_PATHS=paths, PYTHONHASHSEED="0")
            started["seeded"] = await prestarts.start(seeded)
            assert started["seeded"].scratch is None
            await next_spare(prestarts)
            again = spec_for(probe, tmp_path / "again.log", PROBE_PATHS=paths, PYTHONHASHSEED="0")
            started["seeded-ahead"] = await prestarts.start(again)
            assert started["seeded-ahead"].scratch == roots[-1]
            answers = await answers_of(started)
            assert all(i.scratch.exists() for i in started.values() if i.scratch is not None)
            await until(lambda: not roots[2].exists(), 10)  # the spare renewed
        finally:
            for instance in started.values():
                await instance.stop(grace=2)
            await prestarts.close()
        await until(lambda: not any(root.exists() for root in roots), 10)
        return answers

    answers = run(scenario())
    for answer in answers.values():
        answer["env"].pop("PORT")
        answer.pop("pid")
    assert answers["ahead"] == answers["anew"]
    assert answers["shadow-ahead"] == answers["shadow-anew"]
    assert answers["shadow-ahead"]["calendar"] is True
    assert answers["ahead"]["calendar"] is False
    assert answers["shadow-ahead"]["exists"]["/workspace/calendar.py"]
    for name in ("ahead", "shadow-ahead"):
        assert "started ahead" in (tmp_path / f"{name}.log").read_text()
    assert "started ahead" not in (tmp_path / "anew.log").read_text()


def test_no_spare_follows_an_instance_with_spares_off(localcloud, built, cache_root, tmp_path):
    """``LOCALCLOUD_RUN_SPARES=false`` (the autoscaler built with ``spares=False``): an
    instance of an image over a base starts as before, and nothing waits after it."""
    probe = unpacked(localcloud, cache_root, *built["probe"])
    assert probe.base is not None
    spec = spec_for(probe, tmp_path / "x.log")

    async def scenario() -> None:
        cache = ImageCache(tmp_path / "cache", "127.0.0.1:1")  # no image is fetched
        prestarts = Autoscaler(cache, 300, spares=False).prestarts
        instance = await prestarts.start(spec)
        try:
            await instance.wait_ready(30)
            await asyncio.sleep(prestart.SPARE_DELAY + 0.5)
            assert not prestarts.waiting and not prestarts._starting
            assert not prestarts._planned
        finally:
            await instance.stop(grace=2)
            await prestarts.close()

    run(scenario())
    assert not (tmp_path / "cache" / "spares").exists()


def test_a_spare_still_starting_when_localcloud_closes_leaves_nothing(
    localcloud, built, cache_root, tmp_path, monkeypatch
):
    """Closing while a spare's tree is copied or its sandbox spawned: it ends once
    spawned, its tree removed, its sandbox stopped."""
    monkeypatch.setattr(prestart, "SPARE_DELAY", 0.0)
    probe = unpacked(localcloud, cache_root, *built["probe"])
    spec = spec_for(probe, tmp_path / "x.log")
    key = prestart.spare_key(spec)

    async def scenario() -> None:
        prestarts = Prestarts(tmp_path / "spares")
        instance = await prestarts.start(spec)
        try:
            await until(lambda: key in prestarts._starting, 5)
            await prestarts.close()
            assert not prestarts.waiting and not prestarts._starting
        finally:
            await instance.stop(grace=2)

    run(scenario())
    assert not any((tmp_path / "spares").glob("*/*"))  # no spare's tree left
    spares = str(tmp_path / "spares").encode()
    running = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if spares in cmdline.read_bytes():
                running.append(cmdline.parent.name)
    assert not running  # no spare's sandbox left


NODE_PROBE = """\
exports.probe = (req, res) => {
  res.send(JSON.stringify({
    argv: process.argv,
    execArgv: process.execArgv,
    main: require.main && require.main.filename,
    cwd: process.cwd(),
    env: process.env,
    paths: module.paths,
  }));
};
"""


@pytest.fixture(scope="module")
def node_probe(localcloud: Any) -> tuple[str, str]:
    """A Node.js function that reports how it was started: (image, digest)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed to build Node.js functions")
    major = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    runtime = "nodejs" + major.stdout.strip().removeprefix("v").split(".")[0]
    clients = Clients(Environment.from_env(localcloud.env))
    bucket = clients.storage.create_bucket(f"sandbox-node-{uuid.uuid4().hex[:8]}")
    package = '{"name": "probe", "version": "1.0.0", "main": "index.js"}'
    blob = bucket.blob("probe.zip")
    blob.upload_from_string(zip_tree({"index.js": NODE_PROBE, "package.json": package}))
    image = f"us-central1-docker.pkg.dev/{PROJECT}/functions/sandbox-node-{uuid.uuid4().hex[:8]}"
    env = {"GOOGLE_FUNCTION_TARGET": "probe", "GOOGLE_RUNTIME": runtime}
    build = pack_build((bucket.name, blob.name, blob.generation), image, env)
    operation = clients.cloud_build.create_build(project_id=PROJECT, build=build)
    with contextlib.suppress(exceptions.GoogleAPICallError):
        operation.result(timeout=170)
    done = clients.cloud_build.get_build(project_id=PROJECT, id=operation.metadata.build.id)
    assert done.status == S.SUCCESS, done.status_detail
    return image, done.results.images[0].digest


@needs_bwrap
def test_a_nodejs_spare_becomes_an_instance_as_started_anew(
    localcloud, node_probe, cache_root, tmp_path, monkeypatch
):
    """Node.js: a spare of the framework's base, its modules loaded, becomes an instance
    that runs as ``node main.js`` started anew does (argv, execArgv, require.main, the
    environment, the module paths)."""
    monkeypatch.setattr(prestart, "SPARE_DELAY", 0.0)
    image = unpacked(localcloud, cache_root, *node_probe)
    assert image.base is not None and image.top == "workspace"

    async def scenario() -> dict[str, dict[str, Any]]:
        prestarts = Prestarts(tmp_path / "spares")
        started: dict[str, sandbox.Instance] = {}
        try:
            started["anew"] = await prestarts.start(spec_for(image, tmp_path / "anew.log"))
            root = await spare_of(prestarts, spec_for(image, tmp_path / "x.log"), [])
            started["ahead"] = await prestarts.start(spec_for(image, tmp_path / "ahead.log"))
            assert started["ahead"].scratch == root
            answers = await answers_of(started)
        finally:
            for instance in started.values():
                await instance.stop(grace=2)
            await prestarts.close()
        return answers

    answers = run(scenario())
    for answer in answers.values():
        answer["env"].pop("PORT")
    assert answers["ahead"] == answers["anew"]
    assert answers["ahead"]["execArgv"] == []
    assert answers["ahead"]["main"] == answers["ahead"]["argv"][1]
    assert answers["ahead"]["main"].endswith("/functions-framework/build/src/main.js")
    assert "started ahead" in (tmp_path / "ahead.log").read_text()


@needs_bwrap
def test_a_sandbox_started_ahead_serves_only_an_instance_started_the_same_way(
    localcloud, built, cache_root, tmp_path, monkeypatch
):
    """Other limits, another command, a variable Python reads as it starts: the instance
    starts anew and the sandbox started ahead waits on. It is stopped, leaving no process,
    when nothing takes it over within its time, and when localcloud stops."""
    image = unpacked(localcloud, cache_root, *built["hello"])

    def variants() -> list[InstanceSpec]:
        other_limits = spec_for(image, tmp_path / "x.log")
        other_limits.limits = cgroups.Limits(memory=256 * 1024 * 1024, cpu=1.0, pids=1024)
        command = spec_for(image, tmp_path / "x.log")
        command.command = ["python3", "-m", "functions_framework"]
        return [
            other_limits,
            command,
            spec_for(image, tmp_path / "x.log", PYTHONHASHSEED="0"),
            spec_for(image, tmp_path / "x.log", PYTHONPATH="/workspace"),
            spec_for(image, tmp_path / "x.log", LANG="C"),
        ]

    async def started_ahead(prestarts: Prestarts) -> tuple[Any, list[int]]:
        """The sandbox started ahead of ``image``, and its processes (bwrap, its init)."""
        prestarts.offer(ahead_of(image, tmp_path))
        await until(lambda: image.digest in prestarts.waiting)
        waiting = prestarts.waiting[image.digest]
        return waiting, [waiting.sandbox.process.pid, waiting.sandbox.child]

    async def scenario() -> None:
        prestarts = Prestarts()
        try:
            waiting, pids = await started_ahead(prestarts)
            assert all(alive(pid) for pid in pids)
            for spec in variants():
                assert await prestarts.take(spec) is None
            assert prestarts.waiting[image.digest] is waiting
        finally:
            await prestarts.close()
        await until(lambda: not any(alive(pid) for pid in pids), 10)
        assert prestarts.waiting == {}

        monkeypatch.setattr(prestart, "TTL", 0.2)
        prestarts = Prestarts()
        try:
            _, pids = await started_ahead(prestarts)
            await until(lambda: image.digest not in prestarts.waiting, 10)
            await until(lambda: not any(alive(pid) for pid in pids), 10)
            fresh = await prestarts.start(spec_for(image, tmp_path / "hello.log"))
            try:  # none waits: a new instance
                await fresh.wait_ready(30)
                assert await get(fresh) == (200, "hello from a localcloud build")
            finally:
                await fresh.stop(grace=2)
            assert "started ahead" not in (tmp_path / "hello.log").read_text()
        finally:
            await prestarts.close()

    run(scenario())


@needs_bwrap
def test_sandbox_hides_the_host(localcloud, built, cache_root, tmp_path):
    image = unpacked(localcloud, cache_root, *built["probe"])
    token = uuid.uuid4().hex[:10]
    home_secret = Path.home() / f".localcloud-sandbox-sentinel-{token}"
    tmp_secret = Path("/tmp") / f"localcloud-sandbox-sentinel-{token}"
    hidden = [
        str(home_secret),
        str(tmp_secret),
        str(localcloud.config.data_dir),
        str(cache_root),
        str(Path(__file__).resolve()),
    ]
    visible = ["/workspace/main.py", "/layers/python/functions-framework/lib", "/etc/hosts"]
    # TLS roots are there for calls to Google APIs; the host's TLS private keys are not.
    visible += [p for p in ["/etc/ssl/certs/ca-certificates.crt"] if os.path.exists(p)]
    hidden += [p for p in ["/etc/ssl/private", "/etc/shadow"] if os.path.exists(p)]

    async def scenario() -> dict[str, Any]:
        spec = spec_for(image, tmp_path / "probe.log", PROBE_PATHS=json.dumps(hidden + visible))
        instance = await sandbox.start(spec)
        try:
            await instance.wait_ready(30)
            status, body = await get(instance)
            assert status == 200, body
            return {**json.loads(body), "port": instance.port}
        finally:
            await instance.stop(grace=5)

    home_secret.write_text("the host's home")
    tmp_secret.write_text("the host's /tmp")
    try:
        report = run(scenario())
    finally:
        home_secret.unlink()
        tmp_secret.unlink()
    assert report["exists"] == {**dict.fromkeys(hidden, False), **dict.fromkeys(visible, True)}
    assert report["pid"] < 20  # its own PID namespace: bwrap's init is 1
    assert report["cwd"] == "/workspace"
    assert report["workspace_writable"] is False
    assert int(report["caps"], 16) == 0
    env = report["env"]
    assert env["PORT"] == str(report["port"])
    assert env["K_SERVICE"] == "sandbox-test"
    assert env["GOOGLE_CLOUD_PROJECT"] == PROJECT
    assert env["GOOGLE_FUNCTION_TARGET"] == "probe"  # from the image's Env
    assert "PUBSUB_EMULATOR_HOST" not in env  # only what the spec passes: not the host's env
    assert "HOME" not in env


@needs_bwrap
def test_a_function_failing_at_import_is_reported_with_its_log(
    localcloud, built, cache_root, tmp_path
):
    image = unpacked(localcloud, cache_root, *built["crash"])

    async def scenario() -> None:
        instance = await sandbox.start(spec_for(image, tmp_path / "crash.log"))
        try:
            with pytest.raises(SandboxError) as caught:
                await instance.wait_ready(30)
        finally:
            await instance.stop(grace=1)
        message = str(caught.value)
        assert "exited with code" in message
        assert "boom: this function fails at import" in message
        assert instance.returncode not in (None, 0)
        assert "boom" in instance.log_tail(5)

    run(scenario())


def test_without_bubblewrap_instances_run_only_when_unsandboxed_is_chosen(
    localcloud, built, cache_root, tmp_path, monkeypatch
):
    image = unpacked(localcloud, cache_root, *built["hello"])
    monkeypatch.setattr(sandbox, "bwrap_available", lambda: None)

    async def scenario() -> None:
        with pytest.raises(SandboxError, match="LOCALCLOUD_RUN_UNSANDBOXED=true"):
            await sandbox.start(spec_for(image, tmp_path / "refused.log"))
        spec = spec_for(image, tmp_path / "direct.log")
        spec.unsandboxed = True
        instance = await sandbox.start(spec)
        try:
            assert not instance.sandboxed
            await instance.wait_ready(30)
            assert await get(instance) == (200, "hello from a localcloud build")
            pids = instance.pids()
        finally:
            await instance.stop(grace=5)
        assert [pid for pid in pids if alive(pid)] == []

    run(scenario())


def test_command_and_args_follow_cloud_run_rules(tmp_path):
    image = UnpackedImage(
        digest="sha256:" + "1" * 64,
        rootfs=tmp_path,
        env={"A": "image", "B": "image"},
        entrypoint=["python3", "-m", "functions_framework"],
        cmd=["--debug"],
        working_dir="/workspace",
        runtime=None,
        exposed_port=8080,
    )
    spec = InstanceSpec(image=image, env={"B": "spec", "PORT": "1"}, port=9999, log_path=tmp_path)
    assert sandbox.container_argv(spec) == ["python3", "-m", "functions_framework", "--debug"]
    assert sandbox.instance_env(spec) == {"A": "image", "B": "spec", "PORT": "9999"}
    spec.args = ["--port", "1"]
    assert sandbox.container_argv(spec) == ["python3", "-m", "functions_framework", "--port", "1"]
    spec.command, spec.args = ["gunicorn"], None
    assert sandbox.container_argv(spec) == ["gunicorn"]  # a command drops the image's Cmd
    spec.args = ["main:app"]
    assert sandbox.container_argv(spec) == ["gunicorn", "main:app"]

"""The OCI distribution client against the real local registry, and image-name parsing.

Expectations come from the OCI distribution spec
(https://github.com/opencontainers/distribution-spec/blob/main/spec.md) and Artifact
Registry's naming rules (https://cloud.google.com/artifact-registry/docs/docker/names).
The registry is the Debian ``docker-registry`` (CNCF distribution 2.8) that the session's
localcloud runs; every test uses its own repositories, so tests can run in any order.
pytest-asyncio is not used: each test drives its coroutine with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import tarfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from localcloud import testing
from localcloud.registry.client import (
    DOCKER_MANIFEST_V2,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    DigestMismatchError,
    RegistryClient,
    RegistryError,
)
from localcloud.registry.names import ImageNameError, ImageRef, parse_image

T = TypeVar("T")
PROJECT = "local-project"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def new_repo(label: str = "img", create: bool = True) -> str:
    """An image path in Artifact Registry's shape, ``PROJECT/REPOSITORY/IMAGE``, in a new
    repository of its own (made with Artifact Registry's API unless ``create`` is false:
    the registry refuses any other)."""
    repository = f"test-{uuid.uuid4().hex[:10]}"
    if create:
        name = f"projects/{PROJECT}/locations/us-central1/repositories/{repository}"
        client = testing.create_repository(os.environ["LOCALCLOUD_GRPC_HOST"], name)
        assert client is not None
        client.transport.close()
    return f"{PROJECT}/{repository}/{label}"


def make_layer(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A gzip-compressed tar layer and its diff_id (the sha256 of the uncompressed tar)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    return gzip.compress(tar_bytes, mtime=0), sha256(tar_bytes)


def make_config(diff_ids: list[str]) -> bytes:
    doc = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    return json.dumps(doc, sort_keys=True).encode()


def make_manifest(config: tuple[str, int], layers: list[tuple[str, int]]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config[0], "size": config[1]},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": d, "size": s} for d, s in layers],
    }
    return json.dumps(doc, indent=2).encode()


class Recorder:
    """Records each request's method, path, query and status through an aiohttp trace."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, str], int]] = []
        self.trace = aiohttp.TraceConfig()
        self.trace.on_request_end.append(self._end)

    async def _end(self, _session: Any, _ctx: Any, params: aiohttp.TraceRequestEndParams) -> None:
        url = params.url
        self.calls.append((params.method, url.path, dict(url.query), params.response.status))

    def methods(self) -> list[str]:
        return [c[0] for c in self.calls]


def run_with_client(
    address: str,
    body: Callable[[RegistryClient, Recorder], Awaitable[T]],
) -> T:
    """Run ``body`` with a client whose session is traced by a Recorder."""

    async def main() -> T:
        recorder = Recorder()
        async with (
            aiohttp.ClientSession(trace_configs=[recorder.trace]) as session,
            RegistryClient(address, session) as client,
        ):
            return await body(client, recorder)

    return asyncio.run(main())


@pytest.fixture
def registry(localcloud: testing.Instance) -> str:
    return localcloud.config.registry_address


async def push_image(client: RegistryClient, repo: str, tag: str) -> dict[str, Any]:
    """Push two layers, a config and a manifest; return what was pushed."""
    layer1, diff1 = make_layer({"hello": b"hello " + uuid.uuid4().bytes})
    layer2, diff2 = make_layer({"etc/greeting": b"world " + uuid.uuid4().bytes})
    pushed_layers = [await client.push_blob(repo, layer1), await client.push_blob(repo, layer2)]
    config = make_config([diff1, diff2])
    config_desc = await client.push_blob(repo, config)
    manifest = make_manifest(config_desc, pushed_layers)
    digest = await client.put_manifest(repo, tag, manifest, OCI_MANIFEST)
    return {
        "layers": [layer1, layer2],
        "layer_descs": pushed_layers,
        "config": config,
        "config_desc": config_desc,
        "manifest": manifest,
        "digest": digest,
    }


# -- client --------------------------------------------------------------------------


def test_ping(registry: str) -> None:
    async def main() -> tuple[bool, bool]:
        async with (
            RegistryClient(registry) as up,
            RegistryClient(f"127.0.0.1:{testing.free_port()}", timeout=2) as down,
        ):
            return await up.ping(), await down.ping()

    assert asyncio.run(main()) == (True, False)


def test_push_image_then_pull_manifest_by_tag_and_by_digest(registry: str) -> None:
    repo = new_repo()

    async def body(client: RegistryClient, _rec: Recorder) -> None:
        image = await push_image(client, repo, "v1")
        assert image["digest"] == sha256(image["manifest"])
        for (digest, size), layer in zip(image["layer_descs"], image["layers"], strict=True):
            assert (digest, size) == (sha256(layer), len(layer))
            assert await client.blob_exists(repo, digest) == size

        by_tag = await client.get_manifest(repo, "v1")
        by_digest = await client.get_manifest(repo, image["digest"])
        assert by_tag == by_digest == (image["manifest"], OCI_MANIFEST, image["digest"])

        manifest = json.loads(by_digest[0])
        config = await client.get_blob_bytes(repo, manifest["config"]["digest"])
        assert config == image["config"]
        assert json.loads(config)["rootfs"]["diff_ids"][0].startswith("sha256:")

    run_with_client(registry, body)


def test_oci_manifest_is_not_served_to_a_docker_only_accept_header(registry: str) -> None:
    """distribution 2.8 answers 404 MANIFEST_UNKNOWN, not a conversion, when the client
    does not accept OCI manifests; pullers must therefore always send the OCI types."""
    repo = new_repo()

    async def body(client: RegistryClient, _rec: Recorder) -> None:
        await push_image(client, repo, "v1")
        with pytest.raises(RegistryError) as info:
            await client.get_manifest(repo, "v1", accept=(DOCKER_MANIFEST_V2,))
        assert info.value.status == 404
        assert info.value.codes == ["MANIFEST_UNKNOWN"]
        assert "accept header does not support OCI manifests" in str(info.value)

    run_with_client(registry, body)


def test_manifest_media_type_must_match_content_type(registry: str) -> None:
    repo = new_repo()
    manifest = make_manifest((sha256(b"{}"), 2), [])

    async def body(client: RegistryClient, rec: Recorder) -> None:
        with pytest.raises(ValueError, match="being sent as"):
            await client.put_manifest(repo, "v1", manifest, DOCKER_MANIFEST_V2)
        assert rec.calls == []  # refused before sending: the registry only says "manifest invalid"

    run_with_client(registry, body)


def test_manifest_referencing_a_missing_blob_is_refused(registry: str) -> None:
    repo = new_repo()
    missing = sha256(uuid.uuid4().bytes)

    async def body(client: RegistryClient, _rec: Recorder) -> None:
        config_desc = await client.push_blob(repo, make_config([]))
        manifest = make_manifest(config_desc, [(missing, 10)])
        with pytest.raises(RegistryError) as info:
            await client.put_manifest(repo, "v1", manifest, OCI_MANIFEST)
        assert info.value.status == 400
        assert info.value.codes == ["MANIFEST_BLOB_UNKNOWN"]
        assert missing in str(info.value)

    run_with_client(registry, body)


def test_pull_blob_to_disk_streams_and_verifies(
    registry: str, localcloud: testing.Instance, tmp_path: Path
) -> None:
    repo = new_repo()
    content = uuid.uuid4().bytes * 50_000  # 800 kB: several chunks each way
    source = tmp_path / "layer.tar.gz"
    source.write_bytes(content)
    dest = tmp_path / "out" / "pulled"
    dest.parent.mkdir()

    async def body(client: RegistryClient, _rec: Recorder) -> str:
        digest, size = await client.push_blob(repo, source)  # digest computed from the file
        assert (digest, size) == (sha256(content), len(content))
        assert await client.get_blob(repo, digest, dest) == dest
        assert dest.read_bytes() == content
        return digest

    digest = run_with_client(registry, body)

    # Corrupt the registry's stored copy (same length, other bytes): the pull must fail
    # and leave neither the destination nor a partial file behind.
    hex_ = digest.removeprefix("sha256:")
    stored = (
        localcloud.config.data_dir
        / "registry/data/docker/registry/v2/blobs/sha256"
        / hex_[:2]
        / hex_
        / "data"
    )
    stored.write_bytes(b"x" * len(content))
    corrupt_dest = tmp_path / "out" / "corrupt"

    async def pull_corrupt(client: RegistryClient, _rec: Recorder) -> None:
        with pytest.raises(DigestMismatchError, match=digest):
            await client.get_blob(repo, digest, corrupt_dest)
        with pytest.raises(DigestMismatchError):
            await client.get_blob_bytes(repo, digest)

    run_with_client(registry, pull_corrupt)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["pulled"]


def test_pushing_an_existing_blob_is_skipped(registry: str) -> None:
    repo = new_repo()
    layer, _ = make_layer({"f": uuid.uuid4().bytes})

    async def body(client: RegistryClient, rec: Recorder) -> None:
        first = await client.push_blob(repo, layer)
        assert rec.methods() == ["HEAD", "POST", "PUT"]
        rec.calls.clear()
        again = await client.push_blob(repo, layer, sha256(layer))
        assert again == first
        assert rec.methods() == ["HEAD"]  # only the existence check; nothing uploaded

    run_with_client(registry, body)


def test_cross_repository_mount(registry: str) -> None:
    repo_a, repo_b, repo_c = new_repo("a"), new_repo("b"), new_repo("c")
    layer, _ = make_layer({"shared": uuid.uuid4().bytes})

    async def body(client: RegistryClient, rec: Recorder) -> None:
        digest, size = await client.push_blob(repo_a, layer)
        # Blobs are linked per repository: B cannot see A's blob before the mount.
        assert await client.blob_exists(repo_b, digest) is None
        rec.calls.clear()

        assert await client.push_blob(repo_b, layer, mount_from=repo_a) == (digest, size)
        # distribution 2.8 without auth mounts directly: the POST answers 201 Created and
        # no content is uploaded (no PUT).
        assert [(m, s) for m, _p, _q, s in rec.calls] == [("HEAD", 404), ("POST", 201)]
        assert rec.calls[1][2] == {"mount": digest, "from": repo_a}
        assert await client.blob_exists(repo_b, digest) == size

        # Mounting from a repository without the blob: the registry opens an upload
        # session instead (202) and the client uploads through it.
        other, _ = make_layer({"other": uuid.uuid4().bytes})
        rec.calls.clear()
        other_digest, _ = await client.push_blob(repo_c, other, mount_from=repo_a)
        assert [(m, s) for m, _p, _q, s in rec.calls] == [
            ("HEAD", 404),
            ("POST", 202),
            ("PUT", 201),
        ]
        assert await client.blob_exists(repo_c, other_digest) == len(other)

    run_with_client(registry, body)


def test_digest_mismatch_is_detected(registry: str, tmp_path: Path) -> None:
    repo = new_repo()
    content = uuid.uuid4().bytes
    wrong = sha256(b"something else " + content)
    source = tmp_path / "blob"
    source.write_bytes(content)

    async def body(client: RegistryClient, rec: Recorder) -> None:
        # In-memory content is hashed by the client: refused before anything is sent.
        with pytest.raises(DigestMismatchError, match=wrong):
            await client.push_blob(repo, content, wrong)
        assert rec.calls == []

        # A file with a declared digest is verified by the registry while receiving it.
        with pytest.raises(RegistryError) as info:
            await client.push_blob(repo, source, wrong)
        assert info.value.status == 400
        assert info.value.codes == ["DIGEST_INVALID"]
        assert wrong in str(info.value)
        assert await client.blob_exists(repo, wrong) is None
        assert await client.blob_exists(repo, sha256(content)) is None

    run_with_client(registry, body)


def test_unknown_manifest_and_repository_are_404(registry: str) -> None:
    repo = new_repo()

    async def body(client: RegistryClient, _rec: Recorder) -> None:
        await push_image(client, repo, "v1")
        with pytest.raises(RegistryError) as info:
            await client.get_manifest(repo, "no-such-tag")
        assert info.value.status == 404
        assert info.value.codes == ["MANIFEST_UNKNOWN"]
        assert "no-such-tag" in str(info.value)

        with pytest.raises(RegistryError) as info:
            await client.get_manifest(repo, sha256(b"nothing"))
        assert info.value.status == 404

        with pytest.raises(RegistryError) as info:
            await client.get_manifest(new_repo(), "v1")
        assert info.value.status == 404
        # The spec allows NAME_UNKNOWN here; distribution 2.8 says MANIFEST_UNKNOWN for a
        # repository it has never seen (tags/list says NAME_UNKNOWN, see below).
        assert info.value.codes == ["MANIFEST_UNKNOWN"]

    run_with_client(registry, body)


def test_tags_listing_and_manifest_delete(registry: str) -> None:
    repo = new_repo()

    async def body(client: RegistryClient, _rec: Recorder) -> None:
        image = await push_image(client, repo, "v1")
        for tag in ("latest", "v1.0.1", "Release_2"):
            await client.put_manifest(repo, tag, image["manifest"], OCI_MANIFEST)
        assert sorted(await client.tags(repo)) == sorted(["v1", "latest", "v1.0.1", "Release_2"])

        with pytest.raises(RegistryError) as info:
            await client.tags(new_repo())
        assert (info.value.status, info.value.codes) == (404, ["NAME_UNKNOWN"])

        # Deleting by digest removes the manifest and, in distribution 2.8, every tag
        # pointing at it; the blobs stay until garbage collection.
        await client.delete_manifest(repo, image["digest"])
        with pytest.raises(RegistryError) as info:
            await client.get_manifest(repo, image["digest"])
        assert info.value.status == 404
        assert await client.tags(repo) == []
        digest, size = image["layer_descs"][0]
        assert await client.blob_exists(repo, digest) == size

    run_with_client(registry, body)


def test_invalid_repository_and_reference_are_refused_before_sending(registry: str) -> None:
    async def body(client: RegistryClient, rec: Recorder) -> None:
        with pytest.raises(ImageNameError, match="repository name"):
            await client.tags("local-project/../etc")
        with pytest.raises(ImageNameError, match="digest"):
            await client.blob_exists(new_repo(), "sha256:abc")
        with pytest.raises(ImageNameError, match="tag"):
            await client.get_manifest(new_repo(), "-bad")
        assert rec.calls == []

    run_with_client(registry, body)


# -- names ---------------------------------------------------------------------------

DIGEST = "sha256:" + "ab" * 32

GOOD = [
    (
        "us-central1-docker.pkg.dev/local-project/functions/hello",
        (
            "us-central1-docker.pkg.dev",
            "us-central1",
            "local-project",
            "functions",
            "hello",
            None,
            None,
        ),
    ),
    (
        "europe-west4-docker.pkg.dev/my-project-123/repo-1/team/hello:v1.2_rc-3",
        (
            "europe-west4-docker.pkg.dev",
            "europe-west4",
            "my-project-123",
            "repo-1",
            "team/hello",
            "v1.2_rc-3",
            None,
        ),
    ),
    (
        f"us-docker.pkg.dev/local-project/functions/hello@{DIGEST}",
        ("us-docker.pkg.dev", "us", "local-project", "functions", "hello", None, DIGEST),
    ),
    (
        f"asia-docker.pkg.dev/abcdef/r/a.b/c__d/e--f:latest@{DIGEST}",
        ("asia-docker.pkg.dev", "asia", "abcdef", "r", "a.b/c__d/e--f", "latest", DIGEST),
    ),
    (
        "northamerica-northeast1-docker.pkg.dev/local-project/functions/hello:_tag",
        (
            "northamerica-northeast1-docker.pkg.dev",
            "northamerica-northeast1",
            "local-project",
            "functions",
            "hello",
            "_tag",
            None,
        ),
    ),
]


@pytest.mark.parametrize(("text", "expected"), GOOD, ids=[g[0][:60] for g in GOOD])
def test_parse_good_references(text: str, expected: tuple[str | None, ...]) -> None:
    ref = parse_image(text)
    assert (
        ref.host,
        ref.location,
        ref.project,
        ref.repository,
        ref.image,
        ref.tag,
        ref.digest,
    ) == expected
    assert str(ref) == text
    assert ref.path == f"{ref.project}/{ref.repository}/{ref.image}"
    assert parse_image(str(ref)) == ref


# (reference, text the error message must contain: the bad part)
BAD = [
    ("", "empty"),
    (" us-docker.pkg.dev/local-project/r/i", "whitespace"),
    ("https://us-docker.pkg.dev/local-project/r/i", "scheme"),
    ("gcr.io/local-project/hello", "'gcr.io'"),
    ("docker.io/library/hello:latest", "'docker.io'"),
    ("localhost:5000/local-project/r/i", "'localhost:5000'"),
    ("hello", "no host"),
    ("us-docker.pkg.dev", "project, a repository and an image"),
    ("/local-project/r/i", "no host"),
    ("US-docker.pkg.dev/local-project/r/i", "location 'US'"),
    ("us-central-docker.pkg.dev/local-project/r/i", "location 'us-central'"),
    ("mars-docker.pkg.dev/local-project/r/i", "location 'mars'"),
    ("us-docker.pkg.dev/local-project/functions", "project, a repository and an image"),
    ("us-docker.pkg.dev/local-project//hello", "project, a repository and an image"),
    ("us-docker.pkg.dev/short/functions/hello", "project id 'short'"),
    ("us-docker.pkg.dev/My-Project/functions/hello", "project id 'My-Project'"),
    ("us-docker.pkg.dev/1project/functions/hello", "project id '1project'"),
    ("us-docker.pkg.dev/project-/functions/hello", "project id 'project-'"),
    ("us-docker.pkg.dev/" + "p" * 31 + "/functions/hello", "project id 'ppp"),
    ("us-docker.pkg.dev/local-project/Functions/hello", "repository id 'Functions'"),
    ("us-docker.pkg.dev/local-project/1repo/hello", "repository id '1repo'"),
    ("us-docker.pkg.dev/local-project/repo_x/hello", "repository id 'repo_x'"),
    ("us-docker.pkg.dev/local-project/repo-/hello", "repository id 'repo-'"),
    ("us-docker.pkg.dev/local-project/r/Hello", "component 'Hello'"),
    ("us-docker.pkg.dev/local-project/r/team//hello", "component ''"),
    ("us-docker.pkg.dev/local-project/r/hello-", "component 'hello-'"),
    ("us-docker.pkg.dev/local-project/r/a___b", "component 'a___b'"),
    ("us-docker.pkg.dev/local-project/r/.hidden", "component '.hidden'"),
    ("us-docker.pkg.dev/local-project/r/hello:", "tag ''"),
    ("us-docker.pkg.dev/local-project/r/hello:-v1", "tag '-v1'"),
    ("us-docker.pkg.dev/local-project/r/hello:v1:v2", "tag 'v1:v2'"),
    ("us-docker.pkg.dev/local-project/r/hello:" + "t" * 129, "tag 'ttt"),
    ("us-docker.pkg.dev/local-project/r:x/hello", "':' inside its path"),
    ("us-docker.pkg.dev/local-project/r/hello@sha256:abc", "digest 'sha256:abc'"),
    ("us-docker.pkg.dev/local-project/r/hello@md5:" + "a" * 32, "digest 'md5:"),
    (f"us-docker.pkg.dev/local-project/r/hello@{DIGEST.upper()}", "digest 'SHA256:"),
    (f"us-docker.pkg.dev/local-project/r/hello@{DIGEST}@{DIGEST}", "more than one '@'"),
]


@pytest.mark.parametrize(("text", "names"), BAD, ids=[b[0][:60] or "empty" for b in BAD])
def test_parse_bad_references(text: str, names: str) -> None:
    with pytest.raises(ImageNameError) as info:
        parse_image(text)
    assert names in str(info.value)
    assert isinstance(info.value, ValueError)


def test_image_ref_helpers_validate() -> None:
    ref = parse_image("us-central1-docker.pkg.dev/local-project/functions/team/hello:v1")
    assert ref.reference == "v1"
    pinned = ref.with_digest(DIGEST)
    assert (
        str(pinned) == f"us-central1-docker.pkg.dev/local-project/functions/team/hello:v1@{DIGEST}"
    )
    assert pinned.reference == DIGEST
    assert (
        str(ref.with_tag("v2"))
        == "us-central1-docker.pkg.dev/local-project/functions/team/hello:v2"
    )
    assert parse_image("us-docker.pkg.dev/local-project/r/i").reference == "latest"
    with pytest.raises(ImageNameError, match="digest 'sha256:nope'"):
        ref.with_digest("sha256:nope")
    with pytest.raises(ImageNameError, match="tag 'a b'"):
        ref.with_tag("a b")
    with pytest.raises(ImageNameError, match=r"host 'gcr\.io'"):
        ImageRef("gcr.io", "local-project", "r", "i", None, None)
    with pytest.raises(ImageNameError, match="characters; the registry allows 255"):
        ImageRef("us-docker.pkg.dev", "local-project", "r", "/".join(["abcdefghij"] * 23))

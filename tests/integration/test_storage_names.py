"""Cloud Storage keeps Google's rules for names and metadata, and no name reaches the host.

Issue 12, findings 3 and 4. Google accepts any object name of 1 to 1,024 bytes of UTF-8
except names with a carriage return or line feed, ``.``, ``..`` and names under
``.well-known/acme-challenge/`` (https://cloud.google.com/storage/docs/objects#naming), so
``../../x`` and ``a/../../b`` are ordinary names, and 8 KiB of custom metadata, keys and
values (https://cloud.google.com/storage/quotas). What Google accepts must be stored and
served without touching anything outside the data directory; what it refuses gets HTTP 400
with Google's JSON error shape and never a host path; a failed write leaves the object it
would have replaced as it was (https://cloud.google.com/storage/docs/request-preconditions).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import google_crc32c
import pytest
from google.api_core.exceptions import BadRequest, NotFound, PreconditionFailed
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from localcloud import testing
from tests.integration.test_storage import EVENTS_TOPIC, _collect_events

PROJECT = "local-project"
TRAVERSALS = ["../../x", "a/../../b", "..x", "../", "..%2F..%2Fx", "./../.."]


@pytest.fixture
def gcs(localcloud: testing.Instance) -> storage.Client:
    return storage.Client(project=PROJECT, credentials=AnonymousCredentials())


@pytest.fixture
def bucket(gcs: storage.Client) -> Iterator[storage.Bucket]:
    created = gcs.create_bucket(f"lc-names-{uuid.uuid4().hex[:12]}")
    yield created
    for blob in gcs.list_blobs(created.name):
        blob.delete()
    created.delete()


def http(
    instance: testing.Instance,
    method: str,
    path: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    **query: str,
) -> tuple[int, bytes]:
    """A raw request to the storage port, as curl or gsutil would send it."""
    url = f"http://{instance.config.storage_address}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def media_upload(
    instance: testing.Instance, bucket: str, name: str, data: bytes, **extra: Any
) -> tuple[int, bytes]:
    headers = extra.pop("headers", {})
    return http(
        instance,
        "POST",
        f"/upload/storage/v1/b/{bucket}/o",
        data,
        headers,
        uploadType="media",
        name=name,
        **extra,
    )


def assert_google_400(status: int, body: bytes, instance: testing.Instance, words: str) -> None:
    """HTTP 400 with Google's error shape, a message naming the problem, no host path."""
    assert status == 400, body
    error = json.loads(body)["error"]
    assert error["code"] == 400
    assert words in error["message"], error["message"]
    assert error["errors"][0]["message"] == error["message"]
    text = body.decode()
    for path in (str(instance.config.data_dir), "/tmp", "/storage/"):
        assert path not in text, f"the error shows a host path: {text}"


def escape_targets(instance: testing.Instance, bucket: str, name: str) -> list[Path]:
    """Where fake-gcs-server's filesystem backend alone would have written ``name``."""
    root = Path(instance.config.data_dir) / "storage"
    return [Path(os.path.normpath(root / bucket / name))]


# ------------------------------------------------------------------------------- names


def test_traversal_names_are_stored_listed_and_served(
    localcloud: testing.Instance, gcs: storage.Client, bucket: storage.Bucket
) -> None:
    """``../../x`` and friends are objects like any other, and write no host file."""
    token = uuid.uuid4().hex
    data_dir = Path(localcloud.config.data_dir)
    deep = "../" * (len(data_dir.parts) + 4)
    outside = {
        f"{deep}tmp/lc-escape-{token}": Path("/tmp") / f"lc-escape-{token}",
        f"{deep}{str(data_dir.parent).lstrip('/')}/lc-escape-{token}": data_dir.parent
        / f"lc-escape-{token}",
    }
    names = [*TRAVERSALS, *outside]
    payloads = {name: f"{name}\n".encode() + bytes(range(256)) for name in names}
    for name in names[:4]:  # the official client: multipart uploads
        bucket.blob(name).upload_from_string(payloads[name])
    for name in names[4:]:  # the attack as reported: a media upload with an encoded name
        status, body = media_upload(localcloud, bucket.name, name, payloads[name])
        assert status == 200, body
        assert json.loads(body)["name"] == name

    assert sorted(b.name for b in gcs.list_blobs(bucket.name)) == sorted(names)
    for name in names:
        blob = bucket.get_blob(name)
        assert blob is not None and blob.name == name
        assert blob.download_as_bytes() == payloads[name]
        assert blob.id == f"{bucket.name}/{name}/{blob.generation}"
        assert blob.media_link.startswith(f"http://{localcloud.config.storage_address}/")
        for target in escape_targets(localcloud, bucket.name, name):
            assert not target.exists() or target.is_dir(), f"{name!r} wrote {target}"
    for target in outside.values():
        assert not target.exists(), f"an object name wrote {target}"
    status, body = http(
        localcloud, "GET", f"/download/storage/v1/b/{bucket.name}/o/../../x", alt="media"
    )
    assert (status, body) == (200, payloads["../../x"]), "raw slashes name the same object"


def test_names_a_file_system_cannot_hold_side_by_side(
    localcloud: testing.Instance, gcs: storage.Client, bucket: storage.Bucket
) -> None:
    """``a`` and ``a/b`` (a file and a directory of one name), ``a/`` and ``a//b``."""
    names = ["a", "a/", "a/b", "a//b", "/a", "x" * 300, "é/" * 200]
    for name in names:
        bucket.blob(name).upload_from_string(name.encode())
    for name in names:
        assert bucket.blob(name).download_as_bytes() == name.encode()
    assert sorted(b.name for b in gcs.list_blobs(bucket.name)) == sorted(
        names, key=lambda n: n.encode()
    )


def test_listing_with_prefix_and_delimiter_on_such_names(
    gcs: storage.Client, bucket: storage.Bucket
) -> None:
    """Prefixes and delimiters work on the names, not on how they are stored.

    https://cloud.google.com/storage/docs/json_api/v1/objects/list
    """
    names = ["../up", "../../x", "..x", "a", "a/", "a/b", "a/c/", "a/c/d", "a/../../b", "b//c", "z"]
    for name in names:
        bucket.blob(name).upload_from_string(b"-")

    def listing(**kwargs: Any) -> tuple[list[str], list[str]]:
        blobs = gcs.list_blobs(bucket.name, **kwargs)
        items = [b.name for b in blobs]
        return items, sorted(blobs.prefixes)

    assert listing(delimiter="/") == (["..x", "a", "z"], ["../", "a/", "b/"])
    assert listing(prefix="a/", delimiter="/") == (["a/", "a/b"], ["a/../", "a/c/"])
    assert listing(prefix="../", delimiter="/") == (["../up"], ["../../"])
    assert listing(prefix="..") == (["../../x", "../up", "..x"], [])
    # Pages of two: every entry once, in order, prefixes included.
    assert listing(delimiter="/", page_size=2) == (["..x", "a", "z"], ["../", "a/", "b/"])
    assert listing(page_size=3)[0] == sorted(names, key=lambda n: n.encode())
    assert listing(start_offset="a/", end_offset="b")[0] == [
        "a/",
        "a/../../b",
        "a/b",
        "a/c/",
        "a/c/d",
    ]
    items, prefixes = listing(prefix="a/", delimiter="/", include_trailing_delimiter=True)
    assert (items, prefixes) == (["a/", "a/b", "a/c/"], ["a/../", "a/c/"])


def test_longest_name_round_trips_and_a_longer_one_is_refused(
    localcloud: testing.Instance, gcs: storage.Client, bucket: storage.Bucket
) -> None:
    """1,024 bytes of UTF-8 is the limit, counted in bytes (``é`` is two)."""
    longest = "../" + "é" * 510 + "x"  # 3 + 1,020 + 1 bytes
    assert len(longest.encode()) == 1024
    blob = bucket.blob(longest)
    blob.upload_from_string(b"long", content_type="text/plain")
    fetched = bucket.get_blob(longest)
    assert fetched is not None and fetched.name == longest and fetched.size == 4
    assert fetched.download_as_bytes() == b"long"
    assert [b.name for b in gcs.list_blobs(bucket.name, prefix="../é")] == [longest]
    blob.metadata = {"k": "v"}
    blob.patch()
    assert bucket.get_blob(longest).metadata == {"k": "v"}

    too_long = longest + "y"
    status, body = media_upload(localcloud, bucket.name, too_long, b"nope")
    assert_google_400(status, body, localcloud, "1,025 bytes")
    with pytest.raises(BadRequest, match="1,025 bytes"):
        bucket.blob(too_long).upload_from_string(b"nope")
    status, body = http(localcloud, "GET", f"/storage/v1/b/{bucket.name}/o/" + "y" * 2000)
    assert_google_400(status, body, localcloud, "2,000 bytes")


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("", "required"),
        (".", "'.'"),
        ("..", "'..'"),
        ("a\nb", "line feed"),
        ("a\rb", "carriage return"),
        (".well-known/acme-challenge/x", ".well-known/acme-challenge/"),
    ],
)
def test_names_google_refuses_are_refused(
    localcloud: testing.Instance, bucket: storage.Bucket, name: str, words: str
) -> None:
    status, body = media_upload(localcloud, bucket.name, name, b"nope")
    assert_google_400(status, body, localcloud, words)


def test_bucket_names_never_reach_the_file_system(localcloud: testing.Instance) -> None:
    """A bucket named ``..`` would be the backend's parent directory; it is a bad name."""
    data_dir = Path(localcloud.config.data_dir)
    for bucket in ("..", "."):
        status, body = media_upload(localcloud, bucket, f"x-{uuid.uuid4().hex}", b"nope")
        assert_google_400(status, body, localcloud, "Invalid bucket name")
    # fs.go writes a bucket's attributes to ROOT/BUCKET.bucketMetadata, joined as it is.
    assert not (data_dir / "storage.bucketMetadata").exists()
    assert not Path(str(data_dir) + ".bucketMetadata").exists()


# ---------------------------------------------------------------------------- metadata


def eight_kib() -> dict[str, str]:
    """Exactly 8,192 bytes of keys and values, no value over 4 KiB."""
    metadata = {"first": "a" * 4000, "second": "é" * 2000, "third": ""}
    used = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
    metadata["third"] = "z" * (8192 - used)
    return metadata


def test_8_kib_of_metadata_round_trips_and_more_is_refused(
    localcloud: testing.Instance, bucket: storage.Bucket
) -> None:
    metadata = eight_kib()
    blob = bucket.blob("../meta")
    blob.metadata = metadata
    blob.upload_from_string(b"first version")
    assert bucket.get_blob("../meta").metadata == metadata
    generation = bucket.get_blob("../meta").generation

    over = {**metadata, "third": metadata["third"] + "!"}
    again = bucket.blob("../meta")
    again.metadata = over
    with pytest.raises(BadRequest, match="8,193 bytes"):
        again.upload_from_string(b"second version")
    # Media upload, metadata in headers, as gsutil -h x-goog-meta-... sends it.
    headers = {f"x-goog-meta-{k}": v for k, v in over.items() if v.isascii()}
    used = sum(len(k) - len("x-goog-meta-") + len(v) for k, v in headers.items())
    headers["x-goog-meta-pad"] = "p" * (8193 - used - len("pad"))
    status, body = media_upload(localcloud, bucket.name, "../meta", b"third", headers=headers)
    assert_google_400(status, body, localcloud, "8,193 bytes")
    # A patch counts what the object would end with: its metadata and the patch merged.
    patched = bucket.blob("../meta")
    patched.metadata = {"more": "m" * 100}
    with pytest.raises(BadRequest, match="Custom metadata"):
        patched.patch()

    kept = bucket.get_blob("../meta")
    assert kept.generation == generation
    assert kept.metadata == metadata
    assert kept.download_as_bytes() == b"first version"


def test_metadata_near_the_limit_with_the_longest_name(
    bucket: storage.Bucket, gcs: storage.Client
) -> None:
    """Both limits at once: what a file system's extended attributes could not hold."""
    name = "n/" * 511 + "xy"
    blob = bucket.blob(name)
    blob.metadata = eight_kib()
    blob.upload_from_string(b"both")
    copy = bucket.copy_blob(blob, bucket, "../copy")
    assert copy.metadata == eight_kib()
    assert [b.metadata for b in gcs.list_blobs(bucket.name, prefix="n/")] == [eight_kib()]


# ------------------------------------------------------------------------ failed writes


def test_a_failed_upload_keeps_the_old_object(
    localcloud: testing.Instance, bucket: storage.Bucket
) -> None:
    """Every kind of upload checks its preconditions before it replaces anything."""
    name = "../../kept"
    bucket.blob(name).upload_from_string(b"original", content_type="text/plain")
    original = bucket.get_blob(name)
    wrong = original.generation + 1
    with pytest.raises(PreconditionFailed):  # multipart
        bucket.blob(name).upload_from_string(b"multipart", if_generation_match=wrong)
    with pytest.raises(PreconditionFailed):  # resumable: more than one chunk
        resumable = bucket.blob(name, chunk_size=256 * 1024)
        resumable.upload_from_string(b"r" * (600 * 1024), if_generation_match=0)
    status, body = media_upload(localcloud, bucket.name, name, b"media", ifGenerationMatch="0")
    assert status == 412, body
    with pytest.raises(PreconditionFailed):
        bucket.blob(name).delete(if_generation_match=wrong)
    with pytest.raises(NotFound):  # only the live generation exists without versioning
        bucket.blob(name, generation=wrong).delete()
    with pytest.raises(PreconditionFailed):
        patch = bucket.blob(name)
        patch.metadata = {"k": "v"}
        patch.patch(if_metageneration_match=7)

    kept = bucket.get_blob(name)
    assert kept.generation == original.generation
    assert kept.download_as_bytes() == b"original"
    assert kept.metadata is None
    # A matching precondition writes.
    bucket.blob(name).upload_from_string(b"next", if_generation_match=original.generation)
    assert bucket.blob(name).download_as_bytes() == b"next"


def test_resumable_upload_of_a_traversal_name(bucket: storage.Bucket) -> None:
    name = "../../../resumable"
    data = os.urandom(700 * 1024)
    blob = bucket.blob(name, chunk_size=256 * 1024)
    blob.metadata = {"via": "resumable"}
    blob.upload_from_string(data, if_generation_match=0)
    fetched = bucket.get_blob(name)
    assert fetched.size == len(data) and fetched.metadata == {"via": "resumable"}
    assert fetched.download_as_bytes() == data
    assert fetched.download_as_bytes(start=10, end=19) == data[10:20]


def test_copy_rewrite_and_compose_keep_names(gcs: storage.Client, bucket: storage.Bucket) -> None:
    bucket.blob("../one").upload_from_string(b"one,")
    bucket.blob("a/../two").upload_from_string(b"two")
    copied = bucket.copy_blob(bucket.blob("../one"), bucket, "../../copied")
    assert copied.name == "../../copied"
    rewritten = bucket.blob("..rewritten")
    token, written, total = rewritten.rewrite(bucket.blob("a/../two"))
    while token is not None:
        token, written, total = rewritten.rewrite(bucket.blob("a/../two"), token=token)
    assert written == total == 3
    composed = bucket.blob("../composed")
    composed.compose([bucket.blob("../one"), bucket.blob("a/../two")])
    assert bucket.blob("../composed").download_as_bytes() == b"one,two"
    assert bucket.blob("../../copied").download_as_bytes() == b"one,"
    assert bucket.blob("..rewritten").download_as_bytes() == b"two"
    with pytest.raises(NotFound):
        bucket.blob("../composed").compose([bucket.blob("../missing")])


def test_notifications_name_the_object_as_given(
    subscriber: Any, bucket: storage.Bucket, local_subscription: Callable[..., str]
) -> None:
    sub = local_subscription(
        EVENTS_TOPIC, "storage-names", filter=f'attributes.bucketId = "{bucket.name}"'
    )
    name = "../../" + "é" * 400
    blob = bucket.blob(name)
    blob.upload_from_string(b"event")
    (finalize,) = _collect_events(subscriber, sub, {"OBJECT_FINALIZE"})["OBJECT_FINALIZE"]
    assert finalize.attributes["objectId"] == name
    payload = json.loads(finalize.data)
    assert payload["name"] == name
    assert payload["id"] == f"{bucket.name}/{name}/{blob.generation}"
    blob.delete()
    (deleted,) = _collect_events(subscriber, sub, {"OBJECT_DELETE"})["OBJECT_DELETE"]
    assert deleted.attributes["objectId"] == name


# ------------------------------------------------------------------------- persistence


def _legacy_object(root: Path, bucket: str, name: str, data: bytes, metadata: dict) -> None:
    """An object as the earlier layout stored it: at its name, attributes in an xattr."""
    path = root / bucket / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    crc = base64.b64encode(google_crc32c.Checksum(data).digest()).decode()
    attrs = {
        "StorageClass": "STANDARD",
        "ContentType": "text/plain",
        "Crc32c": crc,
        "Md5Hash": md5,
        "Etag": md5,
        "Metadata": metadata,
        "Created": "2026-01-02T03:04:05.000000Z",
        "Updated": "2026-01-02T03:04:05.000000Z",
        "Generation": 1767323045000000,
    }
    os.setxattr(path, "user.metadata", json.dumps(attrs).encode())


@pytest.mark.slow
def test_objects_survive_a_restart_and_earlier_data_is_migrated(tmp_path: Path) -> None:
    """Restarts keep such objects; a data directory of the earlier layout is carried over."""
    data_dir = tmp_path / "data"
    root = data_dir / "storage"
    (root / "legacy").mkdir(parents=True)
    try:
        _legacy_object(root, "legacy", "dir/old.txt", b"from before", {"k": "v"})
    except OSError as exc:
        pytest.skip(f"no user extended attributes here: {exc}")
    (root / "legacy.bucketMetadata").write_text("{}")
    (root / "legacy" / "dir" / ".old.txt123").write_bytes(b"a temporary file")

    instance = testing.start(data_dir)
    try:
        with instance.client_env():
            client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
            legacy = client.bucket("legacy")
            old = legacy.get_blob("dir/old.txt")
            assert old is not None and old.metadata == {"k": "v"}
            assert old.generation == 1767323045000000
            assert old.download_as_bytes() == b"from before"
            bucket = client.create_bucket("kept-across-restarts")
            names = {"../../x": b"x", "n/" * 512: b"long", "a/../../b": b"b"}
            for name, data in names.items():
                blob = bucket.blob(name)
                blob.metadata = eight_kib()
                blob.upload_from_string(data)
            generations = {b.name: b.generation for b in client.list_blobs(bucket.name)}

        instance = instance.restart()
        with instance.client_env():
            client = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
            bucket = client.bucket("kept-across-restarts")
            assert {b.name: b.generation for b in client.list_blobs(bucket.name)} == generations
            for name, data in names.items():
                blob = bucket.get_blob(name)
                assert blob.metadata == eight_kib()
                assert blob.download_as_bytes() == data
            assert client.bucket("legacy").blob("dir/old.txt").download_as_bytes() == (
                b"from before"
            )
            assert [b.name for b in client.list_blobs("legacy")] == ["dir/old.txt"]
    finally:
        instance.stop()
    assert not (data_dir / "storage.legacy").exists()
    assert not (root / "legacy" / "dir").exists(), "the earlier layout's paths are gone"

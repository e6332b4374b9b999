"""Cloud Storage's name and metadata rules, and the encoding that keeps names off host paths.

Rules: https://cloud.google.com/storage/docs/objects#naming (1 to 1,024 bytes of UTF-8; no
carriage return or line feed; not ``.`` or ``..``; not under
``.well-known/acme-challenge/``) and https://cloud.google.com/storage/quotas (8 KiB of
custom metadata, keys and values). The encoding's contract is in
``localcloud/storage/layout.py``; here it is checked on names chosen to break it.
"""

from __future__ import annotations

import os
import random

import pytest

from localcloud.storage import layout
from localcloud.storage.front import _final_chunk, parse_route
from localcloud.storage.names import (
    StorageError,
    check_bucket_name,
    check_metadata,
    check_object_name,
    metadata_size,
)

AWKWARD = [
    "a",
    "a/",
    "a/b",
    "a//b",
    "/a",
    "../../x",
    "a/../../b",
    "..x",
    "...",
    "./a",
    "~",
    "a~",
    "x.metadata",
    ".hidden",
    "é" * 512,  # 1,024 bytes in 1,024 hex pairs: exactly 2,048 digits
    "z" * 1024,
    "\x00\x7f\t",
    "日本語/ファイル",
    "a" * 100 + "/" + "b" * 300,
]


@pytest.mark.parametrize("name", AWKWARD)
def test_encoding_round_trips_and_stays_inside_the_bucket(name: str) -> None:
    encoded = layout.encode(name)
    assert layout.decode(encoded) == name
    parts = encoded.split("/")
    assert all(part not in ("", ".", "..") and not part.startswith(".") for part in parts)
    # With room for fs.go's ".metadata" sidecar and renameio's ".NAME" + 10 digits.
    assert all(len(part) + len(".metadata") + 11 <= 255 for part in parts)
    assert os.path.normpath(encoded) == encoded  # nothing a path join could collapse


def test_no_objects_file_is_another_objects_directory() -> None:
    names = ["a" * 100, "a" * 100 + "b", "a" * 200, "a" * 200 + "c", "x", "x/"]
    files = {layout.encode(n) for n in names}
    directories = {os.path.dirname(f) for f in files} - {""}
    for d in list(directories):
        while d:
            directories.add(d)
            d = os.path.dirname(d)
    assert not files & directories
    assert len(files) == len(names)


def test_prefixes_and_order_are_kept() -> None:
    rng = random.Random(12)
    alphabet = "ab/é.~"
    names = sorted(
        {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 140))) for _ in range(300)}
    )
    for prefix in ["", "a", "a/", "é", names[5][:101], names[7][:100]]:
        expected = [n for n in names if n.startswith(prefix)]
        found = [n for n in names if layout.encode(n).startswith(layout.encode_prefix(prefix))]
        assert found == expected, prefix
    by_bytes = sorted(names, key=lambda n: n.encode())
    assert sorted(names, key=layout.encode) == by_bytes


@pytest.mark.parametrize(
    "encoded", ["", "-", "6-", "6g-", "61", "61/62-", "../61-", "4A-", "ff-", "61--", "61~"]
)
def test_decoding_refuses_what_encoding_never_makes(encoded: str) -> None:
    with pytest.raises(ValueError):
        layout.decode(encoded)


@pytest.mark.parametrize("name", ["../../x", "a/../../b", "..x", "x" * 1024, "ü" * 512, "a\tb"])
def test_names_google_accepts(name: str) -> None:
    assert check_object_name(name) == name


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("", "required"),
        (".", "'.'"),
        ("..", "'..'"),
        ("a\nb", "line feed"),
        ("a\rb", "carriage return"),
        (".well-known/acme-challenge/token", ".well-known/acme-challenge/"),
        ("x" * 1025, "1,025 bytes"),
        ("ü" * 513, "1,026 bytes"),
        ("\udc80", "UTF-8"),
    ],
)
def test_names_google_refuses(name: str, words: str) -> None:
    with pytest.raises(StorageError) as caught:
        check_object_name(name)
    assert caught.value.status == 400
    assert words in caught.value.message


def test_metadata_limit_counts_keys_and_values_in_bytes() -> None:
    check_metadata({"k": "v" * (8192 - 1)})
    check_metadata({"a" * 4096: "é" * 2048})
    assert metadata_size({"é": "é", "gone": None}) == 4
    with pytest.raises(StorageError, match="8,193 bytes"):
        check_metadata({"k": "v" * 8192})
    with pytest.raises(StorageError):
        check_metadata(["not", "an", "object"])


@pytest.mark.parametrize("name", ["abc", "my_bucket-1", "a.b.c", "local-project_cloudbuild-logs"])
def test_bucket_names_accepted(name: str) -> None:
    assert check_bucket_name(name) == name


@pytest.mark.parametrize(
    "name", ["..", ".", "ab", "a/b", "Upper", "-ab", "a" * 64, "x" * 64 + ".y"]
)
def test_bucket_names_refused(name: str) -> None:
    with pytest.raises(StorageError):
        check_bucket_name(name)


def test_routes_take_names_from_the_raw_path() -> None:
    route = parse_route("GET", "/storage/v1/b/bkt/o/..%2F..%2Fx")
    assert (route.kind, route.bucket, route.name) == ("object", "bkt", "../../x")
    route = parse_route("GET", "/download/storage/v1/b/bkt/o/a/../../b")
    assert (route.kind, route.name) == ("download", "a/../../b")
    route = parse_route("POST", "/storage/v1/b/s/o/a%2Fb/rewriteTo/b/d/o/..%2Fc")
    assert (route.kind, route.name, route.dest_bucket, route.dest_name) == (
        "copy",
        "a/b",
        "d",
        "../c",
    )
    assert parse_route("POST", "/storage/v1/b/s/o/x/compose").kind == "compose"
    assert parse_route("GET", "/storage/v1/b/s/o").kind == "list"
    assert parse_route("POST", "/batch/storage/v1").kind == "unsupported"
    assert parse_route("POST", "/_internal/delete_all").kind == "none"


@pytest.mark.parametrize(
    ("header", "final"),
    [
        (None, True),
        ("bytes 0-99/100", True),
        ("bytes 0-99/200", False),
        ("bytes 0-99/*", False),
        ("bytes */100", True),
        ("bytes */*", True),
        ("bytes 0-*/*", True),
        ("nonsense", False),
    ],
)
def test_which_resumable_request_completes_an_upload(header: str | None, final: bool) -> None:
    assert _final_chunk(header) is final

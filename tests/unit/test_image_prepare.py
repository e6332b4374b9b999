"""Which pushed images Cloud Run's cache unpacks ahead of a revision (issue 19)."""

from __future__ import annotations

import json

from localcloud.run import images


def manifest(*sizes: int) -> bytes:
    layer = {"mediaType": images.LAYER_TYPES[0], "digest": "sha256:" + "a" * 64}
    return json.dumps(
        {"schemaVersion": 2, "layers": [{**layer, "size": s} for s in sizes]}
    ).encode()


def test_an_image_manifest_counts_its_layers_bytes() -> None:
    assert images._layers_size(manifest(10, 20, 30)) == 60


def test_an_index_or_a_malformed_manifest_is_not_prepared() -> None:
    index = {"schemaVersion": 2, "manifests": [{"digest": "sha256:" + "b" * 64, "size": 1}]}
    assert images._layers_size(json.dumps(index).encode()) is None
    assert images._layers_size(b"not json") is None
    assert images._layers_size(json.dumps({"layers": [{"size": "x"}]}).encode()) is None


def test_the_limit_leaves_a_function_image_in_and_a_huge_one_out() -> None:
    assert images._layers_size(manifest(50 << 20, 1 << 20)) <= images.PREPARE_MAX_BYTES
    assert images._layers_size(manifest(images.PREPARE_MAX_BYTES, 1)) > images.PREPARE_MAX_BYTES

"""Untrusted input is measured before it is parsed; what reports on it stays small."""

from __future__ import annotations

import json

import pytest

from orchestrator import manifest
from orchestrator.bounds import (
    MAX_DETAILS_BYTES,
    InputTooComplex,
    check_json_depth,
    check_yaml,
    clip,
    clip_details,
    loads_json,
)
from orchestrator.status import StatusEvent, from_message, to_message


def alias_bomb(levels: int) -> bytes:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return ("\n".join(lines) + "\n").encode()


def test_deep_json_is_refused_before_json_recurses():
    for text in ("[" * 100_000, '{"a":' * 1_500 + "1" + "}" * 1_500):
        with pytest.raises(InputTooComplex, match="nested more than 32 levels"):
            check_json_depth(text, "request")
    check_json_depth('{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}', "brackets in a string")
    check_json_depth("[" * 32 + "]" * 32, "just deep enough")


def test_size_is_checked_before_anything_else():
    with pytest.raises(InputTooComplex, match="100,001 bytes is more than the limit of 100"):
        loads_json(b" " * 100_001, "request", 100)
    assert loads_json('{"a": [1]}', "request", 100) == {"a": [1]}


def test_deep_yaml_and_alias_bombs_are_refused_from_the_event_stream():
    with pytest.raises(InputTooComplex, match="nested more than 32 levels"):
        check_yaml(b"a: " + b"[" * 20_000, "function.yaml")
    with pytest.raises(InputTooComplex, match="aliases expand to more than 10,000 values"):
        check_yaml(alias_bomb(8), "function.yaml")
    check_yaml(alias_bomb(2), "function.yaml")  # 819 values: fine
    check_yaml(b"env: &e {A: '1'}\nother: *e\n", "function.yaml")


@pytest.mark.parametrize(
    ("document", "words"),
    [
        (b"a: " + b"[" * 20_000, "nested more than 32 levels"),
        (alias_bomb(8), "expand to more than"),
        (b"service: x\n" + b"#" * (64 * 1024), "more than the limit of 65536"),
    ],
)
def test_the_manifest_reader_reports_them_as_manifest_problems(document, words):
    with pytest.raises(manifest.ManifestError, match=words):
        manifest.load_manifest_yaml(document)


def test_metadata_and_requests_are_bounded_too():
    deep_env = '{"A": ' + "[" * 1_500 + "]" * 1_500 + "}"
    with pytest.raises(manifest.ManifestError, match="env: nested more than 32"):
        manifest.object_metadata_overrides({"env": deep_env})
    with pytest.raises(manifest.ManifestError, match="more than the limit"):
        manifest.parse_request(b"[" * 100_000)
    with pytest.raises(manifest.ManifestError, match="larger than any Cloud Storage generation"):
        manifest.parse_request(json.dumps({"source": "gs://b-1/x.zip#99999999999999999999999"}))
    with pytest.raises(manifest.ManifestError, match="env"):
        manifest.validate_manifest({"env": {f"V{i}": "x" for i in range(1001)}})


def test_clip_says_how_much_it_left_out():
    assert clip("short") == "short"
    cut = clip("x" * 10_000, 100)
    assert len(cut) == 100 and cut.endswith("[9,900 more characters left out]")


def test_details_keep_their_small_fields_and_a_log_keeps_its_last_lines():
    details = {
        "build_id": "b-1",
        "log_tail": [f"line {i} " + "x" * 300 for i in range(40)],
        "manifest": {"env": {f"V{i}": "v" * 1000 for i in range(50)}},
    }
    clipped = clip_details(details)
    assert len(json.dumps(clipped)) <= MAX_DETAILS_BYTES
    assert clipped["build_id"] == "b-1"
    assert clipped["manifest"].endswith("bytes left out]")
    assert clipped["log_tail"][-1].startswith("line 39 ")
    assert clipped["log_tail"][0].endswith("earlier items left out]")
    assert clip_details({"small": 1}) == {"small": 1}


def test_a_status_event_is_a_few_kb_whatever_it_carries():
    event = StatusEvent(
        deployment_id="d-0123456789abcdef",
        service="s",
        step="accepted",
        state="failed",
        message="m" * 10_000_000,
        error_code="INVALID_MANIFEST",
        details={"manifest": {"env": {"BIG": "v" * 9_600_000}}},
    )
    data, _attributes, _key = to_message(event)
    assert len(data) < 10 * 1024
    back = from_message(data)
    assert back.message.endswith("more characters left out]")
    assert back.error_code == "INVALID_MANIFEST"

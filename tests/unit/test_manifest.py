"""Table-driven tests for the function manifest, its schema, overrides and sources.

The rules come from the schemas in pipeline/orchestrator/schemas/ (docs/pipeline.md) and from Google's published limits:
Cloud Run service names (https://cloud.google.com/run/docs/deploying#service), reserved
environment variables (https://cloud.google.com/run/docs/container-contract#env-vars),
concurrency 1..1000 and request timeout up to 3600 s, bucket names
(https://cloud.google.com/storage/docs/buckets#naming).
"""

from __future__ import annotations

import io
import json
import re
import zipfile

import pytest
from jsonschema import Draft202012Validator

from orchestrator import manifest as m
from orchestrator.manifest import (
    Manifest,
    ManifestError,
    Source,
    Trigger,
    deployment_id,
    load_manifest_yaml,
    object_metadata_overrides,
    parse_request,
    read_manifest_from_zip,
    resolve,
)

# Eventarc trigger ids: lowercase letters, digits and '-', starting with a letter, <= 63.
TRIGGER_ID_RE = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")

# --------------------------------------------------------------------------- the schema


def test_schema_is_a_valid_draft_2020_12_schema():
    schema = m.schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert {"manifest", "deployRequest", "manifestFields"} <= set(schema["$defs"])


def test_the_request_reuses_the_manifest_fields():
    defs = m.schema()["$defs"]
    assert defs["manifest"]["$ref"] == "#/$defs/manifestFields"
    assert defs["deployRequest"]["$ref"] == "#/$defs/manifestFields"


def test_schema_defaults_match_the_code():
    props = m.schema()["$defs"]["manifestFields"]["properties"]
    for key, value in m.DEFAULTS.items():
        if value is not None:
            assert props[key]["default"] == value, key


FULL = {
    "service": "hello",
    "entry_point": "hello",
    "signature_type": "http",
    "runtime": "python311",
    "env": {"GREETING": "hi", "_X1": ""},
    "min_instances": 0,
    "max_instances": 10,
    "concurrency": 80,
    "timeout_seconds": 300,
    "allow_unauthenticated": False,
    "triggers": [
        {"pubsub": {"topic": "orders"}},
        {"storage": {"bucket": "uploads", "event": "finalized"}},
        {"storage": {"bucket": "my.bucket_1", "event": "metadataUpdated"}},
        {"pubsub": {"topic": "projects/other-project/topics/orders"}},
    ],
}

GOOD = [
    {},
    FULL,
    {"signature_type": "cloudevent"},
    {"signature_type": "event"},
    {"runtime": "python312"},
    {"service": "a"},
    {"service": "a" * 49},
    {"service": "my-func-2"},
    {"entry_point": "_private"},
    {"min_instances": 3, "max_instances": 3},
    {"concurrency": 1},
    {"concurrency": 1000},
    {"timeout_seconds": 1},
    {"timeout_seconds": 3600},
    {"allow_unauthenticated": True},
    {"triggers": []},
    {"triggers": [{"storage": {"bucket": "abc"}}]},
    {"triggers": [{"storage": {"bucket": "b-1", "event": "deleted"}}]},
    {"env": {}},
]


@pytest.mark.parametrize("document", GOOD, ids=lambda d: ",".join(d) or "empty")
def test_good_manifests_pass(document):
    m.validate_manifest(document)


# (manifest, field named by the error, words the message must contain)
BAD = [
    ({"servce": "x"}, "servce", ["unknown key 'servce'", "did you mean 'service'"]),
    ({"unknown": 1}, "unknown", ["unknown key 'unknown'"]),
    ({"service": "My_Func"}, "service", ["'My_Func'", "Cloud Run service name"]),
    ({"service": "1abc"}, "service", ["'1abc'"]),
    ({"service": "abc-"}, "service", ["'abc-'"]),
    ({"service": "a" * 50}, "service", ["service"]),
    ({"service": ""}, "service", ["service"]),
    ({"service": 5}, "service", ["expected a string", "5"]),
    ({"entry_point": "my-func"}, "entry_point", ["'my-func'", "a function name"]),
    ({"entry_point": "1x"}, "entry_point", ["'1x'"]),
    ({"signature_type": "grpc"}, "signature_type", ["'grpc'", "http"]),
    ({"runtime": "python"}, "runtime", ["'python'", "python311"]),
    # Issue 15 (3): only runtimes the pinned builder (google-22) has, named in the message.
    ({"runtime": "python39"}, "runtime", ["'python39'", "google-22", "python310", "python313"]),
    ({"runtime": "python314"}, "runtime", ["'python314'", "google-22"]),
    ({"runtime": "python3"}, "runtime", ["'python3'"]),
    # Node.js: the builder's even (LTS) majors only, named in the message (issue 19).
    ({"runtime": "nodejs21"}, "runtime", ["'nodejs21'", "nodejs20", "nodejs22", "google-22"]),
    ({"runtime": "nodejs10"}, "runtime", ["'nodejs10'", "nodejs12"]),
    ({"runtime": "nodejs26"}, "runtime", ["'nodejs26'", "nodejs24"]),
    ({"runtime": "nodejs"}, "runtime", ["'nodejs'"]),
    ({"runtime": "node22"}, "runtime", ["'node22'"]),
    ({"runtime": 311}, "runtime", ["expected a string"]),
    ({"env": ["A=1"]}, "env", ["expected an object"]),
    ({"env": {"PORT": "1"}}, "env.PORT", ["'PORT' is reserved"]),
    ({"env": {"K_SERVICE": "x"}}, "env.K_SERVICE", ["reserved"]),
    ({"env": {"K_REVISION": "x"}}, "env.K_REVISION", ["reserved"]),
    ({"env": {"K_CONFIGURATION": "x"}}, "env.K_CONFIGURATION", ["reserved"]),
    ({"env": {"1A": "x"}}, "env.1A", ["'1A'", "environment variable name"]),
    ({"env": {"A-B": "x"}}, "env.A-B", ["'A-B'"]),
    ({"env": {"A": 3}}, "env.A", ["expected a string", "3"]),
    ({"env": {"A": None}}, "env.A", ["expected a string"]),
    ({"min_instances": -1}, "min_instances", ["-1 is less than the minimum of 0"]),
    ({"min_instances": "1"}, "min_instances", ["expected an integer"]),
    ({"max_instances": 0}, "max_instances", ["0 is less than the minimum of 1"]),
    ({"max_instances": 1.5}, "max_instances", ["expected an integer"]),
    ({"concurrency": 0}, "concurrency", ["0 is less than the minimum of 1"]),
    ({"concurrency": 1001}, "concurrency", ["1001 is greater than the maximum of 1000"]),
    ({"timeout_seconds": 0}, "timeout_seconds", ["minimum of 1"]),
    ({"timeout_seconds": 3601}, "timeout_seconds", ["maximum of 3600"]),
    ({"allow_unauthenticated": "yes"}, "allow_unauthenticated", ["expected a boolean"]),
    ({"allow_unauthenticated": 1}, "allow_unauthenticated", ["expected a boolean"]),
    ({"triggers": {"pubsub": {"topic": "x"}}}, "triggers", ["expected an array"]),
    ({"triggers": [{}]}, "triggers[0]", ["exactly one of 'pubsub' or 'storage'"]),
    (
        {"triggers": [{"pubsub": {"topic": "abc"}, "storage": {"bucket": "abc"}}]},
        "triggers[0]",
        ["exactly one of"],
    ),
    ({"triggers": [{"http": {}}]}, "triggers[0].http", ["unknown key 'http'"]),
    ({"triggers": [{"pubsub": {}}]}, "triggers[0].pubsub.topic", ["missing required key 'topic'"]),
    (
        {"triggers": [{"pubsub": {"topic": "abc", "topc": "x"}}]},
        "triggers[0].pubsub.topc",
        ["unknown key 'topc'", "did you mean 'topic'"],
    ),
    ({"triggers": [{"pubsub": {"topic": "ab"}}]}, "triggers[0].pubsub.topic", ["'ab'"]),
    (
        {"triggers": [{"pubsub": {"topic": "goog-topic"}}]},
        "triggers[0].pubsub.topic",
        ["'goog-topic'"],
    ),
    ({"triggers": [{"pubsub": "orders"}]}, "triggers[0].pubsub", ["expected an object"]),
    (
        {"triggers": [{"storage": {"event": "finalized"}}]},
        "triggers[0].storage.bucket",
        ["missing required key 'bucket'"],
    ),
    (
        {"triggers": [{"storage": {"bucket": "Uploads"}}]},
        "triggers[0].storage.bucket",
        ["'Uploads'", "bucket name"],
    ),
    (
        {"triggers": [{"storage": {"bucket": "abc", "event": "created"}}]},
        "triggers[0].storage.event",
        ["'created'", "finalized"],
    ),
    (
        {"triggers": [{"pubsub": {"topic": "abc"}}, {"pubsub": {"topic": "abc"}}]},
        "triggers",
        ["listed twice"],
    ),
]


@pytest.mark.parametrize(("document", "field", "words"), BAD, ids=[b[1] for b in BAD])
def test_bad_manifests_name_the_key(document, field, words):
    with pytest.raises(ManifestError) as caught:
        m.validate_manifest(document)
    err = caught.value
    assert err.field == field
    text = str(err)
    assert text.startswith("function.yaml: ")
    for word in words:
        assert word in text


def test_all_problems_are_reported_first_one_names_the_field():
    with pytest.raises(ManifestError) as caught:
        m.validate_manifest({"servce": "x", "concurrency": 0, "env": {"PORT": "1"}})
    err = caught.value
    assert err.field == "servce"
    assert len(err.problems) == 3
    assert "concurrency: 0 is less than the minimum of 1" in str(err)
    assert "env: 'PORT' is reserved" in str(err)


def test_a_manifest_that_is_not_a_mapping_is_refused():
    with pytest.raises(ManifestError, match="expected an object"):
        m.validate_manifest(["service"])


def test_request_schema_needs_a_source_and_accepts_manifest_fields():
    m.validate_request({"source": "gs://bucket/f.zip#12", **FULL})
    with pytest.raises(ManifestError, match="missing required key 'source'") as caught:
        m.validate_request({"service": "x"})
    assert caught.value.field == "source"
    with pytest.raises(ManifestError, match="deploy request: unknown key 'sorce'"):
        m.validate_request({"source": "gs://bucket/f.zip", "sorce": "x"})
    with pytest.raises(ManifestError, match="gs://BUCKET/OBJECT") as caught:
        m.validate_request({"source": "s3://bucket/f.zip"})
    assert caught.value.field == "source"
    with pytest.raises(ManifestError) as caught:
        m.validate_request({"source": "gs://bucket/f.zip", "concurrency": 0})
    assert caught.value.field == "concurrency"


def test_parse_request_splits_source_from_overrides():
    body = json.dumps({"source": "gs://src/a/b.zip#7", "max_instances": 2}).encode()
    source, fields = parse_request(body)
    assert source == Source("src", "a/b.zip", 7)
    assert fields == {"max_instances": 2}
    with pytest.raises(ManifestError, match="not valid JSON"):
        parse_request(b"{nope")
    with pytest.raises(ManifestError, match="expected an object"):
        parse_request(b"[1]")


# --------------------------------------------------------------------------- resolving


def test_defaults():
    got = resolve({}, {}, "hello.zip")
    assert got == Manifest(
        service="hello",
        entry_point="hello",
        signature_type="http",
        runtime=None,
        env={},
        min_instances=0,
        max_instances=10,
        concurrency=80,
        timeout_seconds=300,
        allow_unauthenticated=False,
        triggers=(),
    )


def test_full_manifest_is_taken_as_written():
    got = resolve(FULL, {}, "ignored.zip")
    assert got.service == "hello"
    assert got.runtime == "python311"
    assert got.env == {"GREETING": "hi", "_X1": ""}
    assert got.triggers == (
        Trigger("pubsub", topic="orders"),
        Trigger("storage", bucket="uploads", event="finalized"),
        Trigger("storage", bucket="my.bucket_1", event="metadataUpdated"),
        Trigger("pubsub", topic="projects/other-project/topics/orders"),
    )
    assert got.to_dict() == FULL
    m.validate_manifest(got.to_dict())


def test_storage_trigger_event_defaults_to_finalized():
    got = resolve({"triggers": [{"storage": {"bucket": "abc"}}]}, {}, "x.zip")
    assert got.triggers == (Trigger("storage", bucket="abc", event="finalized"),)


@pytest.mark.parametrize(
    ("archive", "service"),
    [
        ("My Func_v2.zip", "my-func-v2"),
        ("hello.zip", "hello"),
        ("HELLO.ZIP", "hello"),
        ("uploads/team-a/orders.zip", "orders"),
        ("dir\\win.zip", "win"),
        ("2024-report.zip", "report"),
        ("__init__.zip", "init"),
        ("a--b.zip", "a-b"),
        ("Café Crème.zip", "cafe-creme"),
        ("trailing-.zip", "trailing"),
        ("x" * 80 + ".zip", "x" * 49),
        ("a" * 48 + "-b.zip", "a" * 48),
        ("no-extension", "no-extension"),
        ("hello.tar.zip", "hello-tar"),
    ],
)
def test_service_name_from_archive_name(archive, service):
    got = resolve({}, {}, archive)
    assert got.service == service
    assert m.SERVICE_RE.fullmatch(got.service)
    assert got.entry_point == service.replace("-", "_")


@pytest.mark.parametrize("archive", ["123.zip", ".zip", "___.zip", "日本.zip"])
def test_archive_names_without_a_usable_service_name_ask_for_one(archive):
    with pytest.raises(ManifestError, match=r"set 'service' in function\.yaml") as caught:
        resolve({}, {}, archive)
    assert caught.value.field == "service"
    resolve({"service": "named"}, {}, archive)  # naming it in the manifest is the fix


def test_entry_point_defaults_to_service_with_underscores():
    assert resolve({"service": "my-func"}, {}, "x.zip").entry_point == "my_func"
    assert resolve({"service": "my-func", "entry_point": "main"}, {}, "x.zip").entry_point == "main"


def test_overrides_win_and_env_merges():
    base = {
        "service": "from-yaml",
        "max_instances": 5,
        "env": {"A": "yaml", "B": "yaml"},
        "triggers": [{"pubsub": {"topic": "orders"}}],
    }
    overrides = {
        "service": "from-request",
        "max_instances": 2,
        "env": {"B": "request", "C": "request"},
        "triggers": [{"storage": {"bucket": "abc"}}],
    }
    got = resolve(base, overrides, "archive.zip")
    assert got.service == "from-request"
    assert got.entry_point == "from_request"
    assert got.max_instances == 2
    assert got.env == {"A": "yaml", "B": "request", "C": "request"}
    assert got.triggers == (Trigger("storage", bucket="abc", event="finalized"),)
    # fields the override leaves out keep the manifest's value
    assert resolve(base, {"concurrency": 5}, "archive.zip").max_instances == 5


def test_overrides_may_fix_what_the_manifest_alone_would_not_allow():
    # min <= max is checked on the merged result, not on each layer
    got = resolve({"min_instances": 4}, {"max_instances": 4}, "x.zip")
    assert (got.min_instances, got.max_instances) == (4, 4)


def test_min_instances_above_max_instances_is_refused():
    with pytest.raises(ManifestError, match=r"min_instances: 11 is more than max_instances \(10\)"):
        resolve({"min_instances": 11}, {}, "x.zip")
    with pytest.raises(ManifestError) as caught:
        resolve({"min_instances": 3}, {"max_instances": 2}, "x.zip")
    assert caught.value.field == "min_instances"


def test_bad_overrides_are_named_by_their_origin():
    with pytest.raises(ManifestError) as caught:
        resolve({}, {"concurrency": 0}, "x.zip", overrides_origin="deploy request")
    assert str(caught.value) == "deploy request: concurrency: 0 is less than the minimum of 1"
    assert caught.value.field == "concurrency"
    with pytest.raises(ManifestError, match=r"^function\.yaml: unknown key 'servce'"):
        resolve({"servce": "x"}, {}, "x.zip")


# --------------------------------------------------------------------------- metadata


METADATA = [
    ({}, {}),
    ({"service": "hello"}, {"service": "hello"}),
    ({"service": " hello "}, {"service": "hello"}),
    (
        {"entry_point": "main", "runtime": "python312"},
        {"entry_point": "main", "runtime": "python312"},
    ),
    ({"signature_type": "cloudevent"}, {"signature_type": "cloudevent"}),
    ({"max_instances": "3"}, {"max_instances": 3}),
    ({"max-instances": "3"}, {"max_instances": 3}),
    ({"Max-Instances": " 3 "}, {"max_instances": 3}),
    (
        {"min_instances": "0", "concurrency": "1", "timeout_seconds": "60"},
        {"min_instances": 0, "concurrency": 1, "timeout_seconds": 60},
    ),
    ({"allow_unauthenticated": "true"}, {"allow_unauthenticated": True}),
    ({"allow_unauthenticated": "TRUE"}, {"allow_unauthenticated": True}),
    ({"allow-unauthenticated": "yes"}, {"allow_unauthenticated": True}),
    ({"allow_unauthenticated": "0"}, {"allow_unauthenticated": False}),
    ({"allow_unauthenticated": "false"}, {"allow_unauthenticated": False}),
    ({"env": '{"A": "1", "B": "x,y"}'}, {"env": {"A": "1", "B": "x,y"}}),
    ({"env": "A=1,B=two=2, C = 3"}, {"env": {"A": "1", "B": "two=2", "C": " 3"}}),
    ({"env": ""}, {"env": {}}),
    ({"env": "A="}, {"env": {"A": ""}}),
    (
        {"triggers": '[{"pubsub": {"topic": "orders"}}]'},
        {"triggers": [{"pubsub": {"topic": "orders"}}]},
    ),
    (
        {"triggers": "pubsub:orders, storage:uploads:deleted,storage:abc"},
        {
            "triggers": [
                {"pubsub": {"topic": "orders"}},
                {"storage": {"bucket": "uploads", "event": "deleted"}},
                {"storage": {"bucket": "abc", "event": "finalized"}},
            ]
        },
    ),
    # metadata is shared with other tools: unknown keys are ignored
    ({"owner": "team-a", "goog-reserved": "x", "service": "s"}, {"service": "s"}),
]


@pytest.mark.parametrize(("metadata", "expected"), METADATA)
def test_object_metadata_is_converted(metadata, expected):
    assert object_metadata_overrides(metadata) == expected


def test_none_metadata_is_no_overrides():
    assert object_metadata_overrides(None) == {}


BAD_METADATA = [
    ({"max_instances": "three"}, "max_instances", "'three' is not an integer"),
    ({"concurrency": "1.5"}, "concurrency", "is not an integer"),
    ({"concurrency": "0"}, "concurrency", "0 is less than the minimum of 1"),
    ({"allow_unauthenticated": "maybe"}, "allow_unauthenticated", "'maybe' is not true or false"),
    ({"env": "A"}, "env", "'A' is not NAME=VALUE"),
    ({"env": "{bad json"}, "env", "not a valid JSON object"),
    ({"env": "PORT=1"}, "env.PORT", "reserved"),
    ({"env": '{"A": 1}'}, "env.A", "expected a string"),
    ({"service": "Bad_Name"}, "service", "'Bad_Name'"),
    ({"signature_type": "grpc"}, "signature_type", "'grpc'"),
    ({"triggers": "kafka:orders"}, "triggers", "not pubsub:TOPIC or storage:BUCKET"),
    ({"triggers": "[oops"}, "triggers", "not a valid JSON list"),
    ({"triggers": "storage:abc:created"}, "triggers[0].storage.event", "'created'"),
    ({"max_instances": "1", "max-instances": "2"}, "max_instances", "given twice"),
]


@pytest.mark.parametrize(
    ("metadata", "field", "words"), BAD_METADATA, ids=[b[1] for b in BAD_METADATA]
)
def test_bad_object_metadata_is_an_error_naming_the_key(metadata, field, words):
    with pytest.raises(ManifestError) as caught:
        object_metadata_overrides(metadata)
    assert caught.value.field == field
    assert str(caught.value).startswith("object metadata: ")
    assert words in str(caught.value)


def test_metadata_then_request_precedence():
    yaml_layer = {"max_instances": 5, "concurrency": 10}
    metadata = object_metadata_overrides({"max_instances": "3", "concurrency": "20"})
    request = {"max_instances": 1}
    got = resolve(yaml_layer, {**metadata, **request}, "x.zip")
    assert (got.max_instances, got.concurrency) == (1, 20)


# --------------------------------------------------------------------------- sources


GOOD_SOURCES = [
    ("gs://bucket/f.zip", Source("bucket", "f.zip", None)),
    ("gs://bucket/f.zip#123", Source("bucket", "f.zip", 123)),
    (
        "gs://my.bucket_1/a/b/c.zip#1700000000000000",
        Source("my.bucket_1", "a/b/c.zip", 1700000000000000),
    ),
    ("gs://bucket/with space.zip", Source("bucket", "with space.zip", None)),
    ("gs://bucket/a#b.zip", Source("bucket", "a#b.zip", None)),  # gsutil: only #DIGITS at the end
    ("gs://bucket/a#b.zip#5", Source("bucket", "a#b.zip", 5)),
]


@pytest.mark.parametrize(("text", "expected"), GOOD_SOURCES)
def test_source_parse(text, expected):
    got = Source.parse(text)
    assert got == expected
    assert got.uri() == text
    assert Source.parse(got.uri()) == got


BAD_SOURCES = [
    ("bucket/f.zip", "not a Cloud Storage URI"),
    ("s3://bucket/f.zip", "not a Cloud Storage URI"),
    ("gs://", "names no bucket"),
    ("gs:///f.zip", "names no bucket"),
    ("gs://bucket", "names no object"),
    ("gs://bucket/", "names no object"),
    ("gs://bucket/#12", "names no object"),
    ("gs://Bucket/f.zip", "'Bucket' is not a valid bucket name"),
    ("gs://ab/f.zip", "'ab' is not a valid bucket name"),
    ("gs://goog-bucket/f.zip", "not a valid bucket name"),
    ("gs://bucket/f.zip#0", "generation 0"),
    ("gs://bucket/a\nb.zip", "line breaks"),
    ("gs://bucket/" + "x" * 1025, "longer than 1024 bytes"),
    (None, "expected a gs:// URI"),
]


@pytest.mark.parametrize(("text", "words"), BAD_SOURCES)
def test_bad_sources_say_what_is_wrong(text, words):
    with pytest.raises(ManifestError) as caught:
        Source.parse(text)
    assert words in str(caught.value)
    assert caught.value.field == "source"


# --------------------------------------------------------------------------- ids


def test_deployment_id_is_deterministic_and_short():
    a = deployment_id("bucket", "f.zip", 123)
    assert a == deployment_id("bucket", "f.zip", 123)
    assert re.fullmatch(r"d-[0-9a-f]{16}", a)
    # valid label value (<= 63, lowercase, digits, '-') and ordering key (<= 1024 bytes)
    assert re.fullmatch(r"[a-z][-a-z0-9_]{0,62}", a)


@pytest.mark.parametrize(
    "other",
    [
        ("bucket", "f.zip", 124),
        ("bucket2", "f.zip", 123),
        ("bucket", "g.zip", 123),
        ("bucke", "tf.zip", 123),
    ],
)
def test_deployment_id_differs_when_anything_differs(other):
    assert deployment_id(*other) != deployment_id("bucket", "f.zip", 123)


TRIGGERS = [
    Trigger("pubsub", topic="orders"),
    Trigger("pubsub", topic="projects/p-123/topics/Orders.v2"),
    Trigger("storage", bucket="uploads", event="finalized"),
    Trigger("storage", bucket="uploads", event="deleted"),
]


@pytest.mark.parametrize("service", ["hello", "a", "a" * 49, "my-func-v2"])
def test_trigger_ids_are_stable_valid_and_distinct(service):
    ids = [t.trigger_id(service) for t in TRIGGERS]
    assert ids == [t.trigger_id(service) for t in TRIGGERS]
    assert len(set(ids)) == len(ids)
    for trigger_id in ids:
        assert len(trigger_id) <= 63
        assert TRIGGER_ID_RE.fullmatch(trigger_id), trigger_id
    assert ids[0].startswith(service[:40])


def test_trigger_ids_differ_per_service_even_when_truncated():
    t = Trigger("pubsub", topic="orders")
    assert t.trigger_id("a" * 49) != t.trigger_id("a" * 48)
    assert t.trigger_id("hello") != t.trigger_id("hello2")


def test_trigger_event_types():
    assert TRIGGERS[0].event_type == "google.cloud.pubsub.topic.v1.messagePublished"
    assert TRIGGERS[2].event_type == "google.cloud.storage.object.v1.finalized"
    assert TRIGGERS[3].event_type == "google.cloud.storage.object.v1.deleted"


# --------------------------------------------------------------------------- reading


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_function_yaml_is_read_from_the_archive_root():
    data = make_zip(
        {
            "main.py": b"def hello(r): return 'hi'\n",
            "function.yaml": b"service: hi\nmax_instances: 2\n",
        }
    )
    assert read_manifest_from_zip(data) == {"service": "hi", "max_instances": 2}


def test_archive_path_and_file_object_work_too(tmp_path):
    data = make_zip({"function.yaml": b"service: hi\n"})
    path = tmp_path / "a.zip"
    path.write_bytes(data)
    assert read_manifest_from_zip(path) == {"service": "hi"}
    assert read_manifest_from_zip(str(path)) == {"service": "hi"}
    assert read_manifest_from_zip(io.BytesIO(data)) == {"service": "hi"}


def test_absent_function_yaml_is_none():
    assert read_manifest_from_zip(make_zip({"main.py": b""})) is None
    # only the archive root counts
    assert read_manifest_from_zip(make_zip({"sub/function.yaml": b"service: x\n"})) is None


def test_empty_function_yaml_is_an_empty_manifest():
    assert read_manifest_from_zip(make_zip({"function.yaml": b""})) == {}
    assert read_manifest_from_zip(make_zip({"function.yaml": b"# just a comment\n"})) == {}


def test_too_big_function_yaml_is_refused_without_reading_it():
    big = b"# " + b"x" * m.MAX_MANIFEST_BYTES + b"\n"
    with pytest.raises(ManifestError, match="more than the limit of 65536"):
        read_manifest_from_zip(make_zip({"function.yaml": big}))


def test_bad_yaml_in_the_archive_says_where():
    data = make_zip({"function.yaml": b"service: hi\nenv: {A: 1\n"})
    with pytest.raises(ManifestError, match=r"function.yaml: invalid YAML at line \d+, column \d+"):
        read_manifest_from_zip(data)


def test_not_a_zip_is_a_manifest_error():
    with pytest.raises(ManifestError, match="not a valid zip file"):
        read_manifest_from_zip(b"PK not really")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("- a\n- b\n", "expected a mapping"),
        ("just text", "expected a mapping"),
        ("service: [unclosed", "invalid YAML at line"),
        ("service: a\nservice: b\n", "duplicate key 'service'"),
        ("1: x\n", "key 1 is not a string"),
        ("\tservice: a\n", "invalid YAML"),
        ("x" * (m.MAX_MANIFEST_BYTES + 1), "more than the limit"),
    ],
)
def test_load_manifest_yaml_errors(text, words):
    with pytest.raises(ManifestError) as caught:
        load_manifest_yaml(text)
    assert words in str(caught.value)
    assert str(caught.value).startswith("function.yaml: ")


def test_load_manifest_yaml_accepts_str_and_bytes():
    text = "service: hello\nenv:\n  GREETING: hi\ntriggers:\n  - pubsub: {topic: orders}\n"
    assert load_manifest_yaml(text) == load_manifest_yaml(text.encode())
    assert load_manifest_yaml(text)["triggers"] == [{"pubsub": {"topic": "orders"}}]


def test_design_example_manifest_resolves():
    text = """
service: hello              # Cloud Run service name (default: from the archive's name)
entry_point: hello          # GOOGLE_FUNCTION_TARGET (default: service, '-' -> '_')
signature_type: http        # http | cloudevent | event (legacy background)
runtime: python311          # default: the builder's Python
env: {GREETING: hi}
min_instances: 0
max_instances: 10
concurrency: 80
timeout_seconds: 300
allow_unauthenticated: false
triggers:                   # besides HTTP, which every service has
  - pubsub: {topic: orders}
  - storage: {bucket: uploads, event: finalized}   # finalized | deleted | metadataUpdated
"""
    got = resolve(load_manifest_yaml(text), {}, "whatever.zip")
    assert got.service == "hello"
    assert got.env == {"GREETING": "hi"}
    assert len(got.triggers) == 2


# ------------------------------------------------------------- the runtime pins the Python version


def test_the_schema_accepts_exactly_the_runtimes_of_the_pinned_builder():
    """Issue 15 (3), issue 19: the manifest's runtimes and the builder image they are built
    with agree (https://cloud.google.com/docs/buildpacks/builders: google-22 has Python
    3.10 to 3.13 and Node.js 12.x.x to 24.x.x)."""
    from orchestrator import build

    allowed = m.schema()["$defs"]["manifestFields"]["properties"]["runtime"]["enum"]
    assert build.BUILDER == "gcr.io/buildpacks/builder:google-22"
    assert allowed == [f"python{v.replace('.', '')}" for v in build.BUILDER_PYTHONS] + [
        f"nodejs{v}" for v in build.BUILDER_NODEJS
    ]
    assert {"nodejs20", "nodejs22"} <= set(allowed)
    for runtime in allowed:
        m.validate_manifest({"runtime": runtime})


@pytest.mark.parametrize(
    ("runtime", "version"),
    [("python310", "3.10.x"), ("python311", "3.11.x"), ("python313", "3.13.x")],
)
def test_a_manifest_runtime_pins_the_python_version_not_only_the_language(runtime, version):
    """Issue 15 (3): ``GOOGLE_RUNTIME=python311`` picks the language; the version comes from
    ``GOOGLE_PYTHON_VERSION`` (https://cloud.google.com/docs/buildpacks/python)."""
    from orchestrator.build import function_env, pack_build
    from orchestrator.config import Settings
    from orchestrator.step import Deployment

    resolved = m.resolve({"runtime": runtime}, {}, "hello.zip")
    deployment = Deployment("d-1", resolved.service, "gs://b/o", "b", "o", 1, resolved)
    env = function_env(deployment)
    assert env["GOOGLE_RUNTIME"] == runtime
    assert env["GOOGLE_PYTHON_VERSION"] == version
    build = pack_build(("b", "o", 1), "img", env, [], Settings.defaults("p"))
    args = list(build.steps[0].args)
    assert f"GOOGLE_PYTHON_VERSION={version}" in args
    assert args[args.index("--builder") + 1] == "gcr.io/buildpacks/builder:google-22"


def test_without_a_runtime_no_version_is_forced():
    from orchestrator.build import function_env
    from orchestrator.step import Deployment

    resolved = m.resolve({}, {}, "hello.zip")
    deployment = Deployment("d-1", resolved.service, "gs://b/o", "b", "o", 1, resolved)
    assert "GOOGLE_PYTHON_VERSION" not in function_env(deployment)


@pytest.mark.parametrize(
    ("runtime", "version"),
    [("nodejs20", "20.x.x"), ("nodejs22", "22.x.x"), ("nodejs24", "24.x.x")],
)
def test_a_nodejs_runtime_pins_the_nodejs_version(runtime, version):
    """Issue 19: ``GOOGLE_NODEJS_VERSION`` in the docs' ``22.x.x`` form, which wins over
    package.json's ``engines.node`` (https://cloud.google.com/docs/buildpacks/nodejs);
    no Python variable."""
    from orchestrator.build import function_env, pack_build
    from orchestrator.config import Settings
    from orchestrator.step import Deployment

    resolved = m.resolve({"runtime": runtime}, {}, "hello.zip", languages=frozenset({"nodejs"}))
    deployment = Deployment("d-1", resolved.service, "gs://b/o", "b", "o", 1, resolved)
    env = function_env(deployment)
    assert env == {
        "GOOGLE_FUNCTION_TARGET": "hello",
        "GOOGLE_FUNCTION_SIGNATURE_TYPE": "http",
        "GOOGLE_RUNTIME": runtime,
        "GOOGLE_NODEJS_VERSION": version,
    }
    args = list(pack_build(("b", "o", 1), "img", env, [], Settings.defaults("p")).steps[0].args)
    assert f"GOOGLE_NODEJS_VERSION={version}" in args
    assert f"GOOGLE_RUNTIME={runtime}" in args


# ------------------------------------------------------------- the runtime is the source's language

PY = frozenset({"python"})
NODE = frozenset({"nodejs"})
BOTH = PY | NODE


@pytest.mark.parametrize(
    ("languages", "runtime"),
    [(PY, None), (NODE, "nodejs22"), (None, None)],
    ids=["python-builder-default", "nodejs22", "no-archive"],
)
def test_without_a_runtime_each_language_gets_its_default(languages, runtime):
    """Python: the builder's Python, as before; Node.js: nodejs22, named in the resolved
    manifest so the steps after intake (which see only it) know the language."""
    got = resolve({}, {}, "hello.zip", languages=languages)
    assert got.runtime == runtime
    assert got.to_dict().get("runtime") == runtime


def test_a_resolved_nodejs_manifest_reads_back_the_same_without_the_archive():
    """What step.py does with the workflow argument: resolve it again, no archive at hand."""
    got = resolve({"service": "fn"}, {}, "x.zip", languages=NODE)
    assert resolve(got.to_dict(), {}, "x.zip") == got


@pytest.mark.parametrize(
    ("languages", "runtime", "words"),
    [
        (PY, "nodejs22", ["'nodejs22' is a Node.js runtime", "no package.json", "it has main.py"]),
        (NODE, "python311", ["'python311' is a Python runtime", "no main.py", "package.json"]),
        (BOTH, None, ["both main.py", "package.json", "set runtime", "nodejs22", "python311"]),
    ],
    ids=["nodejs-over-python", "python-over-nodejs", "both-unnamed"],
)
def test_the_runtime_must_be_the_sources_language(languages, runtime, words):
    fields = {"runtime": runtime} if runtime else {}
    with pytest.raises(ManifestError) as caught:
        resolve(fields, {}, "hello.zip", languages=languages)
    assert caught.value.field == "runtime"
    for word in words:
        assert word in str(caught.value)


def test_an_override_runtime_is_held_to_the_source_too():
    with pytest.raises(ManifestError, match=r"no package\.json"):
        resolve({}, {"runtime": "nodejs20"}, "hello.zip", languages=PY)
    got = resolve({"runtime": "nodejs20"}, {"runtime": "python312"}, "h.zip", languages=BOTH)
    assert got.runtime == "python312"


@pytest.mark.parametrize(("languages", "runtime"), [(BOTH, "python311"), (BOTH, "nodejs20")])
def test_a_source_with_both_files_deploys_as_the_runtime_it_names(languages, runtime):
    assert resolve({"runtime": runtime}, {}, "h.zip", languages=languages).runtime == runtime

"""Inputs built to crash or exhaust the intake end in exactly one small ``failed`` event.

Each goes in through a public entry point (a zip dropped into the sources bucket, object
metadata, a deploy request on its topic), aimed at a service that is serving; each must
be reported once at ``accepted`` with a reason naming the problem, in an event of a few
KB, and leave the service serving (issue 14).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from localcloud.testing import zip_entries, zip_tree
from orchestrator import intake, manifest
from orchestrator.status import to_message
from orchestrator.step import Context
from tests.e2e.conftest import done, hello_source, steps

MAIN = b"def hello(request):\n    return 'bad'\n"
MAX_EVENT_BYTES = 8 * 1024


def alias_bomb(levels: int) -> bytes:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return ("\n".join(lines) + "\n").encode()


def archive(yaml_text: bytes) -> bytes:
    return zip_entries([("main.py", MAIN), ("function.yaml", yaml_text)])


ARCHIVES = {
    "function.yaml 20,000 levels deep": (
        archive(b"service: x\nenv: " + b"[" * 20_000),
        "nested more than 32 levels",
    ),
    "YAML alias bomb": (archive(alias_bomb(8)), "aliases expand to more than"),
    "function.yaml over 64 KB": (
        archive(b"service: x\n" + b"# padding\n" * 7_000),
        "more than the limit of 65536",
    ),
    "1,001 environment variables": (
        archive(("env:\n" + "".join(f"  V{i}: x\n" for i in range(1001))).encode()),
        "1,001 entries; at most 1,000 are allowed",
    ),
}


@pytest.fixture(scope="module")
def serving(pipeline) -> tuple[str, str]:
    name = f"hostile-{uuid.uuid4().hex[:6]}"
    dep_id, _ = pipeline.upload(hello_source(name, "still here"), f"{name}.zip")
    return name, done(pipeline.wait(dep_id)).details["url"]


def one_small_failure(pipeline, dep_id: str, code: str, words: str) -> None:
    events = pipeline.wait(dep_id, timeout=60)
    assert steps(events) == [("accepted", "failed")], events
    (event,) = events
    assert event.error_code == code
    assert words in event.message
    assert len(to_message(event)[0]) <= MAX_EVENT_BYTES


@pytest.mark.parametrize("case", sorted(ARCHIVES))
def test_a_hostile_archive_is_one_small_failure_and_the_service_keeps_serving(
    pipeline, serving, case
):
    name, url = serving
    data, words = ARCHIVES[case]
    if b"service: x" in data:  # aim it at the serving service
        data = data.replace(b"service: x", f"service: {name}".encode())
    dep_id, _ = pipeline.upload(data, f"{name}.zip")
    one_small_failure(pipeline, dep_id, "INVALID_MANIFEST", words)
    assert pipeline.get(url) == "still here"


def test_metadata_nested_1500_deep_is_one_small_failure(pipeline, serving):
    name, url = serving
    deep = '{"A": ' + "[" * 1_500 + "]" * 1_500 + "}"
    dep_id, _ = pipeline.upload(hello_source(name, "never"), f"{name}.zip", metadata={"env": deep})
    one_small_failure(pipeline, dep_id, "INVALID_MANIFEST", "env: nested more than 32 levels")
    assert pipeline.get(url) == "still here"


def publish_request(pipeline, body: bytes) -> str:
    """Publish a raw deploy request; the deployment id intake gives a request it cannot read."""
    topic = pipeline.settings.topic_path(pipeline.settings.requests_topic)
    message_id = pipeline.clients.publisher.publish(topic, body).result(timeout=30)
    return manifest.deployment_id("deploy-requests", message_id, 0)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[" * 100_000, "more than the limit"),
        (b'{"source": "gs://a-bucket/x.zip", "env": ' + b"[" * 40 + b"]" * 40 + b"}", "nested"),
        (
            json.dumps({"source": "gs://a-bucket/x.zip#99999999999999999999999"}).encode(),
            "larger than any Cloud Storage generation",
        ),
        (
            json.dumps({"source": "gs://a-bucket/x.zip", "env": {"BIG": "v" * 9_600_000}}).encode(),
            "more than the limit",
        ),
    ],
    ids=["100,000 brackets", "deep env", "huge generation", "9.6 MB env"],
)
def test_a_hostile_request_is_one_small_failure(pipeline, body, words):
    dep_id = publish_request(pipeline, body)
    one_small_failure(pipeline, dep_id, "INVALID_REQUEST", words)


def test_settings_over_the_workflows_argument_limit_are_refused_at_intake(pipeline, serving):
    name, url = serving
    env = {f"V{i}": "x" * 1000 for i in range(40)}  # 40 KB: each value within Cloud Run's
    dep_id, _ = pipeline.upload(hello_source(name, "never", env=env), f"{name}.zip")
    one_small_failure(pipeline, dep_id, "INVALID_MANIFEST", "Workflows execution argument")
    assert pipeline.get(url) == "still here"


def test_an_error_the_intake_did_not_foresee_is_reported_and_acknowledged(pipeline, monkeypatch):
    """A fault in the intake's own code (injected here, in-process) still ends the
    deployment with INTERNAL at ``accepted``, and the delivery is acknowledged: the entry
    point returns instead of raising, so Eventarc does not redeliver it for minutes."""
    name = f"fault-{uuid.uuid4().hex[:6]}"
    # A bucket without triggers: only this process's intake sees the object.
    bucket = pipeline.clients.storage.create_bucket(f"{name}-src")
    blob = bucket.blob(f"{name}.zip")
    blob.upload_from_string(zip_tree(hello_source(name, "never")))
    monkeypatch.setattr(intake.archive, "inspect", lambda data: {}["no such key"])
    ctx = Context(pipeline.settings, pipeline.clients)
    data = {"bucket": bucket.name, "name": blob.name, "generation": str(blob.generation)}
    assert intake.source_uploaded(data, ctx) is None
    dep_id = manifest.deployment_id(bucket.name, blob.name, blob.generation)
    one_small_failure(pipeline, dep_id, "INTERNAL", "KeyError")


SLOW_START = (
    "import time\n\nimport functions_framework\n\n"
    "time.sleep(4)  # a slow start: the deploy step waits for it\n\n\n"
    "@functions_framework.http\n"
    "def hello(request):\n"
    "    return 'slow'\n"
)


def test_a_deployment_whose_execution_was_cancelled_is_ended_by_the_next_one(pipeline):
    """Cancelled mid-deploy, a deployment's workflow publishes nothing more and its lock
    stays: the service's next deployment reports it ``done`` ``failed`` (naming the
    cancellation), takes the lock over and deploys."""
    from google.cloud.workflows import executions_v1

    name = f"abandoned-{uuid.uuid4().hex[:6]}"
    files = hello_source(name, "slow")
    files["main.py"] = SLOW_START
    first, _ = pipeline.upload(files, f"{name}.zip")
    deadline = time.monotonic() + 60
    while ("deploy", "running") not in steps(pipeline.seen(first)):
        assert time.monotonic() < deadline, pipeline.seen(first)
        time.sleep(0.05)
    record = json.loads(
        pipeline.clients.storage.bucket(pipeline.settings.records_bucket)
        .blob(f"deployments/{first}/claim.json")
        .download_as_bytes()
    )
    cancelled = pipeline.clients.executions.cancel_execution(name=record["execution"])
    assert cancelled.state == executions_v1.Execution.State.CANCELLED
    second, _ = pipeline.upload(hello_source(name, "second"), f"{name}.zip")
    ended = pipeline.wait(first, timeout=60)
    assert done(ended).state == "failed"
    assert done(ended).error_code == "WORKFLOW_CANCELLED"
    assert "CANCELLED" in done(ended).message
    assert done(pipeline.wait(second)).state == "succeeded"
    assert pipeline.get(done(pipeline.wait(second)).details["url"]) == "second"

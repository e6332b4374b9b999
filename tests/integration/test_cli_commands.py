"""The pipeline's ``orch`` commands, run with click's CliRunner against the session localcloud.

Each test gets its own sources bucket and status/requests topics through the ``ORCH_*``
variables. The pipeline itself is not running here: where a command follows a deployment, a
test thread plays the pipeline and publishes a realistic status sequence for the deployment
id the command computes.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from google.api_core import exceptions
from google.cloud import pubsub_v1, run_v2
from google.iam.v1 import policy_pb2

from localcloud.testing import pack_build, wait_for, zip_dir
from orch.cli import main
from orchestrator import clients as clients_module
from orchestrator import manifest
from orchestrator.clients import Clients, Environment
from orchestrator.status import StatusEvent, StatusPublisher

FUNCTIONS = Path(__file__).parent.parent / "functions"
PROJECT = "local-project"
PARENT = f"projects/{PROJECT}/locations/us-central1"


@pytest.fixture(scope="module")
def clients(localcloud) -> Clients:
    return Clients(Environment.from_env(localcloud.env))


@pytest.fixture(autouse=True)
def factory(clients, monkeypatch) -> None:
    """The CLI's client factory points at the session localcloud, whatever ran before."""
    monkeypatch.setattr(clients_module, "_default", clients)


class Pipeline:
    """Per-test bucket and topics, and the environment that names them."""

    def __init__(self, clients: Clients, localcloud) -> None:
        run = uuid.uuid4().hex[:8]
        self.clients = clients
        self.bucket = f"cli-src-{run}"
        self.records = f"cli-rec-{run}"
        self.requests_topic = f"deploy-requests-{run}"
        self.status_topic = f"deploy-status-{run}"
        clients.storage.create_bucket(self.bucket)
        clients.storage.create_bucket(self.records)
        for topic in (self.requests_topic, self.status_topic):
            clients.publisher.create_topic(name=self.topic_path(topic))
        self.env = {
            **localcloud.env,
            "ORCH_CONFIG": "/nonexistent/orch-config.json",
            "ORCH_SOURCES_BUCKET": self.bucket,
            "ORCH_RECORDS_BUCKET": self.records,
            "ORCH_REQUESTS_TOPIC": self.requests_topic,
            "ORCH_STATUS_TOPIC": self.status_topic,
        }

    @staticmethod
    def topic_path(topic: str) -> str:
        return f"projects/{PROJECT}/topics/{topic}"

    def subscriptions(self) -> list[str]:
        return list(
            self.clients.publisher.list_topic_subscriptions(
                topic=self.topic_path(self.status_topic)
            )
        )

    def invoke(self, *args: str) -> object:
        return CliRunner().invoke(main, list(args), env=self.env, catch_exceptions=False)

    def close(self) -> None:
        for topic in (self.requests_topic, self.status_topic):
            with contextlib.suppress(Exception):
                self.clients.publisher.delete_topic(topic=self.topic_path(topic))
        for bucket in (self.bucket, self.records):
            with contextlib.suppress(Exception):
                self.clients.storage.bucket(bucket).delete(force=True)


@pytest.fixture
def pipeline(clients, localcloud) -> Iterator[Pipeline]:
    p = Pipeline(clients, localcloud)
    yield p
    p.close()


@pytest.fixture
def function_dir(tmp_path) -> Path:
    src = tmp_path / "hello_fn"
    src.mkdir()
    (src / "main.py").write_text("def hello_fn(request):\n    return 'hi'\n")
    (src / "notes.log").write_text("left out")
    (src / ".gcloudignore").write_text("*.log\n")
    return src


# -------------------------------------------------------------------- playing the pipeline


def play(
    pipeline: Pipeline,
    find_id: Callable[[], str | None],
    events: Callable[[str], list[StatusEvent]],
) -> threading.Thread:
    """A thread that waits for the deployment id, then publishes ``events(id)`` in order."""
    publisher = pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
    )
    status = StatusPublisher(
        pipeline.topic_path(pipeline.status_topic), publisher=publisher, project=PROJECT
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            deployment_id = wait_for(find_id, 20, "the command to start a deployment")
            for event in events(deployment_id):
                status.publish(event)  # returns once Pub/Sub has it, in order
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


def upload_id(pipeline: Pipeline, object_name: str) -> Callable[[], str | None]:
    def find() -> str | None:
        blob = pipeline.clients.storage.bucket(pipeline.bucket).get_blob(object_name)
        if blob is None:
            return None
        return manifest.deployment_id(pipeline.bucket, object_name, blob.generation)

    return find


def subscribed(pipeline: Pipeline, deployment_id: str) -> Callable[[], str | None]:
    """The id once the command's temporary subscription exists (earlier events are lost)."""
    return lambda: deployment_id if pipeline.subscriptions() else None


def event(deployment_id: str, service: str, step: str, state: str, **fields) -> StatusEvent:
    return StatusEvent(deployment_id, service, step, state, **fields)


def success(deployment_id: str, service: str) -> list[StatusEvent]:
    # First, a finished deployment of the same service: the command must not stop at it.
    other = "d-0000000000000000"
    out = [
        event(other, service, "done", "failed", error_code="DEPLOY_FAILED", message="not mine"),
        event(deployment_id, service, "accepted", "succeeded", message="accepted"),
    ]
    for step in ("build", "push", "deploy", "bind_triggers"):
        out.append(event(deployment_id, service, step, "running", message=f"{step} started"))
        out.append(event(deployment_id, service, step, "succeeded", message=f"{step} done"))
    out.append(
        event(
            deployment_id,
            service,
            "done",
            "succeeded",
            message="deployed",
            details={
                "url": f"http://127.0.0.1:9/{service}",
                "revision": f"{PARENT}/services/{service}/revisions/{service}-00001-abc",
            },
        )
    )
    return out


def build_failure(deployment_id: str, service: str) -> list[StatusEvent]:
    message = "pip install failed: no matching distribution found for nosuchpkg==9"
    return [
        event(deployment_id, service, "accepted", "succeeded", message="accepted"),
        event(deployment_id, service, "build", "running", message="building"),
        event(
            deployment_id, service, "build", "failed", error_code="BUILD_FAILED", message=message
        ),
        event(
            deployment_id,
            service,
            "done",
            "failed",
            error_code="BUILD_FAILED",
            message=message,
            details={"step": "build"},
        ),
    ]


# -------------------------------------------------------------------------- deploy


def test_deploy_no_wait_uploads_a_deterministic_zip_with_the_service_metadata(
    pipeline, function_dir
):
    result = pipeline.invoke("deploy", str(function_dir), "--service", "greeter", "--no-wait")
    assert result.exit_code == 0, result.output
    blob = pipeline.clients.storage.bucket(pipeline.bucket).get_blob("greeter.zip")
    assert blob is not None and blob.metadata == {"service": "greeter"}
    assert result.stdout.strip() == manifest.deployment_id(
        pipeline.bucket, "greeter.zip", blob.generation
    )
    archive = zipfile.ZipFile(io.BytesIO(blob.download_as_bytes()))
    assert archive.namelist() == [".gcloudignore", "main.py"]

    # Without --service: named after the directory, no metadata.
    result = pipeline.invoke("deploy", str(function_dir), "--no-wait")
    assert result.exit_code == 0, result.output
    plain = pipeline.clients.storage.bucket(pipeline.bucket).get_blob("hello_fn.zip")
    assert plain is not None and not plain.metadata
    assert plain.download_as_bytes() == blob.download_as_bytes()
    assert pipeline.subscriptions() == []  # --no-wait follows nothing

    bad = pipeline.invoke("deploy", str(function_dir), "--service", "Bad_Name", "--no-wait")
    assert bad.exit_code == 2 and "--service" in bad.output


def test_deploy_follows_its_deployment_to_success(pipeline, function_dir):
    player = play(pipeline, upload_id(pipeline, "hello-fn.zip"), lambda d: success(d, "hello-fn"))
    result = pipeline.invoke(
        "deploy", str(function_dir), "--service", "hello-fn", "--timeout", "20"
    )
    player.join(5)
    assert not player.errors, player.errors
    assert result.exit_code == 0, result.output
    out = result.stdout
    for step in ("accepted", "build", "push", "deploy", "bind_triggers"):
        assert step in out
    assert "URL: http://127.0.0.1:9/hello-fn" in out
    assert "hello-fn-00001-abc" in out
    assert "not mine" not in result.output  # another deployment's events are ignored
    assert pipeline.subscriptions() == []  # the temporary subscription is gone


def test_deploy_reports_a_failure_with_exit_code_1(pipeline, function_dir):
    player = play(
        pipeline, upload_id(pipeline, "hello_fn.zip"), lambda d: build_failure(d, "hello-fn")
    )
    result = pipeline.invoke("deploy", str(function_dir), "--timeout", "20")
    player.join(5)
    assert not player.errors, player.errors
    assert result.exit_code == 1, result.output
    assert "failed at step build" in result.stderr
    assert "BUILD_FAILED" in result.stderr and "nosuchpkg==9" in result.stderr
    assert "URL:" not in result.output
    assert pipeline.subscriptions() == []


# -------------------------------------------------------------------------- request


def test_request_publishes_a_pinned_request_and_its_id(pipeline, clients):
    bucket = clients.storage.bucket(pipeline.bucket)
    blob = bucket.blob("app.zip")
    blob.upload_from_string(zip_dir(FUNCTIONS / "hello_http"))
    sub = f"projects/{PROJECT}/subscriptions/cli-req-{uuid.uuid4().hex[:8]}"
    clients.subscriber.create_subscription(
        name=sub, topic=pipeline.topic_path(pipeline.requests_topic)
    )
    try:
        result = pipeline.invoke(
            "request",
            f"gs://{pipeline.bucket}/app.zip",
            "--service",
            "app",
            "--env",
            "GREETING=hi",
            "--env",
            "MODE=a=b",
            "--allow-unauthenticated",
            "--max-instances",
            "3",
            "--entry-point",
            "hello",
            "--no-wait",
        )
        assert result.exit_code == 0, result.output
        received = clients.subscriber.pull(subscription=sub, max_messages=10, timeout=10)
        assert len(received.received_messages) == 1
        document = json.loads(received.received_messages[0].message.data)
        fields = {
            "service": "app",
            "env": {"GREETING": "hi", "MODE": "a=b"},
            "allow_unauthenticated": True,
            "max_instances": 3,
            "entry_point": "hello",
        }
        assert document == {"source": f"gs://{pipeline.bucket}/app.zip#{blob.generation}", **fields}
        source, overrides = manifest.parse_request(document)  # what on_deploy_request does
        assert result.stdout.strip() == manifest.deployment_id(
            source.bucket, source.object, source.generation, overrides
        )
        # An object name means the sources bucket; a missing object is an error.
        assert pipeline.invoke("request", "app.zip", "--no-wait").exit_code == 0
        again = clients.subscriber.pull(subscription=sub, max_messages=10, timeout=10)
        assert json.loads(again.received_messages[0].message.data) == {
            "source": f"gs://{pipeline.bucket}/app.zip#{blob.generation}"
        }
        missing = pipeline.invoke("request", "nothere.zip", "--no-wait")
        assert missing.exit_code == 1 and "no object" in missing.output
        bad = pipeline.invoke("request", "app.zip", "--env", "NOEQUALS", "--no-wait")
        assert bad.exit_code == 2
    finally:
        clients.subscriber.delete_subscription(subscription=sub)


def test_request_follow_stops_at_a_failed_accepted(pipeline, clients):
    blob = clients.storage.bucket(pipeline.bucket).blob("broken.zip")
    blob.upload_from_string(b"not a zip")
    deployment = manifest.deployment_id(
        pipeline.bucket, "broken.zip", blob.generation, {"service": "broken"}
    )
    refusal = [
        event(
            deployment,
            "broken",
            "accepted",
            "failed",
            error_code="INVALID_MANIFEST",
            message="broken.zip is not a zip archive",
        )
    ]
    player = play(pipeline, subscribed(pipeline, deployment), lambda d: refusal)
    result = pipeline.invoke("request", "broken.zip", "--service", "broken", "--timeout", "20")
    player.join(5)
    assert result.exit_code == 1, result.output
    assert "failed at step accepted" in result.stderr
    assert "is not a zip archive" in result.stderr
    assert pipeline.subscriptions() == []


# -------------------------------------------------------------------------- status


def test_status_shows_a_claim_and_lists_deployments(pipeline, clients):
    """Claims are read from the records bucket (where intake writes them), not the sources
    bucket."""
    bucket = clients.storage.bucket(pipeline.records)
    claim = {
        "deployment_id": "d-1111111111111111",
        "service": "hello",
        "source": f"gs://{pipeline.bucket}/hello.zip#1",
        "execution": None,
        "created": "2026-01-01T00:00:00Z",
        "state": "failed",
        "error": {"code": "INVALID_MANIFEST", "message": "function.yaml: bad key"},
    }
    bucket.blob("deployments/d-1111111111111111/claim.json").upload_from_string(json.dumps(claim))
    one = pipeline.invoke("status", "d-1111111111111111")
    assert one.exit_code == 0, one.output
    assert "INVALID_MANIFEST: function.yaml: bad key" in one.stdout
    listing = pipeline.invoke("status")
    assert listing.exit_code == 0
    assert "d-1111111111111111" in listing.stdout and "failed" in listing.stdout
    assert pipeline.invoke("status", "d-2222222222222222").exit_code == 1


def test_status_follow_prints_one_deployments_events_until_done(pipeline):
    deployment = "d-3333333333333333"
    player = play(pipeline, subscribed(pipeline, deployment), lambda d: success(d, "svc"))
    result = pipeline.invoke("status", deployment, "--follow")
    player.join(5)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if deployment in line]
    assert len(lines) == 10  # accepted, 4 steps x (running, succeeded), done
    assert "not mine" not in result.output
    assert "URL: http://127.0.0.1:9/svc" in result.stdout
    assert pipeline.subscriptions() == []


# --------------------------------------------------------- services, url, call, logs


@pytest.fixture(scope="module")
def deployed(clients) -> Iterator[dict[str, run_v2.Service]]:
    """A public and a private service of tests/functions/hello_http, through Build and Run."""
    bucket = clients.storage.create_bucket(f"cli-run-{uuid.uuid4().hex[:8]}")
    blob = bucket.blob("hello_http.zip")
    blob.upload_from_string(zip_dir(FUNCTIONS / "hello_http"))
    image = "us-central1-docker.pkg.dev/local-project/functions/cli-hello"
    build = pack_build(
        (bucket.name, blob.name, blob.generation), image, {"GOOGLE_FUNCTION_TARGET": "hello"}
    )
    built = clients.cloud_build.create_build(project_id=PROJECT, build=build).result(timeout=180)
    reference = f"{image}@{built.results.images[0].digest}"
    run = uuid.uuid4().hex[:6]
    services: dict[str, run_v2.Service] = {}
    operations = {}
    for kind in ("public", "private"):
        service = run_v2.Service(
            labels={"deployment-id": f"d-{kind}"} if kind == "public" else {},
            template=run_v2.RevisionTemplate(containers=[run_v2.Container(image=reference)]),
        )
        operations[kind] = clients.run_services.create_service(
            parent=PARENT, service=service, service_id=f"cli-{kind}-{run}"
        )
    for kind, operation in operations.items():
        services[kind] = operation.result(timeout=120)
    name = services["public"].name
    policy = clients.run_services.get_iam_policy(request={"resource": name})
    policy.bindings.append(policy_pb2.Binding(role="roles/run.invoker", members=["allUsers"]))
    clients.run_services.set_iam_policy(request={"resource": name, "policy": policy})
    yield services
    for service in services.values():
        with contextlib.suppress(exceptions.NotFound):
            clients.run_services.delete_service(name=service.name).result(timeout=60)


def short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def test_services_and_url(pipeline, deployed):
    listing = pipeline.invoke("services")
    assert listing.exit_code == 0, listing.output
    for kind, service in deployed.items():
        line = next(x for x in listing.stdout.splitlines() if x.startswith(short(service.name)))
        assert service.uri in line
        assert short(service.latest_ready_revision) in line
        assert ("d-public" in line) == (kind == "public")
    public = short(deployed["public"].name)
    url = pipeline.invoke("url", public)
    assert url.exit_code == 0 and url.stdout.strip() == deployed["public"].uri
    missing = pipeline.invoke("url", "no-such-service")
    assert missing.exit_code == 1 and "no service 'no-such-service'" in missing.output


def test_call_public_and_private_then_logs(pipeline, deployed):
    for kind in ("public", "private"):
        result = pipeline.invoke("call", short(deployed[kind].name), "--data", '{"a": 1}')
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == "hello from a localcloud build"
    missing = pipeline.invoke("call", short(deployed["public"].name), "--path", "/x", "-X", "PUT")
    assert missing.exit_code == 0  # functions-framework answers every path of an HTTP function
    logs = pipeline.invoke("logs", short(deployed["private"].name), "-n", "20")
    assert logs.exit_code == 0, logs.output
    revision = short(deployed["private"].latest_ready_revision)
    assert f"==> {revision} (" in logs.stdout
    assert pipeline.invoke("logs", "no-such-service").exit_code == 1

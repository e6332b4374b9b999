"""The Cloud Functions API v2 through the official ``google-cloud-functions`` client (issue 18).

A function is uploaded through the signed URL ``GenerateUploadUrl`` answers, built by
localcloud's Cloud Build into ``gcf-artifacts``, served by a Cloud Run service and, when
event-driven, triggered through an Eventarc trigger; each of those is visible through its
own API too. Each real deploy costs a build, so the deploys are few and each test walks a
whole lifecycle.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import functions_v2
from google.iam.v1 import policy_pb2
from google.protobuf import field_mask_pb2

from localcloud.core.oidc import Issuer
from localcloud.testing import Recorder, call, make_public, run_service, zip_tree
from orchestrator.clients import Clients, Environment

PROJECT = "local-project"
LOCATION = f"projects/{PROJECT}/locations/us-central1"
FUNCTIONS = Path(__file__).parents[1] / "functions"
TRIGGER_SA = "functions-trigger@local-project.iam.gserviceaccount.com"
Stage = functions_v2.Stage
HELLO = {"main.py": (FUNCTIONS / "echo_env" / "main.py").read_text()}
BROKEN = {"main.py": "def echo(request):\n    return 'unterminated\n"}


pytestmark = pytest.mark.usefixtures("default_build_account_builds")


@pytest.fixture(scope="module")
def clients(localcloud) -> Clients:
    return Clients(Environment.from_env(localcloud.env))


def put(url: str, data: bytes, content_type: str) -> int:
    request = urllib.request.Request(
        url, data=data, method="PUT", headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def upload(clients: Clients, files: dict[str, str]) -> Any:
    """Upload a zip as gcloud does: PUT to the signed URL with content-type application/zip."""
    answer = clients.functions.generate_upload_url(request={"parent": LOCATION})
    assert put(answer.upload_url, zip_tree(files), "application/zip") == 200
    return answer.storage_source


@pytest.fixture
def functions(clients):
    """Creates functions and deletes what it created."""
    made: list[str] = []

    def create(function_id: str, files: dict[str, str], entry: str, **fields: Any):
        function = functions_v2.Function(
            build_config={
                "runtime": "python311",
                "entry_point": entry,
                "source": {"storage_source": upload(clients, files)},
            },
            **fields,
        )
        made.append(f"{LOCATION}/functions/{function_id}")
        return clients.functions.create_function(
            parent=LOCATION, function=function, function_id=function_id
        )

    yield create
    for name in made:
        with contextlib.suppress(exceptions.NotFound):
            clients.functions.delete_function(name=name).result(timeout=120)


def stages(operation: Any) -> dict[str, tuple[str, str]]:
    metadata = functions_v2.OperationMetadata.deserialize(operation.operation.metadata.value)
    return {
        Stage.Name(s.name).name: (Stage.State(s.state).name, s.resource) for s in metadata.stages
    }


def test_the_upload_url_takes_a_zip_put_with_its_content_type_only(clients):
    answer = clients.functions.generate_upload_url(request={"parent": LOCATION})
    source = answer.storage_source
    assert source.bucket.startswith("gcf-v2-uploads-") and source.bucket.endswith("-us-central1")
    data = zip_tree({"main.py": "x = 1\n"})
    # The content type is part of what is signed (Google: SignatureDoesNotMatch).
    assert put(answer.upload_url, data, "application/octet-stream") == 403
    assert put(answer.upload_url, data, "application/zip") == 200
    tampered = answer.upload_url.replace(source.object_, "other.zip")
    assert put(tampered, data, "application/zip") == 403
    blob = clients.storage.bucket(source.bucket).blob(source.object_)
    assert blob.download_as_bytes() == data


def test_an_http_function_is_deployed_updated_and_deleted(clients, functions):
    function_id = f"fn-http-{uuid.uuid4().hex[:6]}"
    name = f"{LOCATION}/functions/{function_id}"
    operation = functions(
        function_id,
        HELLO,
        "echo",
        service_config={"environment_variables": {"GREETING": "one"}, "available_cpu": "1"},
    )
    function = operation.result(timeout=300)
    assert function.state == functions_v2.Function.State.ACTIVE
    assert function.environment == functions_v2.Environment.GEN_2
    seen = stages(operation)
    # No ARTIFACT_REGISTRY stage: gcloud adds its own and crashes on a listed one.
    assert list(seen) == ["BUILD", "SERVICE", "TRIGGER"]
    assert {state for state, _ in seen.values()} == {"COMPLETE"}
    # Its build, image, repository and service are those APIs' own resources.
    service = clients.run_services.get_service(name=function.service_config.service)
    assert service.name == f"{LOCATION}/services/{function_id}"
    image = service.template.containers[0].image
    assert image.startswith(
        "us-central1-docker.pkg.dev/local-project/gcf-artifacts/local--project__us--central1__"
    )
    assert seen["BUILD"][1] == function.build_config.build
    build_id = function.build_config.build.rsplit("/", 1)[1]
    build = clients.cloud_build.get_build(project_id=PROJECT, id=build_id)
    assert build.results.images[0].digest in image
    repo = clients.artifact_registry.get_repository(name=f"{LOCATION}/repositories/gcf-artifacts")
    assert repo.labels["goog-managed-by"] == "cloudfunctions"
    assert function.service_config.timeout_seconds == 60
    assert function.service_config.available_memory == "256M"
    # Private until invokers are granted, as on Google Cloud.
    assert call(function.url)[0] in (401, 403)
    make_public(clients, function.service_config.service)
    status, body = call(function.url)
    assert status == 200, body
    assert json.loads(body)["greeting"] == "one"

    # Read back, listed with a filter and an order, its source downloadable.
    assert clients.functions.get_function(name=name).url == function.url
    listed = clients.functions.list_functions(
        request={"parent": LOCATION, "filter": 'state="ACTIVE"', "order_by": "name desc"}
    )
    assert name in [f.name for f in listed]
    url = clients.functions.generate_download_url(request={"name": name}).download_url
    with urllib.request.urlopen(url, timeout=30) as response:
        archive = zipfile.ZipFile(io.BytesIO(response.read()))
    assert archive.read("main.py").decode() == HELLO["main.py"]

    # An update of the environment only: no build, a new revision serving the new value.
    updated = clients.functions.update_function(
        function={"name": name, "service_config": {"environment_variables": {"GREETING": "two"}}},
        update_mask=field_mask_pb2.FieldMask(paths=["service_config.environment_variables"]),
    ).result(timeout=300)
    assert updated.build_config.build == function.build_config.build
    assert updated.service_config.revision != function.service_config.revision
    assert json.loads(call(function.url)[1])["greeting"] == "two"

    # An update whose build fails: the function keeps its config and its revision serves.
    broken = upload(clients, BROKEN)
    failing = clients.functions.update_function(
        function={"name": name, "build_config": {"source": {"storage_source": broken}}},
        update_mask=field_mask_pb2.FieldMask(paths=["build_config.source"]),
    )
    with pytest.raises(exceptions.InvalidArgument, match="Build failed with status: FAILURE"):
        failing.result(timeout=300)
    after = clients.functions.get_function(name=name)
    assert after.state == functions_v2.Function.State.ACTIVE
    assert after.build_config.source.storage_source.object_ != broken.object_
    assert after.service_config.revision == updated.service_config.revision
    assert json.loads(call(function.url)[1])["greeting"] == "two"

    clients.functions.delete_function(name=name).result(timeout=120)
    with pytest.raises(exceptions.NotFound):
        clients.functions.get_function(name=name)
    with pytest.raises(exceptions.NotFound):
        clients.run_services.get_service(name=service.name)


def test_a_failed_build_leaves_the_function_failed_with_the_error_and_log(clients, functions):
    function_id = f"fn-broken-{uuid.uuid4().hex[:6]}"
    operation = functions(function_id, BROKEN, "echo")
    with pytest.raises(exceptions.InvalidArgument) as raised:
        operation.result(timeout=300)
    assert "syntax error in main.py" in raised.value.message
    failed = clients.functions.get_function(name=f"{LOCATION}/functions/{function_id}")
    assert failed.state == functions_v2.Function.State.FAILED
    (message,) = failed.state_messages
    assert message.severity == functions_v2.StateMessage.Severity.ERROR
    assert "syntax error in main.py" in message.message
    log_url = message.message.rsplit("see the logs at ", 1)[1]
    with urllib.request.urlopen(log_url, timeout=30) as response:
        assert "syntax error" in response.read().decode()
    build_state, build = stages(operation)["BUILD"]
    assert build_state == "IN_PROGRESS" and "/builds/" in build


@pytest.fixture
def recorder(localcloud):
    rec = Recorder(localcloud.config.run_host_ports[0])
    yield rec
    rec.close()


def _invoker(clients: Clients, service: str) -> None:
    policy = clients.run_services.get_iam_policy(request={"resource": service})
    policy.bindings.append(
        policy_pb2.Binding(role="roles/run.invoker", members=[f"serviceAccount:{TRIGGER_SA}"])
    )
    clients.run_services.set_iam_policy(request={"resource": service, "policy": policy})


RECORDER = {"main.py": (FUNCTIONS / "event_recorder" / "main.py").read_text()}


def test_pubsub_and_storage_functions_receive_their_events(clients, functions, recorder):
    topic = f"projects/{PROJECT}/topics/fn-orders-{uuid.uuid4().hex[:6]}"
    clients.publisher.create_topic(name=topic)
    bucket = clients.storage.create_bucket(f"fn-up-{uuid.uuid4().hex[:8]}", location="us-central1")
    env = {"environment_variables": {"RECORD_URL": recorder.url}, "available_cpu": "1"}
    on_topic = functions(
        f"fn-topic-{uuid.uuid4().hex[:6]}",
        RECORDER,
        "record",
        service_config=env,
        event_trigger={
            "event_type": "google.cloud.pubsub.topic.v1.messagePublished",
            "pubsub_topic": topic,
            "service_account_email": TRIGGER_SA,
        },
    ).result(timeout=300)
    on_upload = functions(
        f"fn-object-{uuid.uuid4().hex[:6]}",
        RECORDER,
        "record",
        service_config=env,
        event_trigger={
            "event_type": "google.cloud.storage.object.v1.finalized",
            "event_filters": [{"attribute": "bucket", "value": bucket.name}],
            "service_account_email": TRIGGER_SA,
            "retry_policy": "RETRY_POLICY_RETRY",
        },
    ).result(timeout=300)
    for fn in (on_topic, on_upload):
        trigger = clients.eventarc.get_trigger(name=fn.event_trigger.trigger)
        assert trigger.destination.cloud_run.service == fn.name.rsplit("/", 1)[1]
        _invoker(clients, fn.service_config.service)
    assert on_topic.event_trigger.retry_policy == (
        functions_v2.EventTrigger.RetryPolicy.RETRY_POLICY_DO_NOT_RETRY
    )
    clients.publisher.publish(topic, b'{"order": 7}').result(timeout=30)
    bucket.blob("in/photo.jpg").upload_from_string(b"jpeg")
    events = recorder.wait(2, timeout=120)
    by_type = {e["attributes"]["type"]: e for e in events}
    published = by_type["google.cloud.pubsub.topic.v1.messagePublished"]
    assert base64.b64decode(published["data"]["message"]["data"]) == b'{"order": 7}'
    finalized = by_type["google.cloud.storage.object.v1.finalized"]
    assert finalized["data"]["name"] == "in/photo.jpg"


@pytest.mark.parametrize(
    ("function", "function_id", "field"),
    [
        ({"build_config": {"runtime": "python311"}}, "fn-nosource", "build_config.source"),
        (
            {"build_config": {"runtime": "python27", "source": {"storage_source": {"bucket": "b", "object_": "o"}}}},
            "fn-runtime",
            "build_config.runtime",
        ),
        (
            {"build_config": {"runtime": "python311", "entry_point": "not-python", "source": {"storage_source": {"bucket": "b", "object_": "o"}}}},
            "fn-entry",
            "build_config.entry_point",
        ),
        (
            {"build_config": {"runtime": "python311", "source": {"repo_source": {"repo_name": "r", "branch_name": "main"}}}},
            "fn-repo",
            "build_config.source.repo_source",
        ),
        (
            {"build_config": {"runtime": "python311", "entry_point": "main", "source": {"storage_source": {"bucket": "b", "object_": "o"}}}, "event_trigger": {"event_type": "google.cloud.audit.log.v1.written"}},
            "fn-type",
            "event_trigger.event_type",
        ),
        (
            {"build_config": {"runtime": "python311", "source": {"storage_source": {"bucket": "b", "object_": "o"}}}},
            "Bad_Id",
            "function_id",
        ),
    ],
)  # fmt: skip
def test_bad_input_is_refused_naming_the_field(clients, function, function_id, field):
    with pytest.raises(exceptions.InvalidArgument, match=field.replace(".", r"\.")):
        clients.functions.create_function(
            parent=LOCATION, function=function, function_id=function_id
        )


def test_a_trigger_without_a_type_is_refused_by_the_annotations(clients):
    with pytest.raises(exceptions.InvalidArgument) as raised:
        clients.functions.create_function(
            parent=LOCATION,
            function={"event_trigger": {"pubsub_topic": f"projects/{PROJECT}/topics/t"}},
            function_id="fn-notype",
        )
    assert "function.event_trigger.event_type" in raised.value.message


def test_list_runtimes_names_what_the_builder_builds(clients):
    runtimes = clients.functions.list_runtimes(parent=LOCATION).runtimes
    assert [r.name for r in runtimes] == ["python310", "python311", "python312", "python313"]
    only = clients.functions.list_runtimes(
        request={"parent": LOCATION, "filter": 'name="python312"'}
    )
    assert [r.name for r in only.runtimes] == ["python312"]


def test_a_principal_without_create_is_refused(localcloud, clients):
    issuer = Issuer(localcloud.config.data_dir / "oidc", localcloud.config.http_url)
    token = issuer.mint_access_token("nobody@example.com")
    with pytest.raises(exceptions.PermissionDenied, match=r"cloudfunctions\.functions\.create"):
        clients.functions.create_function(
            parent=LOCATION,
            function={"build_config": {"runtime": "python311"}},
            function_id="fn-denied",
            metadata=[("authorization", f"Bearer {token}")],
        )


# ------------------------------------------------------------------ event_trigger.retry_policy

PUBLISHED = "google.cloud.pubsub.topic.v1.messagePublished"


def deliveries(events: list[dict], subscription: str) -> int:
    """How many of the recorded Pub/Sub events came through ``subscription``."""
    return sum(event["data"]["subscription"] == subscription for event in events)


def wait_until(recorder: Recorder, done: Any, timeout: float = 60) -> list[dict]:
    """The recorded events once ``done(events)`` holds (or ``timeout`` has passed)."""
    deadline = time.monotonic() + timeout
    with recorder.arrived:
        while not done(recorder.events) and time.monotonic() < deadline:
            recorder.arrived.wait(max(deadline - time.monotonic(), 0))
        return list(recorder.events)


def test_a_failing_function_is_called_once_unless_it_asks_for_retries(clients, functions, recorder):
    """Retries are off by default: "By default, the retries are disabled for these triggers
    and can be re-enabled using the Cloud Functions v2 API"; with RETRY_POLICY_RETRY a failed
    call is retried with exponential backoff
    (https://cloud.google.com/functions/docs/bestpractices/retries)."""
    topic = f"projects/{PROJECT}/topics/fn-retry-{uuid.uuid4().hex[:6]}"
    clients.publisher.create_topic(name=topic)
    function_id = f"fn-retry-{uuid.uuid4().hex[:6]}"
    failing = functions(
        function_id,
        RECORDER,
        "record",
        service_config={
            "environment_variables": {"RECORD_URL": recorder.url, "FAIL": "1"},
            "available_cpu": "1",
        },
        event_trigger={
            "event_type": PUBLISHED,
            "pubsub_topic": topic,
            "service_account_email": TRIGGER_SA,
        },
    ).result(timeout=300)
    _invoker(clients, failing.service_config.service)
    assert failing.event_trigger.retry_policy == (
        functions_v2.EventTrigger.RetryPolicy.RETRY_POLICY_DO_NOT_RETRY
    )
    once = clients.eventarc.get_trigger(name=failing.event_trigger.trigger)
    assert once.retry_policy.max_attempts == 1
    # A twin: an Eventarc trigger of its own, with Eventarc's default retries, on the same
    # topic to the same service.
    twin = clients.eventarc.create_trigger(
        parent=LOCATION,
        trigger_id=f"twin-{uuid.uuid4().hex[:8]}",
        trigger={
            "event_filters": [{"attribute": "type", "value": PUBLISHED}],
            "destination": {"cloud_run": {"service": function_id, "region": "us-central1"}},
            "transport": {"pubsub": {"topic": topic}},
            "service_account": TRIGGER_SA,
        },
    ).result(timeout=60)
    once_sub, twin_sub = once.transport.pubsub.subscription, twin.transport.pubsub.subscription
    try:
        clients.publisher.publish(topic, b"poison").result(timeout=30)
        first = wait_until(recorder, lambda events: deliveries(events, once_sub) >= 1)
        assert deliveries(first, once_sub) == 1
        # Three more calls through the twin are two growing backoffs of the same retry
        # policy: a retry of the function's own event would have come by then.
        seen = deliveries(first, twin_sub)
        events = wait_until(recorder, lambda events: deliveries(events, twin_sub) >= seen + 3)
        assert deliveries(events, twin_sub) >= seen + 3
        assert deliveries(events, once_sub) == 1
    finally:
        clients.eventarc.delete_trigger(name=twin.name).result(timeout=60)

    # Asking for retries (an update of the trigger only: no new build) brings them back.
    retrying = clients.functions.update_function(
        function={
            "name": failing.name,
            "event_trigger": {
                "event_type": PUBLISHED,
                "pubsub_topic": topic,
                "service_account_email": TRIGGER_SA,
                "retry_policy": "RETRY_POLICY_RETRY",
            },
        },
        update_mask=field_mask_pb2.FieldMask(paths=["event_trigger"]),
    ).result(timeout=300)
    assert retrying.build_config.build == failing.build_config.build
    trigger = clients.eventarc.get_trigger(name=retrying.event_trigger.trigger)
    assert trigger.retry_policy.max_attempts == 0
    clients.publisher.publish(topic, b"poison again").result(timeout=30)
    sub = trigger.transport.pubsub.subscription
    events = wait_until(recorder, lambda events: deliveries(events, sub) >= 2)
    assert deliveries(events, sub) >= 2


# ------------------------------------------------------------------ a Cloud Run service's name


def test_a_function_may_not_take_over_a_cloud_run_service(clients, build_image):
    """A function's service bears its name; CreateFunction of a name a Cloud Run service
    made through the Cloud Run Admin API already has is refused (HTTP 409, ALREADY_EXISTS:
    "Could not create Cloud Run service NAME. A Cloud Run service with this name already
    exists. Please redeploy the function with a different name.", as Google answers in
    https://github.com/GoogleCloudPlatform/python-docs-samples/pull/13134), and the
    service is left as it was, serving."""
    service_id = f"fn-taken-{uuid.uuid4().hex[:6]}"
    service = clients.run_services.create_service(
        parent=LOCATION,
        service_id=service_id,
        service=run_service(build_image("echo_env", "echo"), {"GREETING": "mine"}),
    ).result(timeout=120)
    try:
        make_public(clients, service.name)
        service = clients.run_services.get_service(name=service.name)
        function = functions_v2.Function(
            build_config={
                "runtime": "python311",
                "entry_point": "echo",
                "source": {"storage_source": upload(clients, HELLO)},
            },
        )
        with pytest.raises(exceptions.AlreadyExists) as refused:
            clients.functions.create_function(
                parent=LOCATION, function=function, function_id=service_id
            )
        assert refused.value.message == (
            f"Could not create Cloud Run service {service_id}. A Cloud Run service with this "
            "name already exists. Please redeploy the function with a different name."
        )
        with pytest.raises(exceptions.NotFound):
            clients.functions.get_function(name=f"{LOCATION}/functions/{service_id}")
        after = clients.run_services.get_service(name=service.name)
        assert after.etag == service.etag
        assert after.latest_ready_revision == service.latest_ready_revision
        assert "goog-managed-by" not in after.labels
        status, body = call(service.uri)
        assert status == 200, body
        assert json.loads(body)["greeting"] == "mine"
    finally:
        clients.run_services.delete_service(name=service.name).result(timeout=60)

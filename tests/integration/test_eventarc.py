"""Eventarc through the official ``google-cloud-eventarc`` client: triggers deliver Cloud
Storage and Pub/Sub events to Cloud Run functions as CloudEvents.

Formats from googleapis/google-cloudevents (StorageObjectData, MessagePublishedData) and
https://cloud.google.com/eventarc/docs/cloudevents.
"""

from __future__ import annotations

import base64
import contextlib
import io
import time
import uuid
import zipfile
from pathlib import Path

import pytest
from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import eventarc_v1, run_v2, storage
from google.cloud.devtools import cloudbuild_v1
from google.iam.v1 import policy_pb2

from localcloud.testing import Recorder
from orchestrator.clients import Clients, Environment

FUNCTIONS = Path(__file__).parent.parent / "functions"
LOCATION = "projects/local-project/locations/us-central1"
TRIGGER_SA = "eventarc-trigger@local-project.iam.gserviceaccount.com"
OTHER_PROJECT = "ev-other-project"


@pytest.fixture(scope="module")
def clients(localcloud) -> Clients:
    return Clients(Environment.from_env(localcloud.env))


@pytest.fixture(scope="module")
def images(clients) -> dict[str, str]:
    bucket = clients.storage.create_bucket(f"ev-src-{uuid.uuid4().hex[:8]}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for p in (FUNCTIONS / "event_recorder").iterdir():
            if p.is_file():
                zf.writestr(p.name, p.read_bytes())
    blob = bucket.blob("recorder.zip")
    blob.upload_from_string(buffer.getvalue())
    out = {}
    for target, signature in (("record", "cloudevent"), ("record_legacy", "event")):
        image = f"us-central1-docker.pkg.dev/local-project/functions/recorder-{signature}"
        args = [
            "build",
            image,
            "--env",
            f"GOOGLE_FUNCTION_TARGET={target}",
            "--env",
            f"GOOGLE_FUNCTION_SIGNATURE_TYPE={signature}",
        ]
        build = clients.cloud_build.create_build(
            project_id="local-project",
            build=cloudbuild_v1.Build(
                source={"storage_source": {"bucket": bucket.name, "object_": blob.name}},
                steps=[{"name": "gcr.io/k8s-skaffold/pack", "entrypoint": "pack", "args": args}],
                images=[image],
            ),
        ).result(timeout=180)
        out[signature] = f"{image}@{build.results.images[0].digest}"
    return out


@pytest.fixture
def recorder(localcloud):
    rec = Recorder(localcloud.config.run_host_ports[0])
    yield rec
    rec.close()


@pytest.fixture
def function(clients, images, recorder):
    """Deploy a private recorder service the trigger's service account may invoke."""
    made: list[str] = []

    def deploy(signature: str = "cloudevent", fail: bool = False) -> run_v2.Service:
        env = [{"name": "RECORD_URL", "value": recorder.url}]
        if fail:
            env.append({"name": "FAIL", "value": "1"})
        service = clients.run_services.create_service(
            parent=LOCATION,
            service_id=f"rec-{uuid.uuid4().hex[:8]}",
            service=run_v2.Service(
                template={"containers": [{"image": images[signature], "env": env}]}
            ),
        ).result(timeout=120)
        policy = clients.run_services.get_iam_policy(request={"resource": service.name})
        policy.bindings.append(
            policy_pb2.Binding(role="roles/run.invoker", members=[f"serviceAccount:{TRIGGER_SA}"])
        )
        clients.run_services.set_iam_policy(request={"resource": service.name, "policy": policy})
        made.append(service.name)
        return service

    yield deploy
    for name in made:
        clients.run_services.delete_service(name=name).result(timeout=60)


@pytest.fixture
def trigger(clients):
    made: list[str] = []

    def create(service: run_v2.Service, filters: list[dict], **fields) -> eventarc_v1.Trigger:
        trigger_id = f"trg-{uuid.uuid4().hex[:8]}"
        result = clients.eventarc.create_trigger(
            parent=LOCATION,
            trigger_id=trigger_id,
            trigger=eventarc_v1.Trigger(
                event_filters=filters,
                destination={
                    "cloud_run": {
                        "service": service.name.rsplit("/", 1)[-1],
                        "region": "us-central1",
                    }
                },
                service_account=TRIGGER_SA,
                **fields,
            ),
        ).result(timeout=60)
        made.append(result.name)
        return result

    yield create
    for name in made:
        with contextlib.suppress(exceptions.NotFound):
            clients.eventarc.delete_trigger(name=name).result(timeout=60)


def regional_bucket(clients, prefix: str):
    """A new bucket in ``us-central1``, where these tests' triggers live (a bucket made
    without a location is in the ``US`` multi-region, as on Google Cloud)."""
    return clients.storage.create_bucket(f"{prefix}-{uuid.uuid4().hex[:8]}", location="us-central1")


def storage_filters(bucket: str, kind: str = "finalized") -> list[dict]:
    return [
        {"attribute": "type", "value": f"google.cloud.storage.object.v1.{kind}"},
        {"attribute": "bucket", "value": bucket},
    ]


def names(events: list[dict]) -> list[str]:
    """The object names of recorded storage events, in order of arrival."""
    return [event["data"]["name"] for event in events]


def test_object_finalized_arrives_as_a_cloudevent(clients, function, trigger, recorder):
    bucket = regional_bucket(clients, "ev")
    other = regional_bucket(clients, "ev-other")
    made = trigger(function(), storage_filters(bucket.name))
    assert made.transport.pubsub.subscription
    other.blob("ignored.txt").upload_from_string(b"not for this trigger")
    blob = bucket.blob("docs/hello.txt")
    blob.upload_from_string(b"hello", content_type="text/plain")
    (event,) = recorder.wait(1)
    attrs = event["attributes"]
    assert attrs["type"] == "google.cloud.storage.object.v1.finalized"
    assert attrs["source"] == f"//storage.googleapis.com/projects/_/buckets/{bucket.name}"
    assert attrs["subject"] == "objects/docs/hello.txt"
    assert attrs["bucket"] == bucket.name
    assert attrs["specversion"] == "1.0"
    assert attrs["id"] and attrs["time"]
    data = event["data"]
    assert data["bucket"] == bucket.name
    assert data["name"] == "docs/hello.txt"
    assert data["generation"] == str(blob.generation)
    assert data["size"] == "5"
    assert data["contentType"] == "text/plain"
    bucket.blob("sentinel.txt").upload_from_string(b"after the one in the other bucket")
    assert names(recorder.wait(2)) == ["docs/hello.txt", "sentinel.txt"], (
        "an object in another bucket must not be delivered"
    )


def test_message_published_arrives_as_a_cloudevent(
    clients, local_target, local_topic, function, trigger, recorder
):
    topic = local_topic()
    trigger(
        function(),
        [{"attribute": "type", "value": "google.cloud.pubsub.topic.v1.messagePublished"}],
        transport={"pubsub": {"topic": topic}},
    )
    message_id = local_target.publisher.publish(topic, b"order 42", origin="test").result(
        timeout=30
    )
    (event,) = recorder.wait(1)
    attrs = event["attributes"]
    assert attrs["type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert attrs["source"] == f"//pubsub.googleapis.com/{topic}"
    assert attrs["id"] == message_id
    message = event["data"]["message"]
    assert base64.b64decode(message["data"]) == b"order 42"
    assert message["attributes"] == {"origin": "test"}
    assert message["messageId"] == message_id
    assert event["data"]["subscription"].startswith(
        "projects/local-project/subscriptions/eventarc-"
    )


def test_path_pattern_and_legacy_event_function(clients, function, trigger, recorder):
    bucket = regional_bucket(clients, "ev-pp")
    filters = [
        *storage_filters(bucket.name),
        {
            "attribute": "subject",
            "value": "objects/uploads/*.zip",
            "operator": "match-path-pattern",
        },
    ]
    trigger(function("event"), filters)
    bucket.blob("other/skip.zip").upload_from_string(b"x")
    bucket.blob("uploads/take.txt").upload_from_string(b"x")
    bucket.blob("uploads/take.zip").upload_from_string(b"PK")
    (event,) = recorder.wait(1)
    assert event["kind"] == "legacy"
    assert event["data"]["name"] == "uploads/take.zip"
    assert event["context"]["event_type"] == "google.storage.object.finalize"
    bucket.blob("uploads/sentinel.zip").upload_from_string(b"PK")
    assert names(recorder.wait(2)) == ["uploads/take.zip", "uploads/sentinel.zip"]


def test_failing_function_is_retried_then_dead_lettered(
    clients, local_target, local_topic, local_subscription, function, trigger, recorder
):
    bucket = regional_bucket(clients, "ev-dl")
    made = trigger(function(fail=True), storage_filters(bucket.name))
    dead_topic = local_topic("dead")
    dead_sub = local_subscription(dead_topic, prefix="dead")
    sub = made.transport.pubsub.subscription
    local_target.subscriber.update_subscription(
        request={
            "subscription": {
                "name": sub,
                "dead_letter_policy": {"dead_letter_topic": dead_topic, "max_delivery_attempts": 5},
            },
            "update_mask": {"paths": ["dead_letter_policy"]},
        }
    )
    bucket.blob("poison.bin").upload_from_string(b"x")
    assert len(recorder.wait(5, timeout=60)) >= 5
    deadline = time.monotonic() + 30
    dead = []
    while not dead and time.monotonic() < deadline:
        dead = local_target.subscriber.pull(
            request={"subscription": dead_sub, "max_messages": 1}, timeout=5
        ).received_messages
    assert dead, "the event should reach the dead-letter topic after 5 attempts"
    assert dead[0].message.attributes["objectId"] == "poison.bin"


def test_deleted_trigger_delivers_nothing_more(clients, function, trigger, recorder):
    bucket = regional_bucket(clients, "ev-del")
    service = function()
    made = trigger(service, storage_filters(bucket.name))
    bucket.blob("one.txt").upload_from_string(b"1")
    assert len(recorder.wait(1)) == 1
    clients.eventarc.delete_trigger(name=made.name).result(timeout=60)
    with pytest.raises(exceptions.NotFound):
        clients.eventarc.get_trigger(name=made.name)
    bucket.blob("two.txt").upload_from_string(b"2")
    # The sentinel: a new trigger to the same function brings an object written after
    # two.txt, whose event the deleted trigger would have had first. (It takes only the
    # sentinel's name: two.txt's event may still be on its way when it is created.)
    sentinel = {
        "attribute": "subject",
        "value": "objects/sentinel/*",
        "operator": "match-path-pattern",
    }
    trigger(service, [*storage_filters(bucket.name), sentinel])
    bucket.blob("sentinel/three.txt").upload_from_string(b"3")
    assert names(recorder.wait(2)) == ["one.txt", "sentinel/three.txt"]


def test_validation_names_the_field(clients, function):
    service = function()
    service_id = service.name.rsplit("/", 1)[-1]

    def create(filters, destination_service=service_id):
        return clients.eventarc.create_trigger(
            parent=LOCATION,
            trigger_id=f"bad-{uuid.uuid4().hex[:6]}",
            trigger=eventarc_v1.Trigger(
                event_filters=filters,
                # region is REQUIRED in Eventarc's CloudRun destination: Google refuses without it
                destination={
                    "cloud_run": {"service": destination_service, "region": "us-central1"}
                },
            ),
        )

    with pytest.raises(exceptions.InvalidArgument, match="'type' is required"):
        create([{"attribute": "bucket", "value": "b"}])
    with pytest.raises(exceptions.InvalidArgument, match="not supported"):
        create([{"attribute": "type", "value": "google.cloud.unknown.v1.happened"}])
    with pytest.raises(exceptions.InvalidArgument, match="bucket"):
        create([{"attribute": "type", "value": "google.cloud.storage.object.v1.finalized"}])
    with pytest.raises(exceptions.InvalidArgument, match=r"destination\.cloud_run\.service"):
        create(storage_filters("b"), destination_service="no-such-service")
    providers = {
        p.name.rsplit("/", 1)[-1] for p in clients.eventarc.list_providers(parent=LOCATION)
    }
    assert providers == {"storage.googleapis.com", "pubsub.googleapis.com"}


# ------------------------------------------------------------------ a storage trigger's bucket


def create_storage_trigger(clients, service: run_v2.Service, bucket: str, location: str):
    return clients.eventarc.create_trigger(
        parent=f"projects/local-project/locations/{location}",
        trigger_id=f"loc-{uuid.uuid4().hex[:8]}",
        trigger=eventarc_v1.Trigger(
            event_filters=storage_filters(bucket),
            destination={
                "cloud_run": {"service": service.name.rsplit("/", 1)[-1], "region": "us-central1"}
            },
            service_account=TRIGGER_SA,
        ),
    ).result(timeout=60)


def test_a_storage_trigger_lives_in_its_buckets_location(clients, function):
    """Eventarc refuses a storage trigger anywhere but its bucket's location, naming both
    (https://cloud.google.com/eventarc/docs/understand-locations)."""
    bucket = regional_bucket(clients, "ev-loc")
    assert clients.storage.get_bucket(bucket.name).location == "US-CENTRAL1"
    service = function()
    for elsewhere in ("us", "europe-west1"):
        with pytest.raises(exceptions.InvalidArgument) as refused:
            create_storage_trigger(clients, service, bucket.name, elsewhere)
        message = refused.value.message
        assert f'Bucket "{bucket.name}" location "us-central1"' in message
        assert f'does not match trigger location "{elsewhere}"' in message
        # Nothing was made there for this bucket (other tests' triggers may live there).
        assert not [
            t
            for t in clients.eventarc.list_triggers(
                parent=f"projects/local-project/locations/{elsewhere}"
            )
            if any(f.value == bucket.name for f in t.event_filters)
        ]
    made = create_storage_trigger(clients, service, bucket.name, "us-central1")
    try:
        assert made.name.startswith(LOCATION + "/triggers/")
        # An update may not move the trigger onto a bucket elsewhere either.
        made.event_filters[1].value = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
        with pytest.raises(exceptions.PermissionDenied, match="could not be validated"):
            clients.eventarc.update_trigger(
                trigger=made, update_mask={"paths": ["event_filters"]}
            ).result(timeout=60)
    finally:
        clients.eventarc.delete_trigger(name=made.name).result(timeout=60)


def test_a_storage_trigger_on_a_missing_bucket_is_refused(clients, function):
    """As Google: PERMISSION_DENIED, the bucket "could not be validated" (it is missing, or
    Eventarc's service agent cannot read it), naming the bucket; nothing is created."""
    missing = f"ev-missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(exceptions.PermissionDenied) as refused:
        create_storage_trigger(clients, function(), missing, "us-central1")
    assert f'Bucket \\"{missing}\\" could not be validated' in refused.value.message
    assert "storage.buckets.get" in refused.value.message
    assert not [
        t
        for t in clients.eventarc.list_triggers(parent=LOCATION)
        if any(f.value == missing for f in t.event_filters)
    ]


def test_the_orchestrators_records_fire_no_trigger_on_the_sources_bucket(
    clients, function, trigger, recorder
):
    """Claims, step results, locks and trigger locations go to the records bucket: a trigger
    on the sources bucket (the intake's) sees none of them, only the sentinel archive
    written after them."""
    from dataclasses import replace

    from orchestrator import records as rec
    from orchestrator.config import Settings

    run = uuid.uuid4().hex[:8]
    settings = replace(
        Settings.defaults("local-project"), sources_bucket=f"src-{run}", records_bucket=f"rec-{run}"
    )
    sources = clients.storage.create_bucket(settings.sources_bucket, location="us-central1")
    clients.storage.create_bucket(settings.records_bucket)
    trigger(function(), storage_filters(sources.name))
    records = rec.Records(settings, clients.storage)
    assert records.create(rec.claim_name("d-1"), {"state": "claimed"}) is not None
    records.write(rec.claim_name("d-1"), {"state": "accepted"})
    records.save_step("d-1", "build", {"image": "x"})
    assert records.acquire("svc", "d-1", "", lambda _e: False, lambda _h: None, 5) is True
    records.write(rec.locations_name("svc"), {"trigger_locations": ["us-central1"]})
    records.release("svc", "d-1")
    stored = {b.name for b in clients.storage.list_blobs(settings.records_bucket)}
    assert stored == {
        "deployments/d-1/claim.json",
        "deployments/d-1/build.json",
        "services/svc/triggers.json",
    }
    sources.blob("sentinel.zip").upload_from_string(b"PK")
    assert names(recorder.wait(1)) == ["sentinel.zip"]
    time.sleep(1.0)  # anything a record fired would have come before the sentinel's event
    assert names(recorder.events) == ["sentinel.zip"]


def other_project_storage(localcloud, project: str = OTHER_PROJECT) -> storage.Client:
    """The official client of another project, pointed at the same localcloud."""
    return storage.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": localcloud.env["STORAGE_EMULATOR_HOST"]},
    )


def test_a_storage_trigger_on_a_multi_or_dual_region_bucket_lives_there(clients, function):
    """A bucket in the ``US`` multi-region (where a bucket made without a location is)
    takes its triggers in Eventarc location ``us``, a ``NAM4`` dual-region bucket in
    ``nam4``; the region inside them is refused, naming where the trigger must go
    (https://cloud.google.com/eventarc/docs/understand-locations)."""
    service = function()
    for asked, location in ((None, "us"), ("nam4", "nam4")):
        name = f"ev-{location}-{uuid.uuid4().hex[:8]}"
        bucket = clients.storage.create_bucket(name, location=asked)
        assert bucket.location == location.upper()
        with pytest.raises(exceptions.InvalidArgument) as refused:
            create_storage_trigger(clients, service, bucket.name, "us-central1")
        assert f'Bucket "{bucket.name}" location "{location}"' in refused.value.message
        assert 'does not match trigger location "us-central1"' in refused.value.message
        made = create_storage_trigger(clients, service, bucket.name, location)
        try:
            assert made.name.startswith(f"projects/local-project/locations/{location}/triggers/")
        finally:
            clients.eventarc.delete_trigger(name=made.name).result(timeout=60)


def test_a_storage_trigger_on_a_bucket_of_another_project_is_refused(clients, function, localcloud):
    """ "The service and the bucket must be in the same Google Cloud project"
    (https://cloud.google.com/run/docs/triggering/storage-triggers): a trigger of
    local-project on another project's bucket is INVALID_ARGUMENT naming the bucket and
    the project, even in the bucket's own location; nothing is created."""
    theirs = other_project_storage(localcloud).create_bucket(
        f"ev-theirs-{uuid.uuid4().hex[:8]}", location="us-central1"
    )
    with pytest.raises(exceptions.InvalidArgument) as refused:
        create_storage_trigger(clients, function(), theirs.name, "us-central1")
    message = refused.value.message
    assert f'Bucket "{theirs.name}" belongs to project number {theirs.project_number}' in message
    assert 'not to the trigger\'s project "local-project"' in message
    assert not [
        t
        for t in clients.eventarc.list_triggers(parent=LOCATION)
        if any(f.value == theirs.name for f in t.event_filters)
    ]


# ------------------------------------------------------------------ through bind_triggers


class _Request:
    """What functions-framework hands an HTTP function: here only its JSON body."""

    def __init__(self, body: dict) -> None:
        self.body = body

    def get_json(self, silent: bool = False) -> dict:
        return self.body


@pytest.fixture(scope="module")
def pipeline_ctx(clients):
    """The pipeline's settings and clients, its records bucket made in local-project as
    ``orch local up`` makes it (its project number is the pipeline's)."""
    from dataclasses import replace

    from orchestrator import step
    from orchestrator.config import Settings

    run = uuid.uuid4().hex[:8]
    settings = replace(
        Settings.defaults("local-project"),
        sources_bucket=f"bt-src-{run}",
        records_bucket=f"bt-rec-{run}",
        status_topic=f"bt-status-{run}",
        trigger_service_account=TRIGGER_SA,
    )
    clients.storage.create_bucket(settings.records_bucket, location="US-CENTRAL1")
    clients.publisher.create_topic(name=settings.topic_path(settings.status_topic))
    return step.Context(settings, clients)


def bind_storage_trigger(ctx, monkeypatch, service_id: str, bucket: str) -> dict:
    """Run the pipeline's bind_triggers function for a manifest with one storage trigger
    on ``bucket``, its deployment holding the service's lock; its answer."""
    from orchestrator import functions, step
    from orchestrator.records import lock_name

    monkeypatch.setattr(step, "_CONTEXT", ctx)
    deployment_id = f"d-{uuid.uuid4().hex[:8]}"
    assert ctx.records.create(
        lock_name(service_id), {"deployment_id": deployment_id, "execution": ""}
    )
    body = {
        "deployment": {
            "deployment_id": deployment_id,
            "source": f"gs://b/{service_id}.zip#1",
            "bucket": "b",
            "object": f"{service_id}.zip",
            "generation": 1,
            "manifest": {
                "service": service_id,
                "triggers": [{"storage": {"bucket": bucket, "event": "finalized"}}],
            },
            "execution": "",
        },
        "outputs": {},
    }
    answer, status = functions.bind_triggers(_Request(body))
    assert status == 200
    return answer


def test_bind_triggers_puts_a_us_buckets_trigger_in_us_and_it_delivers(
    clients, function, recorder, pipeline_ctx, monkeypatch
):
    """A bucket created with ``location="US"``: bind_triggers reads its location and
    creates the trigger in Eventarc location ``us`` (none in the pipeline's region), and
    an object written to the bucket reaches the service through it."""
    bucket = clients.storage.create_bucket(f"bt-us-{uuid.uuid4().hex[:8]}", location="US")
    service_id = function().name.rsplit("/", 1)[-1]
    answer = bind_storage_trigger(pipeline_ctx, monkeypatch, service_id, bucket.name)
    assert answer["ok"] is True, answer
    (trigger_id,) = answer["result"]["triggers"]
    name = f"projects/local-project/locations/us/triggers/{trigger_id}"
    try:
        bound = clients.eventarc.get_trigger(name=name)
        assert {(f.attribute, f.value) for f in bound.event_filters} >= {("bucket", bucket.name)}
        assert not [
            t
            for t in clients.eventarc.list_triggers(parent=LOCATION)
            if t.name.endswith(trigger_id)
        ]
        bucket.blob("hello.txt").upload_from_string(b"hello")
        assert names(recorder.wait(1)) == ["hello.txt"]
    finally:
        clients.eventarc.delete_trigger(name=name).result(timeout=60)


def test_bind_triggers_refuses_a_bucket_of_another_project(
    clients, localcloud, pipeline_ctx, monkeypatch
):
    """A bucket made in another project: bind_triggers fails TRIGGER_FAILED naming the
    bucket (Eventarc watches only buckets of the trigger's project), and creates nothing."""
    theirs = other_project_storage(localcloud).create_bucket(
        f"bt-theirs-{uuid.uuid4().hex[:8]}", location="US-CENTRAL1"
    )
    service_id = f"bt-svc-{uuid.uuid4().hex[:8]}"
    answer = bind_storage_trigger(pipeline_ctx, monkeypatch, service_id, theirs.name)
    assert answer["ok"] is False, answer
    assert answer["error"]["code"] == "TRIGGER_FAILED"
    message = answer["error"]["message"]
    assert repr(theirs.name) in message and "another project" in message, message
    assert not [
        t
        for location in ("us-central1", "us")
        for t in clients.eventarc.list_triggers(
            parent=f"projects/local-project/locations/{location}"
        )
        if any(f.value == theirs.name for f in t.event_filters)
    ]


# ------------------------------------------------------------------ retry_policy


PUBLISHED = [{"attribute": "type", "value": "google.cloud.pubsub.topic.v1.messagePublished"}]


def deliveries(events: list[dict], subscription: str) -> int:
    """How many of the recorded Pub/Sub events came through ``subscription``."""
    return sum(event["data"]["subscription"] == subscription for event in events)


def wait_until(recorder: Recorder, done, timeout: float = 60) -> list[dict]:
    """The recorded events once ``done(events)`` holds (or ``timeout`` has passed)."""
    deadline = time.monotonic() + timeout
    with recorder.arrived:
        while not done(recorder.events) and time.monotonic() < deadline:
            recorder.arrived.wait(max(deadline - time.monotonic(), 0))
        return list(recorder.events)


def test_max_attempts_1_delivers_a_failing_event_once(
    clients, local_target, local_topic, function, trigger, recorder
):
    """``retry_policy.max_attempts`` 1: the event is delivered once and dropped when that
    delivery fails; a twin trigger on the same topic without it keeps retrying
    (https://cloud.google.com/eventarc/docs/retry-events)."""
    topic = local_topic()
    transport = {"pubsub": {"topic": topic}}
    once = trigger(
        function(fail=True), PUBLISHED, transport=transport, retry_policy={"max_attempts": 1}
    )
    again = trigger(function(fail=True), PUBLISHED, transport=transport)
    assert once.retry_policy.max_attempts == 1
    assert clients.eventarc.get_trigger(name=once.name).retry_policy.max_attempts == 1
    once_sub, again_sub = once.transport.pubsub.subscription, again.transport.pubsub.subscription
    local_target.publisher.publish(topic, b"poison").result(timeout=30)
    first = wait_until(recorder, lambda events: deliveries(events, once_sub) >= 1)
    assert deliveries(first, once_sub) == 1
    # Three more deliveries to the twin are two growing backoffs of the same retry policy,
    # each longer than the smallest: a retry through ``once`` would have come by then.
    seen = deliveries(first, again_sub)
    events = wait_until(recorder, lambda events: deliveries(events, again_sub) >= seen + 3)
    assert deliveries(events, again_sub) >= seen + 3
    assert deliveries(events, once_sub) == 1


def test_retry_policy_max_attempts_can_only_be_1(clients, function, trigger):
    """ "The only valid value is 1" (Trigger.RetryPolicy,
    https://cloud.google.com/eventarc/docs/reference/rest/v1/projects.locations.triggers#RetryPolicy):
    anything else is INVALID_ARGUMENT naming the field, on create and on update; the
    policy can be updated in place and cleared back to Eventarc's retries."""
    service = function()
    with pytest.raises(exceptions.InvalidArgument, match=r"retry_policy\.max_attempts: 3"):
        trigger(service, PUBLISHED, retry_policy={"max_attempts": 3})
    with pytest.raises(exceptions.InvalidArgument, match=r"retry_policy\.max_attempts: -1"):
        trigger(service, PUBLISHED, retry_policy={"max_attempts": -1})
    made = trigger(service, PUBLISHED, retry_policy={"max_attempts": 1})
    made.retry_policy.max_attempts = 2
    with pytest.raises(exceptions.InvalidArgument, match=r"retry_policy\.max_attempts: 2"):
        clients.eventarc.update_trigger(
            trigger=made, update_mask={"paths": ["retry_policy"]}
        ).result(timeout=60)
    assert clients.eventarc.get_trigger(name=made.name).retry_policy.max_attempts == 1
    made.retry_policy = None
    updated = clients.eventarc.update_trigger(
        trigger=made, update_mask={"paths": ["retry_policy"]}
    ).result(timeout=60)
    assert updated.retry_policy.max_attempts == 0
    # The update kept the topic Eventarc made for the trigger (it used to delete it and fail).
    assert updated.transport.pubsub.topic == made.transport.pubsub.topic
    assert clients.eventarc.get_trigger(name=made.name).retry_policy.max_attempts == 0

"""Durability and supervision: restarts, SIGKILL, orphans, a second supervisor, taken ports.

These start their own localcloud instances (the session's stays untouched), so they are
marked slow; each still takes only a few seconds, but for the one that makes a resource of
every kind (a build, a Cloud Run service, ...) before its crash.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from google.cloud import eventarc_v1, pubsub_v1, run_v2, storage, workflows_v1
from google.cloud.workflows import executions_v1

from localcloud import testing
from orchestrator.clients import Clients, Environment

pytestmark = pytest.mark.slow
PROJECT = "local-project"
LOCATION = f"projects/{PROJECT}/locations/us-central1"
HELLO = Path(__file__).parent.parent / "functions" / "hello_http"
EVENTS = f"projects/{PROJECT}/topics/localcloud-storage-events"


def clients(instance: testing.Instance):
    with testing.patched_environ({"PUBSUB_EMULATOR_HOST": instance.config.grpc_address}):
        return pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()


def children_of(data_dir: Path) -> list[int]:
    """Pids of processes whose command line mentions the data directory (our children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(data_dir) in cmdline and "localcloud serve" not in cmdline:
            pids.append(int(entry.name))
    return pids


def wait_gone(pids: list[int], timeout: float = 30.0) -> list[int]:
    """Those of ``pids`` still running once all are gone or ``timeout`` has passed."""

    def alive() -> list[int]:
        return [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]

    with contextlib.suppress(AssertionError):
        testing.wait_for(lambda: not alive(), timeout, "the processes to go", every=0.1)
    return alive()


def _zombie(pid: int) -> bool:
    try:
        return " Z " in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True


def pull(subscriber, sub: str, want: int, timeout: float = 15.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        response = subscriber.pull(request={"subscription": sub, "max_messages": want}, timeout=5)
        got.extend(response.received_messages)
    return got


def test_state_survives_a_restart(tmp_path):
    instance = testing.start(tmp_path / "data")
    try:
        publisher, subscriber = clients(instance)
        topic = f"projects/{PROJECT}/topics/durable"
        sub = f"projects/{PROJECT}/subscriptions/durable-sub"
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=20)
        for i in range(3):
            publisher.publish(topic, f"m{i}".encode()).result(timeout=30)
        first = pull(subscriber, sub, 3)
        acked = [m for m in first if m.message.data == b"m0"]
        subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in acked])

        instance = instance.restart()
        publisher, subscriber = clients(instance)
        assert publisher.get_topic(topic=topic).name == topic
        assert subscriber.get_subscription(subscription=sub).ack_deadline_seconds == 20
        again = pull(subscriber, sub, 2)
        assert sorted(m.message.data for m in again) == [b"m1", b"m2"]
        publisher.publish(topic, b"after").result(timeout=30)
        ids = {m.message.message_id for m in first} | {m.message.message_id for m in again}
        fresh = pull(subscriber, sub, 1)
        assert fresh[0].message.data == b"after"
        assert fresh[0].message.message_id not in ids, (
            "message ids must stay unique across restarts"
        )
    finally:
        instance.stop()


def test_published_messages_survive_sigkill(tmp_path):
    """A Publish that returned is committed: SIGKILL right after loses nothing."""
    instance = testing.start(tmp_path / "data")
    try:
        publisher, subscriber = clients(instance)
        topic = f"projects/{PROJECT}/topics/killed"
        sub = f"projects/{PROJECT}/subscriptions/killed-sub"
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=sub, topic=topic)
        futures = [publisher.publish(topic, f"k{i}".encode()) for i in range(200)]
        ids = {f.result(timeout=30) for f in futures}
        instance.kill()
        assert wait_gone(children_of(instance.config.data_dir)) == []

        instance = testing.start(instance.config.data_dir, config=instance.config)
        publisher, subscriber = clients(instance)
        got = pull(subscriber, sub, 200)
        assert {m.message.message_id for m in got} == ids
    finally:
        instance.stop()


def test_an_answered_upload_is_announced_once_whatever_a_sigkill_interrupts(tmp_path):
    """Notifications are as durable as objects (issue 14): localcloud SIGKILLed the moment
    an upload returned, with more uploads in flight, still announces every object it
    stores, each generation once: the answered upload's notification was committed before
    its answer, and one stored but never answered is announced at the restart."""
    instance = testing.start(tmp_path / "data")
    try:
        _, subscriber = clients(instance)
        with instance.client_env():
            gcs = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
            bucket = gcs.create_bucket("killed-after-upload")
            # Its own client (and connections) for the thread.
            other = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
        sub = f"projects/{PROJECT}/subscriptions/storage-events"
        subscriber.create_subscription(
            request={
                "name": sub,
                "topic": EVENTS,
                "filter": f'attributes.bucketId = "{bucket.name}"',
            }
        )
        stop = threading.Event()

        def keep_uploading() -> None:  # writes in flight when the kill comes
            for i in range(10_000):
                if stop.is_set():
                    return
                try:
                    # No retry: a retried upload would land on the restarted instance
                    # and store a second generation the listing below cannot see.
                    other.bucket(bucket.name).blob(f"in-flight-{i}").upload_from_string(
                        b"x", timeout=10, retry=None
                    )
                except Exception:  # localcloud is gone: that is the point
                    return

        flight = threading.Thread(target=keep_uploading, daemon=True)
        flight.start()
        answered = bucket.blob("answered.zip")
        answered.upload_from_string(b"deploy me")
        instance.kill()
        stop.set()
        flight.join(30)
        assert not flight.is_alive()
        assert wait_gone(children_of(instance.config.data_dir)) == []

        instance = testing.start(instance.config.data_dir, config=instance.config)
        _, subscriber = clients(instance)
        with instance.client_env():
            gcs = storage.Client(project=PROJECT, credentials=AnonymousCredentials())
            stored = {(b.name, b.generation) for b in gcs.list_blobs(bucket.name)}
            # Published after anything the restart announced: once it is pulled, so is that.
            marker = gcs.bucket(bucket.name).blob("marker")
            marker.upload_from_string(b"last")
        assert ("answered.zip", answered.generation) in stored
        finalized = []
        deadline = time.monotonic() + 30
        while ("marker", marker.generation) not in finalized and time.monotonic() < deadline:
            response = subscriber.pull(
                request={"subscription": sub, "max_messages": 100}, timeout=5
            )
            for received in response.received_messages:
                attrs = received.message.attributes
                if attrs["eventType"] == "OBJECT_FINALIZE":
                    finalized.append((attrs["objectId"], int(attrs["objectGeneration"])))
            if response.received_messages:
                subscriber.acknowledge(
                    subscription=sub, ack_ids=[r.ack_id for r in response.received_messages]
                )
        assert sorted(finalized) == sorted(stored | {("marker", marker.generation)})
    finally:
        instance.stop()


def test_stream_reconnects_across_a_restart(tmp_path):
    """Shutdown closes StreamingPull with UNAVAILABLE, so the client reconnects by itself."""
    instance = testing.start(tmp_path / "data")
    try:
        publisher, subscriber = clients(instance)
        topic = f"projects/{PROJECT}/topics/reconnect"
        sub = f"projects/{PROJECT}/subscriptions/reconnect-sub"
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=sub, topic=topic)
        got: list[bytes] = []
        arrived = threading.Event()

        def callback(message) -> None:
            got.append(message.data)
            message.ack()
            arrived.set()

        future = subscriber.subscribe(sub, callback)
        publisher.publish(topic, b"before").result(timeout=30)
        assert arrived.wait(10)
        arrived.clear()
        instance = instance.restart()
        publisher.publish(topic, b"after").result(timeout=60)
        assert arrived.wait(30), f"stream did not reconnect; got {got}"
        assert not future.done(), "the subscriber gave up instead of reconnecting"
        future.cancel()
        assert got == [b"before", b"after"]
    finally:
        instance.stop()


# -- every table of protos ----------------------------------------------------------------
@dataclass
class Made:
    """What was created before the crash, by name."""

    build_id: str
    build_operation: str
    service: str
    topic: str
    trigger: str
    workflow: str
    first_revision: str
    execution: str


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.status, response.read()


# Each stored kind of resource (localcloud/*/store.py, core/iam.py), read back through
# the official clients as a user would: by name and by listing under its parent.
READS: dict[str, Callable[[Clients, Made], Any]] = {
    "cloud build builds": lambda c, m: (
        c.cloud_build.get_build(project_id=PROJECT, id=m.build_id),
        [b.id for b in c.cloud_build.list_builds(project_id=PROJECT)],
    ),
    "operations": lambda c, m: c.operations.get_operation(m.build_operation),
    "cloud run services": lambda c, m: c.run_services.get_service(name=m.service),
    "cloud run revisions": lambda c, m: list(c.run_revisions.list_revisions(parent=m.service)),
    # The port table: the service answers on the port it had (opened again at start).
    "cloud run ports": lambda c, m: _get(c.run_services.get_service(name=m.service).uri),
    "iam policies": lambda c, m: c.run_services.get_iam_policy(request={"resource": m.service}),
    "pubsub topics": lambda c, m: c.publisher.get_topic(topic=m.topic),
    "eventarc triggers": lambda c, m: c.eventarc.get_trigger(name=m.trigger),
    "workflows": lambda c, m: c.workflows.get_workflow(name=m.workflow),
    "workflow revisions": lambda c, m: (
        list(c.workflows.list_workflow_revisions(request={"name": m.workflow})),
        c.workflows.get_workflow(request={"name": m.workflow, "revision_id": m.first_revision}),
    ),
    "workflow executions": lambda c, m: (
        c.executions.get_execution(name=m.execution),
        list(c.executions.list_executions(parent=m.workflow)),
    ),
}
RETURNS = "main:\n  steps:\n    - done:\n        return: {!r}\n"


def make_one_of_everything(c: Clients) -> Made:
    """A resource in every table, through the official clients (each engine's real path)."""
    bucket = c.storage.create_bucket(f"kept-{os.urandom(4).hex()}")
    blob = bucket.blob("hello.zip")
    blob.upload_from_string(testing.zip_dir(HELLO))
    image = f"us-central1-docker.pkg.dev/{PROJECT}/functions/kept"
    source = (bucket.name, blob.name, blob.generation)
    target = {"GOOGLE_FUNCTION_TARGET": "hello"}
    building = c.cloud_build.create_build(
        project_id=PROJECT, build=testing.pack_build(source, image, target)
    )
    digest = building.result(timeout=180).results.images[0].digest
    service = c.run_services.create_service(
        parent=LOCATION,
        service=run_v2.Service(
            template={"containers": [{"image": f"{image}@{digest}"}]},
        ),
        service_id="kept",
    ).result(timeout=120)
    service.template.containers[0].env.append(run_v2.EnvVar(name="SECOND", value="revision"))
    c.run_services.update_service(service=service).result(timeout=120)
    testing.make_public(c, service.name)
    topic = c.publisher.create_topic(name=f"projects/{PROJECT}/topics/kept").name
    trigger = c.eventarc.create_trigger(
        parent=LOCATION,
        trigger_id="kept",
        trigger=eventarc_v1.Trigger(
            event_filters=[
                {"attribute": "type", "value": "google.cloud.pubsub.topic.v1.messagePublished"}
            ],
            transport={"pubsub": {"topic": topic}},
            destination={"cloud_run": {"service": "kept", "region": "us-central1"}},
        ),
    ).result(timeout=60)
    workflow = c.workflows.create_workflow(
        parent=LOCATION,
        workflow_id="kept",
        workflow=workflows_v1.Workflow(source_contents=RETURNS.format("one")),
    ).result(timeout=30)
    c.workflows.update_workflow(
        workflow=workflows_v1.Workflow(name=workflow.name, source_contents=RETURNS.format("two")),
        update_mask={"paths": ["source_contents"]},
    ).result(timeout=30)
    execution = c.executions.create_execution(
        parent=workflow.name, execution=executions_v1.Execution()
    )
    deadline = time.monotonic() + 30
    while execution.state == executions_v1.Execution.State.ACTIVE:
        assert time.monotonic() < deadline, "the execution did not finish"
        time.sleep(0.05)
        execution = c.executions.get_execution(name=execution.name)
    return Made(
        building.metadata.build.id,
        building.operation.name,
        service.name,
        topic,
        trigger.name,
        workflow.name,
        workflow.revision_id,
        execution.name,
    )


@pytest.fixture(scope="module")
def crashed(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[testing.Instance, Clients, Made, dict[str, Any]]]:
    """A localcloud holding one resource of every kind, read, SIGKILLed (nothing flushed at
    shutdown: only what was committed before each answer counts) and started again on its
    data directory. Yields the new instance, its clients, what was made and each read."""
    instance = testing.start(tmp_path_factory.mktemp("crashed") / "data")
    try:
        with instance.client_env():
            clients = Clients(Environment.from_env(instance.env))
            made = make_one_of_everything(clients)
            before = {kind: read(clients, made) for kind, read in READS.items()}
        assert len(before["cloud run revisions"]) == 2
        assert len(before["workflow revisions"][0]) == 2
        assert before["cloud run ports"][0] == 200
        instance.kill()
        assert wait_gone(children_of(instance.config.data_dir)) == []
        instance = testing.start(instance.config.data_dir, config=instance.config)
        yield instance, Clients(Environment.from_env(instance.env)), made, before
    finally:
        instance.stop()


@pytest.mark.parametrize("kind", list(READS))
def test_every_kind_of_resource_survives_sigkill(crashed, kind: str) -> None:
    instance, clients, made, before = crashed
    with instance.client_env():
        assert READS[kind](clients, made) == before[kind]


def test_sigterm_stops_cleanly_and_sigkill_leaves_no_orphans(tmp_path):
    instance = testing.start(tmp_path / "data")
    children = children_of(instance.config.data_dir)
    assert len(children) >= 2, "expected fake-gcs-server and the registry"
    assert instance.stop() == 0
    assert wait_gone(children) == []
    assert not (instance.config.data_dir / "state.json").exists()

    instance = testing.start(instance.config.data_dir, config=instance.config)
    children = children_of(instance.config.data_dir)
    instance.kill()
    assert wait_gone(children) == [], "children outlived a SIGKILLed supervisor"


def test_second_supervisor_on_same_data_dir_refuses(tmp_path):
    instance = testing.start(tmp_path / "data")
    try:
        env = {
            **os.environ,
            "LOCALCLOUD_DATA": str(instance.config.data_dir),
            **testing.port_env(instance.config),
        }
        result = subprocess.run(
            [sys.executable, "-m", "localcloud", "serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1
        assert "already running" in result.stderr
        assert str(instance.process.pid) in result.stderr
    finally:
        instance.stop()


def test_taken_port_is_named_with_its_variable(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = {
            **os.environ,
            "LOCALCLOUD_DATA": str(tmp_path / "data"),
            **testing.port_env(),
            "LOCALCLOUD_GRPC_PORT": str(port),
        }
        result = subprocess.run(
            [sys.executable, "-m", "localcloud", "serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"port {port}" in result.stderr
    assert "LOCALCLOUD_GRPC_PORT" in result.stderr


def test_bad_config_value_is_named(tmp_path):
    env = {
        **os.environ,
        "LOCALCLOUD_DATA": str(tmp_path),
        **testing.port_env(),
        "LOCALCLOUD_GRPC_PORT": "eighty",
    }
    result = subprocess.run(
        [sys.executable, "-m", "localcloud", "serve"], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "LOCALCLOUD_GRPC_PORT" in result.stderr

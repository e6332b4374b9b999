"""The orchestrator's records against localcloud, through the pipeline's own code in this
process: claims (busy, stale), service locks (live, stale, paced writes) and the last step's
hold on the lock. Executions are real ones of a sleeping workflow, so a lock's holder is
live or ended exactly as the pipeline sees it on Google Cloud.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import eventarc_v1
from google.cloud.workflows import executions_v1
from google.cloud.workflows_v1 import types as wf

from localcloud.testing import zip_tree
from orchestrator import intake, manifest, step, triggers
from orchestrator.clients import Clients, Environment
from orchestrator.config import Settings
from orchestrator.records import MIN_WRITE_INTERVAL, Records, claim_name, lock_name

SLEEPER = """
main:
  params: [args]
  steps:
    - nap:
        call: sys.sleep
        args:
          seconds: 3600
"""
HELLO = {
    "main.py": "def hello(request):\n    return 'hi'\n",
    "function.yaml": "entry_point: hello\n",
}


@dataclass
class Env:
    settings: Settings
    clients: Clients
    ctx: step.Context
    executions: list[str]

    def execution(self, deployment_id: str = "") -> str:
        """A live execution of the sleeping workflow (cancelled when the module ends)."""
        labels = {intake.EXECUTION_LABEL: deployment_id} if deployment_id else {}
        name = self.clients.executions.create_execution(
            parent=self.settings.workflow_path,
            execution=executions_v1.Execution(argument="{}", labels=labels),
        ).name
        self.executions.append(name)
        return name

    def labelled(self, deployment_id: str) -> list[str]:
        # The BASIC view a listing returns carries no labels: ask by label, as intake does.
        found = self.clients.executions.list_executions(
            request={
                "parent": self.settings.workflow_path,
                "filter": f'labels.{intake.EXECUTION_LABEL}="{deployment_id}"',
            }
        )
        return [e.name for e in found]

    def upload(self, name: str) -> dict[str, Any]:
        """An archive in the sources bucket; the data of its ``finalized`` event."""
        blob = self.clients.storage.bucket(self.settings.sources_bucket).blob(name)
        blob.upload_from_string(zip_tree(HELLO), content_type="application/zip")
        return {"bucket": blob.bucket.name, "name": name, "generation": str(blob.generation)}


@pytest.fixture(scope="module")
def env(localcloud) -> Iterator[Env]:
    clients = Clients(Environment.from_env(localcloud.env))
    run = uuid.uuid4().hex[:8]
    settings = replace(
        Settings.defaults("local-project"),
        sources_bucket=f"rec-src-{run}",
        records_bucket=f"rec-rec-{run}",
        status_topic=f"rec-status-{run}",
        workflow=f"rec-{run}",
    )
    clients.storage.create_bucket(settings.sources_bucket)
    clients.storage.create_bucket(settings.records_bucket)
    clients.publisher.create_topic(name=settings.topic_path(settings.status_topic))
    clients.workflows.create_workflow(
        parent=settings.location_path,
        workflow_id=settings.workflow,
        workflow=wf.Workflow(source_contents=SLEEPER),
    ).result(timeout=30)
    made = Env(settings, clients, step.Context(settings, clients), [])
    yield made
    for name in made.executions:
        with contextlib.suppress(exceptions.GoogleAPICallError):
            clients.executions.cancel_execution(name=name)
    with contextlib.suppress(exceptions.GoogleAPICallError):
        clients.workflows.delete_workflow(name=settings.workflow_path).result(timeout=30)


class Writes(Records):
    """Records that note when each write of the lock was sent (the writes themselves are
    the real ones)."""

    def __init__(self, settings: Settings, storage: Any) -> None:
        super().__init__(settings, storage)
        self.times: list[float] = []

    def create(self, name: str, document: dict[str, Any]) -> int | None:
        self.times.append(time.monotonic())
        return super().create(name, document)

    def replace(self, name: str, document: dict[str, Any], generation: int) -> int | None:
        self.times.append(time.monotonic())
        return super().replace(name, document, generation)


def service() -> str:
    return f"svc-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------ service locks


def test_a_lock_whose_execution_ended_is_taken_over_and_its_holder_reported(env):
    name = service()
    ended = env.execution()
    env.clients.executions.cancel_execution(name=ended)
    records = Writes(env.settings, env.clients.storage)
    holder = {"deployment_id": "d-old", "execution": ended, "since": "2026-01-01T00:00:00Z"}
    assert records.create(lock_name(name), holder) is not None
    records.times.clear()
    stale: list[dict[str, Any]] = []
    waited: list[str] = []
    took = records.acquire(
        name, "d-new", env.execution(), env.ctx.execution_active, waited.append, 30, stale.append
    )
    assert took is True
    assert stale == [holder] and waited == []
    assert records.holder(name) == "d-new"
    # The refused create, then the takeover: never two writes to the lock within a second.
    first, second = records.times
    assert second - first >= MIN_WRITE_INTERVAL - 0.01


def test_a_live_lock_is_waited_for_with_reads_and_taken_once_released(env):
    name = service()
    records = Writes(env.settings, env.clients.storage)
    live = env.execution()
    assert records.create(lock_name(name), {"deployment_id": "d-live", "execution": live})
    active = env.ctx.execution_active
    with pytest.raises(TimeoutError, match=f"deployment d-live of service {name} still runs"):
        records.acquire(name, "d-next", "", active, lambda _h: None, 1.0)

    records.times.clear()
    waited: list[str] = []
    outcome: list[bool] = []
    waiter = threading.Thread(
        target=lambda: outcome.append(
            records.acquire(name, "d-next", env.execution(), active, waited.append, 60)
        )
    )
    waiter.start()
    time.sleep(3.0)
    assert waited == ["d-live"]
    assert len(records.times) == 1, "while the holder lives, the waiter only reads the lock"
    released = time.monotonic()
    env.ctx.records.release(name, "d-live")
    waiter.join(10)
    assert outcome == [True]
    assert records.holder(name) == "d-next"
    assert time.monotonic() - released < 3.0
    assert len(records.times) == 2


# ------------------------------------------------------------------ claims


def test_a_second_delivery_while_the_first_claim_is_live_is_delivered_again_later(env):
    """The first attempt holds a fresh claim and has started nothing yet: a second delivery
    of the same upload raises ClaimBusy (so Eventarc retries it) and changes nothing."""
    data = env.upload(f"busy-{uuid.uuid4().hex[:6]}.zip")
    dep_id = manifest.deployment_id(data["bucket"], data["name"], int(data["generation"]))
    source = manifest.Source(data["bucket"], data["name"], int(data["generation"]))
    assert intake._claim(env.ctx, dep_id, source, "busy") == "new"
    before = env.ctx.records.read(claim_name(dep_id))
    with pytest.raises(intake.ClaimBusy, match=dep_id):
        intake.source_uploaded(data, env.ctx)
    assert env.ctx.records.read(claim_name(dep_id)) == before
    assert env.labelled(dep_id) == []


def test_a_stale_claim_is_taken_over_and_the_deployment_starts_once(env):
    """An attempt that claimed the deployment and died before starting the workflow leaves
    a claim without an execution; after STALE_CLAIM_SECONDS a delivery takes it over and
    starts the deployment, and a later delivery finds it accepted."""
    data = env.upload(f"stale-{uuid.uuid4().hex[:6]}.zip")
    dep_id = manifest.deployment_id(data["bucket"], data["name"], int(data["generation"]))
    long_ago = datetime.now(UTC) - timedelta(seconds=intake.STALE_CLAIM_SECONDS + 30)
    claim = {
        "deployment_id": dep_id,
        "service": "stale",
        "source": f"gs://{data['bucket']}/{data['name']}#{data['generation']}",
        "execution": None,
        "state": "claimed",
        "error": None,
        "created": long_ago.isoformat().replace("+00:00", "Z"),
    }
    assert env.ctx.records.create(claim_name(dep_id), claim) is not None
    execution = intake.source_uploaded(data, env.ctx)
    assert execution is not None
    env.executions.append(execution)
    recorded = env.ctx.records.read(claim_name(dep_id))
    assert recorded is not None
    assert recorded[0]["state"] == "accepted" and recorded[0]["execution"] == execution
    assert intake.source_uploaded(data, env.ctx) is None
    assert env.labelled(dep_id) == [execution]


# ------------------------------------------------------------------ the last step and the lock


def bind_triggers_request(service_id: str, deployment_id: str) -> dict[str, Any]:
    """The workflow's request to bind_triggers for a manifest with no triggers."""
    return {
        "deployment": {
            "deployment_id": deployment_id,
            "source": f"gs://b/{service_id}.zip#1",
            "bucket": "b",
            "object": f"{service_id}.zip",
            "generation": 1,
            "manifest": {"service": service_id},
            "execution": "",
        },
        "outputs": {},
    }


def bind_triggers(body: dict[str, Any]) -> dict[str, Any]:
    answer, status = step.run(
        "bind_triggers", body, triggers.work, announce="binding", release_on_success=True
    )
    assert status == 200
    return answer


class SeenAtRelease(Records):
    """Records that note, when the lock is released, what a retried call would find."""

    def __init__(self, settings: Settings, storage: Any, seen: list[Any]) -> None:
        super().__init__(settings, storage)
        self.seen = seen

    def release(self, service: str, deployment_id: str) -> None:
        self.seen.append(self.step_result(deployment_id, "bind_triggers"))
        super().release(service, deployment_id)


class WatchedContext(step.Context):
    def __init__(self, settings: Settings, clients: Clients) -> None:
        super().__init__(settings, clients)
        self.seen: list[Any] = []

    @property
    def records(self) -> Records:
        return SeenAtRelease(self.settings, self.clients.storage, self.seen)


def test_the_lock_is_released_only_once_the_result_is_saved(env, monkeypatch):
    """From the moment the next deployment can take the lock, a retried bind_triggers of
    this one finds its saved result, returns it and leaves the next one's lock alone."""
    ours, theirs = f"d-a-{uuid.uuid4().hex[:8]}", f"d-b-{uuid.uuid4().hex[:8]}"
    watched = WatchedContext(env.settings, env.clients)
    monkeypatch.setattr(step, "_CONTEXT", watched)
    name = service()
    assert env.ctx.records.create(lock_name(name), {"deployment_id": ours, "execution": ""})
    first = bind_triggers(bind_triggers_request(name, ours))
    assert first["ok"] is True, first
    assert watched.seen == [first["result"]], "released before its result was saved"
    assert env.ctx.records.holder(name) is None
    assert env.ctx.records.create(lock_name(name), {"deployment_id": theirs, "execution": ""})
    again = bind_triggers(bind_triggers_request(name, ours))
    assert again == first
    assert env.ctx.records.holder(name) == theirs


def test_bind_triggers_of_a_deployment_that_lost_its_lock_changes_no_trigger(
    env, monkeypatch, build_image, deploy
):
    """Deployment B holds the service's lock and has bound its trigger; a call of A's
    bind_triggers (whose manifest has none) must not delete it: it fails LOCK_LOST."""
    ours, theirs = f"d-a-{uuid.uuid4().hex[:8]}", f"d-b-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(step, "_CONTEXT", env.ctx)
    made = deploy(build_image("hello_http", "hello"))
    service_id = made.name.rsplit("/", 1)[-1]
    topic = env.settings.topic_path(f"orders-{uuid.uuid4().hex[:6]}")
    env.clients.publisher.create_topic(name=topic)
    bound = env.clients.eventarc.create_trigger(
        parent=env.settings.location_path,
        trigger_id=f"b-{uuid.uuid4().hex[:8]}",
        trigger=eventarc_v1.Trigger(
            event_filters=[
                {"attribute": "type", "value": "google.cloud.pubsub.topic.v1.messagePublished"}
            ],
            transport={"pubsub": {"topic": topic}},
            destination={"cloud_run": {"service": service_id, "region": env.settings.region}},
            labels={triggers.SERVICE_LABEL: service_id},
        ),
    ).result(timeout=60)
    try:
        assert env.ctx.records.create(
            lock_name(service_id), {"deployment_id": theirs, "execution": ""}
        )
        answer = bind_triggers(bind_triggers_request(service_id, ours))
        assert answer["ok"] is False, answer
        assert answer["error"]["code"] == "LOCK_LOST"
        assert f"deployment {theirs} holds it" in answer["error"]["message"]
        assert env.clients.eventarc.get_trigger(name=bound.name).name == bound.name
        assert env.ctx.records.holder(service_id) == theirs
        assert env.ctx.records.step_result(ours, "bind_triggers") is None
    finally:
        env.clients.eventarc.delete_trigger(name=bound.name).result(timeout=60)


class _Request:
    """What functions-framework hands an HTTP function: here only its JSON body."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def get_json(self, silent: bool = False) -> dict[str, Any]:
        return self.body


def test_deploy_of_a_deployment_that_lost_its_lock_deploys_nothing(env, monkeypatch):
    """Deployment B took the service's lock over (A's was stale); a late call of A's deploy
    step must not put A's revision in front of B's: it fails LOCK_LOST and the service is
    untouched (here: never created)."""
    from orchestrator import functions

    ours, theirs = f"d-a-{uuid.uuid4().hex[:8]}", f"d-b-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(step, "_CONTEXT", env.ctx)
    name = service()
    assert env.ctx.records.create(lock_name(name), {"deployment_id": theirs, "execution": ""})
    body = bind_triggers_request(name, ours)
    body["outputs"] = {"push": {"image": f"{env.settings.image(name)}@sha256:{'0' * 64}"}}
    answer, status = functions.deploy(_Request(body))
    assert status == 200
    assert answer["ok"] is False, answer
    assert answer["error"]["code"] == "LOCK_LOST", answer
    with pytest.raises(exceptions.NotFound):
        env.clients.run_services.get_service(name=env.settings.service_path(name))
    assert env.ctx.records.holder(name) == theirs

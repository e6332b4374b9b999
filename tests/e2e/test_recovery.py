"""A deployment cut off by a SIGKILL of localcloud ends after the restart, exactly once.

localcloud resumes the deploy workflow's execution where it was, finishes the Cloud Run
reconcile it interrupted, and the deployment publishes one ``done`` (issue 14). The rest of
the e2e suite shares the session's localcloud; this one kills its own.
"""

from __future__ import annotations

import uuid

import pytest

from localcloud import testing
from orch.provision import provision
from orchestrator import manifest
from orchestrator.clients import Clients, Environment
from orchestrator.config import Settings
from orchestrator.status import StatusEvent, from_message
from tests.e2e.conftest import hello_source


def pull_events(clients: Clients, subscription: str) -> list[StatusEvent]:
    got = clients.subscriber.pull(subscription=subscription, max_messages=100, timeout=10)
    if got.received_messages:
        clients.subscriber.acknowledge(
            subscription=subscription, ack_ids=[m.ack_id for m in got.received_messages]
        )
    return [from_message(m.message.data, m.message.attributes) for m in got.received_messages]


@pytest.mark.slow
def test_a_deployment_cut_off_by_a_sigkill_ends_once_after_the_restart(tmp_path):
    instance = testing.start(tmp_path / "lc")
    try:
        env = {**instance.env, "ORCH_CONFIG": "/nonexistent/orch-config.json"}
        settings = Settings.from_env(env)
        clients = Clients(Environment.from_env(env))
        provision(settings, clients, log=lambda _line: None)
        subscription = f"projects/{settings.project}/subscriptions/recovery-watch"
        clients.subscriber.create_subscription(
            name=subscription, topic=settings.topic_path(settings.status_topic)
        )
        seen: dict[str, list[StatusEvent]] = {}

        def collect() -> None:
            for event in pull_events(clients, subscription):
                seen.setdefault(event.deployment_id, []).append(event)

        def ended(dep_id: str) -> list[StatusEvent] | None:
            collect()
            done = [e for e in seen.get(dep_id, []) if e.step == "done"]
            return done or None

        def upload(text: str) -> str:
            blob = clients.storage.bucket(settings.sources_bucket).blob(f"{name}.zip")
            blob.upload_from_string(testing.zip_tree(hello_source(name, text)))
            return manifest.deployment_id(settings.sources_bucket, blob.name, blob.generation)

        name = f"recover-{uuid.uuid4().hex[:6]}"
        first = upload("one")
        (done_first,) = testing.wait_for(lambda: ended(first), 120, "the first deployment")
        assert done_first.state == "succeeded", done_first
        url = done_first.details["url"]

        second = upload("two")
        testing.wait_for(
            lambda: (
                collect()
                or any(e.step == "deploy" and e.state == "running" for e in seen.get(second, []))
            ),
            120,
            "the second deployment's deploy step",
        )
        instance.kill()
        instance = testing.start(instance.config.data_dir, config=instance.config)
        clients = Clients(Environment.from_env(env))

        done_second = testing.wait_for(lambda: ended(second), 180, "the second deployment's end")
        assert len(done_second) == 1, done_second
        assert done_second[0].state == "succeeded", done_second[0]
        status, body = testing.call(url, timeout=60)
        assert (status, body) == (200, "two")
        # Nothing else is deployed: one revision per deployment.
        revisions = list(clients.run_revisions.list_revisions(parent=settings.service_path(name)))
        assert len(revisions) == 2, [r.name for r in revisions]
    finally:
        instance.stop()

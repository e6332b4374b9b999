"""The deploy pipeline provisioned once on the session's localcloud, and a way to watch it.

Tests use only the public entry points: an object written to the sources bucket, a message
on the deploy-requests topic, the status topic, the deployed service's URL, and the
Google Cloud APIs a user would look at.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from localcloud.testing import zip_tree
from orch.provision import provision
from orchestrator import manifest
from orchestrator.clients import Clients, Environment
from orchestrator.config import Settings
from orchestrator.status import StatusEvent, from_message

TERMINAL = ("done",)


class Pipeline:
    """Uploads sources, collects every status event by deployment, calls services."""

    def __init__(self, settings: Settings, clients: Clients) -> None:
        self.settings = settings
        self.clients = clients
        self.events: dict[str, list[StatusEvent]] = defaultdict(list)
        self.lock = threading.Condition()
        self.subscription = f"projects/{settings.project}/subscriptions/e2e-status-watch"
        clients.subscriber.create_subscription(
            request={
                "name": self.subscription,
                "topic": settings.topic_path(settings.status_topic),
                "enable_message_ordering": True,
            }
        )
        self.future = clients.subscriber.subscribe(self.subscription, self._on_message)

    def _on_message(self, message: Any) -> None:
        event = from_message(message.data, message.attributes)
        with self.lock:
            self.events[event.deployment_id].append(event)
            self.lock.notify_all()
        message.ack()

    def close(self) -> None:
        self.future.cancel()

    # ------------------------------------------------------------------ sources

    def upload(
        self,
        files: dict[str, str | bytes] | bytes,
        name: str,
        metadata: dict[str, str] | None = None,
        bucket: str | None = None,
    ) -> tuple[str, int]:
        """Write a source archive; (deployment id, generation)."""
        data = files if isinstance(files, bytes) else zip_tree(files)
        bucket_name = bucket or self.settings.sources_bucket
        blob = self.clients.storage.bucket(bucket_name).blob(name)
        if metadata:
            blob.metadata = metadata
        blob.upload_from_string(data, content_type="application/zip")
        return manifest.deployment_id(bucket_name, name, blob.generation), blob.generation

    def request(self, document: dict[str, Any]) -> None:
        import json

        topic = self.settings.topic_path(self.settings.requests_topic)
        self.clients.publisher.publish(topic, json.dumps(document).encode()).result(timeout=30)

    # ------------------------------------------------------------------ events

    def wait(self, deployment_id: str, timeout: float = 120.0) -> list[StatusEvent]:
        """Every event of one deployment, once it has ended (``done`` or failed intake)."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                events = self.events[deployment_id]
                if any(_ends(e) for e in events):
                    return list(events)
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(e.step, e.state, e.message) for e in events]
                    raise AssertionError(f"deployment {deployment_id} did not end: {seen}")
                self.lock.wait(left)

    def seen(self, deployment_id: str) -> list[StatusEvent]:
        with self.lock:
            return list(self.events[deployment_id])

    def executions(self, deployment_id: str) -> list[str]:
        """The deploy workflow's executions labelled with ``deployment_id`` (docs/pipeline.md)."""
        request = {
            "parent": self.settings.workflow_path,
            # The default (BASIC) view has no labels: the server filters on them.
            "filter": f'labels.deployment-id="{deployment_id}"',
        }
        return [e.name for e in self.clients.executions.list_executions(request=request)]

    def refused_request(self, service: str) -> tuple[str, list[StatusEvent]]:
        """Request a deployment of an object that does not exist; once intake has refused
        it, its source URI and events. Sent after other requests, a sentinel for them."""
        name = f"nowhere/{service}.zip"
        source = f"gs://{self.settings.sources_bucket}/{name}"
        self.request({"source": source, "service": service})
        fields = {"service": service}
        dep_id = manifest.deployment_id(self.settings.sources_bucket, name, 0, fields)
        return source, self.wait(dep_id, timeout=30)

    # ------------------------------------------------------------------ services

    def get(self, url: str, timeout: float = 30.0) -> str:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode()

    def service(self, name: str) -> Any:
        return self.clients.run_services.get_service(name=self.settings.service_path(name))


def _ends(event: StatusEvent) -> bool:
    return event.step == "done" or (event.step == "accepted" and event.state == "failed")


def steps(events: list[StatusEvent]) -> list[tuple[str, str]]:
    return [(e.step, e.state) for e in events]


def done(events: list[StatusEvent]) -> StatusEvent:
    (last,) = [e for e in events if e.step == "done"]
    return last


HELLO = (
    "import functions_framework\n\n\n"
    "@functions_framework.http\n"
    "def hello(request):\n"
    "    return {text!r}\n"
)


def hello_source(service: str, text: str, **manifest_fields: Any) -> dict[str, str]:
    """A no-dependency HTTP function that answers ``text``, public unless told otherwise."""
    import yaml

    fields = {"service": service, "entry_point": "hello", "allow_unauthenticated": True}
    fields.update(manifest_fields)
    return {"main.py": HELLO.format(text=text), "function.yaml": yaml.safe_dump(fields)}


@pytest.fixture(scope="session")
def pipeline(localcloud) -> Iterator[Pipeline]:
    env = {**localcloud.env, "ORCH_CONFIG": "/nonexistent/orch-config.json"}
    settings = Settings.from_env(env)
    clients = Clients(Environment.from_env(env))
    provision(settings, clients, log=lambda _line: None)
    watcher = Pipeline(settings, clients)
    yield watcher
    watcher.close()


def wait_until_serving(pipeline: Pipeline, url: str, text: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pipeline.get(url)
            if last == text:
                return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{url} answered {last!r}, not {text!r}")

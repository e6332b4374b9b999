"""Where the console's pages come from: the official clients of ``orchestrator.clients``.

Nothing here knows localcloud from Google Cloud; the client factory does. What the console
needs there, besides what ``orch status`` needs:

- ``pubsub.subscriptions.create``/``consume``/``delete`` on the project and
  ``pubsub.topics.attachSubscription`` on ``deploy-status``: the live stream is a temporary
  subscription the console owns (``orch.follow.StatusStream``), deleted when it stops.
- ``storage.objects.list``/``get`` on the records bucket: the history (claims and saved
  step results) and the service locks (who is waiting for whom).
- Cloud Run, Eventarc and Workflows read access for the services page and for deployments
  whose end was never announced; ``pubsub.subscriptions.consume`` on the dead-letter
  subscription to show its messages.
- ``storage.objects.create`` on the sources bucket, used only by an explicit upload.

Every failure becomes a sentence on the page (``Store.errors``), never a stack trace.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from orch.console.model import Store
from orchestrator.config import Settings, pipeline
from orchestrator.records import DEPLOYMENTS_PREFIX

LOG = logging.getLogger(__name__)

HISTORY = 1000  # deployments read from the records bucket (the newest)
DOWNLOAD_THREADS = 8
# Every read fails fast, without the clients' own retries (a minute by default): the pages
# refresh every few seconds, which is the retry, and a project or API that cannot be
# reached is on the page with its reason at once instead of after the retries give up.
FAST = {"timeout": 10.0, "retry": None}
DEAD_LETTER_SHOWN = 20


def reason(exc: BaseException) -> str:
    """A sentence for the page: the API's own message when it has one."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {message}"


# ------------------------------------------------------------------ records (history)


class RecordsReader:
    """Reads claims and saved step results from the records bucket into a :class:`Store`.

    One listing per refresh (names, generations and times only); each object is downloaded
    once per generation and kept, so a refresh costs a listing plus what changed. Only the
    newest :data:`HISTORY` deployments are read.
    """

    def __init__(self, clients: Any, settings: Settings, store: Store) -> None:
        self.clients = clients
        self.settings = settings
        self.store = store
        self._documents: dict[tuple[str, int], dict[str, Any]] = {}
        self._pool = ThreadPoolExecutor(DOWNLOAD_THREADS, thread_name_prefix="console-records")

    def _download(self, blob: Any) -> dict[str, Any] | None:
        key = (blob.name, int(blob.generation or 0))
        found = self._documents.get(key)
        if found is None:
            try:
                found = json.loads(blob.download_as_bytes(**FAST))  # of the listed generation
            except Exception:  # replaced or deleted since the listing: next refresh
                return None
            if not isinstance(found, dict):
                return None
            self._documents[key] = found
        return found

    def refresh(self) -> None:
        bucket = self.settings.records_bucket
        by_deployment: dict[str, dict[str, Any]] = {}
        for blob in self.clients.storage.list_blobs(bucket, prefix=DEPLOYMENTS_PREFIX, **FAST):
            deployment_id, _, leaf = blob.name[len(DEPLOYMENTS_PREFIX) :].partition("/")
            if leaf.endswith(".json") and "/" not in leaf:
                by_deployment.setdefault(deployment_id, {})[leaf[:-5]] = blob
        locks: dict[str, str] = {}
        live: set[tuple[str, int]] = set()
        for blob in self.clients.storage.list_blobs(bucket, prefix="locks/", **FAST):
            live.add((blob.name, int(blob.generation or 0)))
            document = self._download(blob)
            if document and document.get("deployment_id"):
                service = blob.name[len("locks/") : -len(".json")]
                locks[service] = str(document["deployment_id"])
        claimed = [blobs for blobs in by_deployment.values() if "claim" in blobs]
        claimed.sort(key=lambda blobs: _time(blobs["claim"].time_created), reverse=True)
        newest = claimed[:HISTORY]
        # Download what is new, in parallel; finished objects are never downloaded again.
        wanted = [blob for blobs in newest for blob in blobs.values()]
        documents = dict(zip(wanted, self._pool.map(self._download, wanted), strict=True))
        for blobs in newest:
            claim = documents.get(blobs["claim"])
            if claim is None:
                continue
            results = {
                step: (document, blob.updated)
                for step, blob in blobs.items()
                if step != "claim" and (document := documents.get(blob)) is not None
            }
            holder = locks.get(str(claim.get("service") or ""))
            times = (blobs["claim"].time_created, blobs["claim"].updated)
            self.store.apply_records(claim, times, results, holder)
        live.update(key for blobs in by_deployment.values() for key in _keys(blobs))
        for key in list(self._documents):  # forget what was deleted or replaced
            if key not in live:
                del self._documents[key]
        self.store.records_loaded = True

    def check_unfinished(self) -> None:
        """Deployments whose execution ended without a ``done`` that reached us: ask the
        execution how it ended, as ``orch status --follow`` does."""
        from orch import follow

        for deployment in self.store.unfinished():
            if not deployment.execution:
                continue
            outcome, ended = follow.outcome_from_records(
                self.clients, self.settings, deployment.deployment_id
            )
            if ended and outcome is not None and not outcome.ok:
                self.store.ended_without_done(
                    deployment.deployment_id, outcome.error_code or "INTERNAL", outcome.message
                )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _time(when: datetime | None) -> float:
    return when.timestamp() if when else 0.0


def _keys(blobs: dict[str, Any]) -> list[tuple[str, int]]:
    return [(blob.name, int(blob.generation or 0)) for blob in blobs.values()]


# ------------------------------------------------------------------ the live stream


class Watcher:
    """Keeps the store current: the status stream in one thread, the records in another.

    The stream is opened first, so nothing published while the history loads is missed.
    A stream that breaks (the topic was deleted, the API is unreachable) is reopened with
    a growing pause; the reason shows on the page meanwhile.
    """

    def __init__(
        self,
        clients: Any,
        settings: Settings,
        store: Store,
        *,
        refresh_seconds: float = 5.0,
        stream_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.clients = clients
        self.settings = settings
        self.store = store
        self.refresh_seconds = refresh_seconds
        self.records = RecordsReader(clients, settings, store)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stream: Any = None
        self._stream_factory = stream_factory or self._open_stream
        self._stream_ready = threading.Event()

    def _open_stream(self) -> Any:
        from orch.follow import StatusStream

        return StatusStream(self.clients, self.settings).open()

    def start(self) -> Watcher:
        for target, name in ((self._follow, "console-stream"), (self._poll, "console-records")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _follow(self) -> None:
        what = f"status topic {self.settings.status_topic}"
        pause = 1.0
        while not self._stop.is_set():
            try:
                self._stream = self._stream_factory()
                self.store.set_error(what, None)
                self._stream_ready.set()
                pause = 1.0
                while not self._stop.is_set():
                    event = self._stream.get(0.5)
                    if event is not None:
                        self.store.apply_event(event)
            except Exception as exc:  # the page says why; we try again
                self.store.set_error(what, f"live events unavailable: {reason(exc)}")
                self._stream_ready.set()
            finally:
                if self._stream is not None:
                    self._stream.close()
                    self._stream = None
            self._stop.wait(pause)
            pause = min(pause * 2, 30.0)

    def _poll(self) -> None:
        self._stream_ready.wait(10)  # subscribe before reading history: no gap
        what = f"records bucket gs://{self.settings.records_bucket}"
        while not self._stop.is_set():
            try:
                self.records.refresh()
                self.records.check_unfinished()
                self.store.set_error(what, None)
            except Exception as exc:
                self.store.set_error(what, f"deployment history unavailable: {reason(exc)}")
            self._stop.wait(self.refresh_seconds)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self.records.close()


# ------------------------------------------------------------------ services


@dataclass
class Revision:
    name: str
    percent: int
    tags: list[str]
    deployment_id: str
    created: datetime | None
    ready: bool
    log_uri: str
    log_tail: list[str] = field(default_factory=list)


@dataclass
class ServiceView:
    name: str
    url: str
    deployment_id: str
    latest_ready: str
    revisions: list[Revision]
    triggers: list[str]
    managed_by: str = ""


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1] if name else ""


def services(clients: Any, settings: Settings, log_lines: int = 20) -> list[ServiceView]:
    """Every Cloud Run service of the region, with its traffic, revisions and triggers."""
    found = list(clients.run_services.list_services(parent=settings.location_path, **FAST))
    triggers: dict[str, list[str]] = {}
    with contextlib.suppress(Exception):  # Eventarc may be off in a project: no triggers then
        for trigger in clients.eventarc.list_triggers(parent=settings.location_path, **FAST):
            service = trigger.destination.cloud_run.service
            filters = ", ".join(f"{f.attribute}={f.value}" for f in trigger.event_filters)
            topic = trigger.transport.pubsub.topic
            label = f"{_short(trigger.name)} ({filters})" + (
                f" via {_short(topic)}" if topic else ""
            )
            triggers.setdefault(service, []).append(label)
    views = []
    for svc in sorted(found, key=lambda s: s.name):
        percents: dict[str, int] = {}
        tags: dict[str, list[str]] = {}
        for target in svc.traffic_statuses:
            revision = _short(target.revision) or _short(svc.latest_ready_revision)
            percents[revision] = percents.get(revision, 0) + int(target.percent)
            if target.tag:
                tags.setdefault(revision, []).append(target.tag)
        revisions = []
        for rev in clients.run_revisions.list_revisions(parent=svc.name, **FAST):
            name = _short(rev.name)
            log_file = clients.env.log_file(rev.log_uri)
            tail: list[str] = []
            if log_file is not None and log_file.is_file() and percents.get(name):
                tail = log_file.read_text(errors="replace").splitlines()[-log_lines:]
            revisions.append(
                Revision(
                    name=name,
                    percent=percents.get(name, 0),
                    tags=tags.get(name, []),
                    deployment_id=rev.labels.get("deployment-id", ""),
                    created=rev.create_time if rev.create_time else None,
                    ready=any(
                        c.type_ == "Ready" and c.state.name == "CONDITION_SUCCEEDED"
                        for c in rev.conditions
                    ),
                    log_uri=rev.log_uri,
                    log_tail=tail,
                )
            )
        revisions.sort(key=lambda r: r.created.timestamp() if r.created else 0, reverse=True)
        views.append(
            ServiceView(
                name=_short(svc.name),
                url=svc.uri,
                deployment_id=svc.labels.get("deployment-id", ""),
                latest_ready=_short(svc.latest_ready_revision),
                revisions=revisions,
                triggers=sorted(triggers.get(_short(svc.name), [])),
                managed_by=svc.labels.get("goog-managed-by", ""),
            )
        )
    return views


# ------------------------------------------------------------------ dead letters


@dataclass
class DeadLetter:
    message_id: str
    published: datetime | None
    attributes: dict[str, str]
    data: str


def dead_letters(clients: Any, settings: Settings) -> tuple[str, list[DeadLetter]]:
    """(subscription, up to :data:`DEAD_LETTER_SHOWN` of its messages), left in it.

    Pub/Sub has no way to look without pulling: the messages are pulled and handed back at
    once (ack deadline 0), so they stay for whoever deals with them. The backlog's exact
    size is a Cloud Monitoring metric, not a Pub/Sub call; the page shows what one pull saw.
    """
    from google.api_core import exceptions

    name = f"projects/{settings.project}/subscriptions/{pipeline()['dead_letter_subscription']}"
    try:
        response = clients.subscriber.pull(
            request={"subscription": name, "max_messages": DEAD_LETTER_SHOWN},
            timeout=3,
            retry=None,
        )
    except exceptions.DeadlineExceeded:
        return name, []
    received = list(response.received_messages)
    if received:
        clients.subscriber.modify_ack_deadline(
            request={
                "subscription": name,
                "ack_ids": [m.ack_id for m in received],
                "ack_deadline_seconds": 0,
            }
        )
    letters = []
    for item in received:
        message = item.message
        data = bytes(message.data)
        try:
            text = json.dumps(json.loads(data), indent=2, sort_keys=True)
        except ValueError:
            text = data.decode(errors="replace")
        letters.append(
            DeadLetter(
                message_id=message.message_id,
                published=message.publish_time or None,
                attributes=dict(message.attributes),
                data=text[:4000],
            )
        )
    return name, letters


# ------------------------------------------------------------------ the upload


@dataclass
class Upload:
    deployment_id: str
    uri: str
    generation: int
    size: int


def upload(
    clients: Any, settings: Settings, data: bytes, object_name: str, metadata: dict[str, str]
) -> Upload:
    """Write a source archive to the sources bucket, as ``orch deploy`` does: the intake
    takes it from there. The only write the console ever makes."""
    from orchestrator import manifest

    blob = clients.storage.bucket(settings.sources_bucket).blob(object_name)
    if metadata:
        blob.metadata = metadata
    blob.upload_from_string(data, content_type="application/zip")
    generation = int(blob.generation)
    return Upload(
        deployment_id=manifest.deployment_id(settings.sources_bucket, object_name, generation),
        uri=f"gs://{settings.sources_bucket}/{object_name}#{generation}",
        generation=generation,
        size=len(data),
    )

"""Follow deployments on the status topic, and show their progress.

A follower owns a temporary subscription on ``deploy-status``, created before the
deployment starts (so no event is missed), with message ordering (one deployment's events
arrive in order) and an optional server-side filter; it is deleted when the follower
closes, whatever happened. Events are read over StreamingPull, acknowledged at once, and
de-duplicated by CloudEvent id (Pub/Sub delivers at least once).

:func:`follow_deployment` waits for one deployment's end: its ``done`` event, or a
``failed`` event at step ``accepted`` (bad input: nothing follows). While no event comes it
also looks at the deployment's claim (in the records bucket) and its workflow execution,
so a deployment whose final event was lost still ends.
"""

from __future__ import annotations

import contextlib
import json
import queue
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from orchestrator import status
from orchestrator.config import Settings
from orchestrator.records import claim_name

POLL_SECONDS = 3.0  # after this long without an event, look at the claim and execution
GRACE_POLLS = 2  # execution ended but no `done` event: wait this many polls, then use it


def quote(value: str) -> str:
    """A string literal for a Pub/Sub filter."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class StatusStream:
    """A temporary, ordered, optionally filtered subscription on the status topic."""

    def __init__(self, clients: Any, settings: Settings, filter: str = "") -> None:
        self.clients = clients
        self.settings = settings
        self.filter = filter
        self.topic = settings.topic_path(settings.status_topic)
        self.subscription = (
            f"projects/{settings.project}/subscriptions/orch-follow-{uuid.uuid4().hex[:12]}"
        )
        self._queue: queue.Queue[status.StatusEvent] = queue.Queue()
        self._seen: set[str] = set()
        self._future: Any = None

    def open(self) -> StatusStream:
        from google.api_core import exceptions

        request: dict[str, Any] = {
            "name": self.subscription,
            "topic": self.topic,
            "enable_message_ordering": True,
            "ack_deadline_seconds": 30,
            "expiration_policy": {"ttl": {"seconds": 24 * 3600}},  # the shortest allowed
            "message_retention_duration": {"seconds": 600},
            "labels": {"created-by": "orch"},
        }
        if self.filter:
            request["filter"] = self.filter
        try:
            self.clients.subscriber.create_subscription(request=request)
        except exceptions.NotFound:
            raise LookupError(
                f"status topic {self.topic} does not exist: is the pipeline provisioned "
                "(orch local up, or terraform apply)?"
            ) from None
        self._future = self.clients.subscriber.subscribe(self.subscription, self._on_message)
        return self

    def _on_message(self, message: Any) -> None:
        try:
            event = status.from_message(message.data, message.attributes)
        except status.StatusEventError:
            event = None
        message.ack()
        if event is not None:
            self._queue.put(event)

    def get(self, timeout: float) -> status.StatusEvent | None:
        """The next new event, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                event = self._queue.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                if self._future is not None and self._future.done():
                    self._future.result()  # raise the stream's error
                continue
            if event.event_id and event.event_id in self._seen:
                continue
            if event.event_id:
                self._seen.add(event.event_id)
            return event

    def close(self) -> None:
        if self._future is not None:
            self._future.cancel()
            with contextlib.suppress(Exception):
                self._future.result(timeout=5)
        with contextlib.suppress(Exception):
            self.clients.subscriber.delete_subscription(subscription=self.subscription)

    def __enter__(self) -> StatusStream:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------ outcome


@dataclass
class Outcome:
    """How a deployment ended (or that we stopped waiting)."""

    deployment_id: str
    ok: bool
    service: str = ""
    step: str = ""
    error_code: str | None = None
    message: str = ""
    url: str = ""
    revision: str = ""
    timed_out: bool = False
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_event(cls, event: status.StatusEvent) -> Outcome:
        details = event.details or {}
        return cls(
            deployment_id=event.deployment_id,
            ok=event.state == "succeeded",
            service=event.service,
            step=str(details.get("step") or event.step),
            error_code=event.error_code,
            message=event.message,
            url=str(details.get("url") or ""),
            revision=str(details.get("revision") or ""),
            details=details,
        )


def is_final(event: status.StatusEvent) -> bool:
    return event.step == "done" or (event.step == "accepted" and event.state == "failed")


def _claim(clients: Any, settings: Settings, deployment_id: str) -> dict[str, Any] | None:
    blob = clients.storage.bucket(settings.records_bucket).get_blob(claim_name(deployment_id))
    if blob is None:
        return None
    return json.loads(blob.download_as_bytes())


def outcome_from_records(
    clients: Any, settings: Settings, deployment_id: str
) -> tuple[Outcome | None, bool]:
    """(the outcome the claim and execution show, whether the execution has ended)."""
    claim = _claim(clients, settings, deployment_id)
    if claim is None:
        return None, False
    if claim.get("state") == "failed":
        error = claim.get("error") or {}
        return Outcome(
            deployment_id,
            False,
            service=claim.get("service") or "",
            step="accepted",
            error_code=error.get("code") or "INVALID_REQUEST",
            message=error.get("message") or "the deployment was refused at intake",
        ), True
    if not claim.get("execution"):
        return None, False
    execution = clients.executions.get_execution(name=claim["execution"])
    state = execution.state.name
    if state == "ACTIVE" or state == "QUEUED" or state == "STATE_UNSPECIFIED":
        return None, False
    if state == "SUCCEEDED":
        result = json.loads(execution.result or "{}")
        if not isinstance(result, dict):
            result = {}
        ok = result.get("state", "succeeded") == "succeeded"
        found = result.get("error")
        failure: dict[str, Any] = found if isinstance(found, dict) else {}
        return Outcome(
            deployment_id,
            ok,
            service=result.get("service") or claim.get("service") or "",
            step=str(result.get("step") or "done"),
            error_code=None if ok else (failure.get("code") or "INTERNAL"),
            message=str(failure.get("message") or result.get("message") or ""),
            url=str(result.get("url") or ""),
            revision=str(result.get("revision") or ""),
        ), True
    return Outcome(
        deployment_id,
        False,
        service=claim.get("service") or "",
        step="done",
        error_code="INTERNAL",
        message=f"the workflow execution ended {state}: {execution.error.payload}".strip(),
    ), True


def follow_deployment(
    stream: StatusStream,
    deployment_id: str,
    on_event: Callable[[status.StatusEvent], None],
    *,
    timeout: float,
    records: Callable[[], tuple[Outcome | None, bool]] | None = None,
) -> Outcome:
    """Pass ``deployment_id``'s events to ``on_event`` until it ends; its outcome.

    Events of other deployments are skipped. ``records`` (see :func:`outcome_from_records`)
    is asked after :data:`POLL_SECONDS` without an event.
    """
    deadline = time.monotonic() + timeout
    ended_polls = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Outcome(
                deployment_id,
                False,
                timed_out=True,
                error_code="TIMEOUT",
                message=f"no end of deployment {deployment_id} after {timeout:g}s; it may "
                f"still be running: orch status {deployment_id}",
            )
        event = stream.get(min(remaining, POLL_SECONDS))
        if event is not None:
            if event.deployment_id != deployment_id:
                continue
            on_event(event)
            if is_final(event):
                return Outcome.from_event(event)
            continue
        if records is None:
            continue
        try:
            outcome, ended = records()
        except Exception:  # the records are a fallback: never let them end the follow
            continue
        if outcome is not None and outcome.step == "accepted":
            return outcome
        if ended:
            ended_polls += 1
            if ended_polls > GRACE_POLLS and outcome is not None:
                return outcome


# ------------------------------------------------------------------------ display

ICONS = {"running": "…", "succeeded": "✓", "skipped": "-", "failed": "✗"}
STYLES = {"running": "yellow", "succeeded": "green", "skipped": "dim", "failed": "bold red"}


def _parse_time(text: str) -> float | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class _Step:
    state: str = ""
    message: str = ""
    started: float | None = None  # monotonic, when we saw `running`
    started_at: float | None = None  # event time
    elapsed: float | None = None  # set when the step ended


class Progress:
    """One line per step (state, elapsed time, message): live on a terminal, else plain lines."""

    def __init__(self, console: Any, title: str = "") -> None:
        self.console = console
        self.title = title
        self.steps: dict[str, _Step] = {}
        self.begun = time.monotonic()
        self.live: Any = None

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self, console=self.console, refresh_per_second=8, transient=False)
            self.live.__enter__()
        elif self.title:
            self.console.print(self.title, markup=False, highlight=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.refresh()
            self.live.__exit__(None, None, None)
            self.live = None

    def update(self, event: status.StatusEvent) -> None:
        step = self.steps.setdefault(event.step, _Step())
        now = time.monotonic()
        when = _parse_time(event.time)
        if event.state == "running":
            step.started, step.started_at = now, when
        elif step.started is not None:
            if when is not None and step.started_at is not None:
                step.elapsed = max(0.0, when - step.started_at)
            else:
                step.elapsed = now - step.started
        step.state = event.state
        step.message = event.message
        if self.live is None:
            elapsed = f"{step.elapsed:.1f}s" if step.elapsed is not None else ""
            line = f"{now - self.begun:6.1f}s  {event.step:<13} {event.state:<9} {elapsed:>7}"
            if event.error_code:
                line += f"  {event.error_code}:"
            if event.message:
                line += f"  {event.message}"
            self.console.print(line.rstrip(), markup=False, highlight=False, soft_wrap=True)

    def __rich__(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 2))
        if self.title:
            table.add_row(Text(self.title, style="bold"))
        grid = Table.grid(padding=(0, 2))
        for column in range(5):
            grid.add_column(justify="right" if column == 3 else "left", no_wrap=column < 4)
        now = time.monotonic()
        for name in status.STEPS:
            if name == "done":
                continue
            step = self.steps.get(name)
            if step is None:
                grid.add_row(Text("·", style="dim"), Text(name, style="dim"), "", "", "")
                continue
            if step.elapsed is not None:
                elapsed = f"{step.elapsed:.1f}s"
            elif step.started is not None and step.state == "running":
                elapsed = f"{now - step.started:.1f}s"
            else:
                elapsed = ""
            style = STYLES.get(step.state, "")
            grid.add_row(
                Text(ICONS.get(step.state, "·"), style=style),
                Text(name),
                Text(step.state, style=style),
                elapsed,
                Text(step.message, style="dim", overflow="fold"),
            )
        table.add_row(grid)
        return table


def make_console(file: Any = None) -> Any:
    from rich.console import Console

    return Console(file=file or sys.stdout, highlight=False)

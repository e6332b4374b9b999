"""What the console knows about deployments: one timeline per deployment, kept in memory.

Two sources feed it, and either alone is enough to draw a timeline:

- **Status events** (``deploy-status``, read live through a subscription the console owns):
  exact times, ``running`` and ``waiting`` while they last, messages.
- **Records** (the records bucket: each deployment's claim and saved step results): the
  history from before the console started, and what an event lost in transit would have
  said. A saved result carries the step's ``seconds``; its object's update time is when it
  ended.

Each source only moves a step forward (a late ``running`` never undoes ``succeeded``), so
the order they arrive in does not matter. Everything is keyed by deployment id; the store
counts changes (``version``) so a page asks "anything new?" without re-rendering.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from orchestrator import status

STEPS = ("accepted", "build", "push", "deploy", "bind_triggers")
TERMINAL = ("succeeded", "failed", "skipped")
# How far along a step's state is: a state never moves back to a lower rank.
_RANK = {"": 0, "waiting": 1, "running": 2, "succeeded": 3, "skipped": 3, "failed": 3}
EVENT_HISTORY = 200  # status events kept for the topics page


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass
class Step:
    """One bar of a timeline."""

    name: str
    state: str = ""  # "" (not reached), waiting, running, succeeded, skipped, failed
    started: datetime | None = None
    ended: datetime | None = None
    seconds: float | None = None  # the step's own measure when it reported one
    message: str = ""
    error_code: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    waited_for: str = ""  # the deployment this one waited for (the service's lock)
    waited_since: datetime | None = None

    def duration(self, now: datetime) -> float | None:
        """Seconds the step took, or has taken so far while it runs."""
        if self.seconds is not None:
            return self.seconds
        if self.started is None:
            return None
        end = self.ended or (now if self.state in ("running", "waiting") else None)
        return None if end is None else max(0.0, (end - self.started).total_seconds())

    def advance(self, state: str) -> bool:
        """Move to ``state`` unless the step is already further along."""
        if _RANK.get(state, 0) < _RANK.get(self.state, 0):
            return False
        if self.state in TERMINAL and state != self.state:
            return False  # the first final word stands (a replay says the same)
        self.state = state
        return True


@dataclass
class Deployment:
    """One deployment's timeline and outcome."""

    deployment_id: str
    service: str = ""
    source_uri: str = ""
    created: datetime | None = None
    execution: str = ""
    steps: dict[str, Step] = field(default_factory=lambda: {s: Step(s) for s in STEPS})
    outcome: str = ""  # "", succeeded, failed: the `done` event, or what the records show
    outcome_message: str = ""
    error_code: str | None = None
    url: str = ""
    revision: str = ""
    finished: datetime | None = None
    uploaded: bool = False  # uploaded from this console; nothing heard of it yet

    @property
    def state(self) -> str:
        """One word for the list: queued, waiting, running, succeeded or failed."""
        if self.outcome:
            return self.outcome
        if any(s.state == "failed" for s in self.steps.values()):
            return "failed"
        if self.steps["build"].state == "waiting":
            return "waiting"
        if any(s.state for s in self.steps.values()):
            return "running"
        return "queued"

    @property
    def failed_step(self) -> Step | None:
        return next((s for s in self.steps.values() if s.state == "failed"), None)

    @property
    def source_object(self) -> str:
        """``gs://bucket/object`` without the generation."""
        return self.source_uri.partition("#")[0]

    @property
    def generation(self) -> str:
        return self.source_uri.partition("#")[2]

    @property
    def log_tail(self) -> list[str]:
        failed = self.failed_step
        tail = failed.details.get("log_tail") if failed else None
        return [str(line) for line in tail] if isinstance(tail, list) else []

    def started(self) -> datetime | None:
        """The first moment known: the claim's creation, or the first event's time."""
        times = [s.started for s in self.steps.values() if s.started] + [
            s.waited_since for s in self.steps.values() if s.waited_since
        ]
        times += [t for t in (self.created, self.steps["accepted"].ended) if t]
        return min(times) if times else None

    def sort_key(self) -> tuple[float, str]:
        when = self.created or self.started()
        return (when.timestamp() if when else 0.0, self.deployment_id)


class Store:
    """Deployments by id, status events seen, and what could not be read; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._deployments: dict[str, Deployment] = {}
        self.events: deque[status.StatusEvent] = deque(maxlen=EVENT_HISTORY)
        self.errors: dict[str, str] = {}  # what (records, status topic, ...) -> why
        self.version = 0
        self.records_loaded = False

    # ------------------------------------------------------------------ reading

    def deployments(self) -> list[Deployment]:
        """Every deployment, newest first."""
        with self._lock:
            found = list(self._deployments.values())
        found.sort(key=Deployment.sort_key, reverse=True)
        return found

    def get(self, deployment_id: str) -> Deployment | None:
        with self._lock:
            return self._deployments.get(deployment_id)

    def recent_events(self) -> list[status.StatusEvent]:
        with self._lock:
            return list(reversed(self.events))

    def unfinished(self) -> list[Deployment]:
        with self._lock:
            return [d for d in self._deployments.values() if not d.outcome]

    # ------------------------------------------------------------------ errors

    def set_error(self, what: str, why: str | None) -> None:
        with self._lock:
            before = self.errors.get(what)
            if why is None:
                self.errors.pop(what, None)
            else:
                self.errors[what] = why
            if before != why:
                self.version += 1

    # ------------------------------------------------------------------ writing

    def _deployment(self, deployment_id: str) -> Deployment:
        found = self._deployments.get(deployment_id)
        if found is None:
            found = self._deployments[deployment_id] = Deployment(deployment_id)
        return found

    def uploaded(self, deployment_id: str, service: str, source_uri: str) -> None:
        """A deployment this console started: shown at once, before intake speaks."""
        with self._lock:
            deployment = self._deployment(deployment_id)
            deployment.service = deployment.service or service
            deployment.source_uri = deployment.source_uri or source_uri
            deployment.created = deployment.created or datetime.now(UTC)
            deployment.uploaded = True
            self.version += 1

    def apply_event(self, event: status.StatusEvent) -> None:
        with self._lock:
            self.events.append(event)
            deployment = self._deployment(event.deployment_id)
            deployment.service = event.service or deployment.service
            deployment.source_uri = event.source_uri or deployment.source_uri
            when = parse_time(event.time)
            if event.step == "done":
                self._finish(
                    deployment,
                    event.state,
                    event.message,
                    event.error_code,
                    event.details,
                    when,
                )
            else:
                _apply_step(deployment.steps[event.step], event, when)
                if event.step == "accepted":
                    deployment.created = deployment.created or when
                    if event.state == "failed":
                        self._finish(
                            deployment, "failed", event.message, event.error_code, {}, when
                        )
            self.version += 1

    def _finish(
        self,
        deployment: Deployment,
        state: str,
        message: str,
        code: str | None,
        details: Mapping[str, Any],
        when: datetime | None,
    ) -> None:
        if deployment.outcome:
            return
        deployment.outcome = "succeeded" if state == "succeeded" else "failed"
        deployment.outcome_message = message
        deployment.error_code = code
        deployment.url = str(details.get("url") or deployment.url)
        deployment.revision = str(details.get("revision") or deployment.revision)
        deployment.finished = when
        for step in deployment.steps.values():  # a step still running when it ended did not end
            if step.state in ("running", "waiting") and deployment.outcome == "failed":
                step.state = "failed"
                step.ended = step.ended or when
                step.error_code = step.error_code or code
                step.message = step.message or message

    def apply_records(
        self,
        claim: Mapping[str, Any],
        claim_times: tuple[datetime | None, datetime | None],
        results: Mapping[str, tuple[Mapping[str, Any], datetime | None]],
        lock_holder: str | None = None,
    ) -> None:
        """What the records bucket says of one deployment.

        ``claim_times`` are the claim object's creation and last update (intake rewrites it
        once the workflow is started: the gap is the ``accepted`` step); ``results`` the
        saved result of each finished step with its object's update time; ``lock_holder``
        the deployment holding the service's lock now.
        """
        deployment_id = str(claim.get("deployment_id") or "")
        if not deployment_id:
            return
        with self._lock:
            deployment = self._deployment(deployment_id)
            deployment.service = str(claim.get("service") or "") or deployment.service
            deployment.source_uri = deployment.source_uri or str(claim.get("source") or "")
            deployment.created = (
                parse_time(str(claim.get("created") or "")) or claim_times[0] or deployment.created
            )
            deployment.execution = str(claim.get("execution") or deployment.execution)
            accepted = deployment.steps["accepted"]
            created, updated = claim_times
            if claim.get("state") == "failed":
                error = claim.get("error") or {}
                if accepted.advance("failed"):
                    accepted.error_code = error.get("code")
                    accepted.message = str(error.get("message") or "")
                    accepted.ended = accepted.ended or updated
                self._finish(
                    deployment, "failed", accepted.message, accepted.error_code, {}, updated
                )
            elif claim.get("execution") and accepted.advance("succeeded"):
                # The claim is made when intake starts; the accepted event (or, without
                # it, the claim's rewrite naming the execution) is when it ended.
                if accepted.started is None and created is not None:
                    accepted.started = min(created, accepted.ended or updated or created)
                accepted.ended = accepted.ended or updated
            for name in STEPS[1:]:
                if name in results:
                    document, ended = results[name]
                    _apply_result(deployment.steps[name], document, ended)
            self._outcome_from_results(deployment)
            build = deployment.steps["build"]
            if (
                not deployment.outcome
                and lock_holder
                and lock_holder != deployment_id
                and accepted.state == "succeeded"
                and build.advance("waiting")
            ):
                build.waited_for = build.waited_for or lock_holder
                build.message = build.message or (
                    f"waiting: deployment {lock_holder} of service {deployment.service} is "
                    "in progress"
                )
            self.version += 1

    def _outcome_from_results(self, deployment: Deployment) -> None:
        failed = deployment.failed_step
        if failed is not None and failed.name != "accepted":
            self._finish(deployment, "failed", failed.message, failed.error_code, {}, failed.ended)
        elif deployment.steps["bind_triggers"].state == "succeeded":
            deploy = deployment.steps["deploy"].details
            self._finish(
                deployment,
                "succeeded",
                "",
                None,
                deploy,
                deployment.steps["bind_triggers"].ended,
            )

    def ended_without_done(self, deployment_id: str, code: str, message: str) -> None:
        """The workflow execution ended and no ``done`` came (see ``orch.follow``)."""
        with self._lock:
            deployment = self._deployments.get(deployment_id)
            if deployment is not None and not deployment.outcome:
                self._finish(deployment, "failed", message, code, {}, None)
                self.version += 1

    def load(self, deployments: Iterable[Deployment]) -> None:
        """Put ready-made deployments in (the benchmark's and the tests' fixtures)."""
        with self._lock:
            for deployment in deployments:
                self._deployments[deployment.deployment_id] = deployment
            self.version += 1


def _apply_step(step: Step, event: status.StatusEvent, when: datetime | None) -> None:
    details = event.details or {}
    waiting_for = str(details.get("waiting_for") or "")
    if event.state == "running" and waiting_for:
        if step.advance("waiting"):
            step.waited_for = waiting_for
            step.waited_since = step.waited_since or when
            step.message = event.message
        return
    if not step.advance(event.state):
        return
    if event.state == "running":
        if step.started is None:
            step.started = when  # after a wait (waited_since), the step's own work starts now
        step.message = event.message
        return
    step.ended = when
    step.message = event.message or step.message
    step.error_code = event.error_code
    step.details = dict(details)
    seconds = details.get("seconds")
    if isinstance(seconds, int | float):
        step.seconds = float(seconds)
    if step.started is None and when is not None and step.seconds is not None:
        from datetime import timedelta

        step.started = when - timedelta(seconds=step.seconds)


def _apply_result(step: Step, document: Mapping[str, Any], ended: datetime | None) -> None:
    """A saved step result: ``{"error": {...}, "details": {...}}`` or the step's result."""
    from datetime import timedelta

    error = document.get("error")
    if isinstance(error, Mapping):
        state = "failed"
        details = dict(document.get("details") or {})
    else:
        state = "skipped" if document.get("skipped") is True else "succeeded"
        details = dict(document)
    if not step.advance(state):
        return
    step.details = details
    if isinstance(error, Mapping):
        step.error_code = str(error.get("code") or "") or None
        step.message = str(error.get("message") or "")
    elif state == "skipped":
        step.message = f"skipped: {details.get('reason', '')}".rstrip(": ")
    seconds = details.get("seconds")
    if isinstance(seconds, int | float):
        step.seconds = float(seconds)
    step.ended = step.ended or ended
    if step.started is None and step.ended is not None and step.seconds is not None:
        step.started = step.ended - timedelta(seconds=step.seconds)

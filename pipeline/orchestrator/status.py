"""Status events: one Pub/Sub message on ``deploy-status`` per step transition.

The contract (docs/pipeline.md, "Status events"), fixed here so every producer and
subscriber agrees:

- The body is a CloudEvent in structured JSON mode (CloudEvents 1.0):
  ``specversion`` ``1.0``, ``id`` (a UUID, for de-duplication: Pub/Sub delivers at least
  once), ``source`` ``//orchestrator/deployments/<deployment id>``, ``type``
  :data:`EVENT_TYPE`, ``time`` (RFC 3339, UTC), ``datacontenttype`` ``application/json``,
  ``subject`` = the deployment id, and ``data``::

      {"deployment_id": "d-…", "service": "hello", "step": "build", "state": "failed",
       "message": "…", "source_uri": "gs://bucket/hello.zip#123",
       "error": {"code": "BUILD_FAILED", "message": "…"},   # only when state is failed
       "details": {…}}                                       # step-specific, JSON values

- Attributes are exactly ``deployment_id``, ``service``, ``step``, ``state``, so a
  subscription filter such as ``attributes.state = "failed"`` selects without parsing.
- The ordering key is the deployment id: a subscription with message ordering reads one
  deployment's events in the order they happened.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from orchestrator.bounds import clip, clip_details

STEPS = ("accepted", "build", "push", "deploy", "bind_triggers", "done")
# ``skipped``: a step a deployment does not need (``push`` when Cloud Functions deploys the
# function: its image never leaves the function's own repository), said so in the stream
# rather than left out, so a subscriber sees every step of every deployment end.
STATES = ("running", "succeeded", "skipped", "failed")
EVENT_TYPE = "dev.orchestrator.deploy.status.v1"
SOURCE_PREFIX = "//orchestrator/deployments/"
STATUS_TOPIC = "deploy-status"
ATTRIBUTES = ("deployment_id", "service", "step", "state")

# A failure's code: the pipeline's own (BUILD_FAILED, DEPLOY_FAILED, ...) or a new step's.
ERROR_CODE_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


class StatusEventError(ValueError):
    """A status event that breaks the contract (bad step/state, unreadable message)."""


@dataclass
class StatusEvent:
    """One step transition of one deployment.

    ``event_id`` and ``time`` are filled in when the event is sent and read back from a
    message; they do not take part in equality, so an event equals its round trip.
    """

    deployment_id: str
    service: str
    step: str
    state: str
    message: str = ""
    error_code: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    source_uri: str = ""
    event_id: str = field(default="", compare=False)
    time: str = field(default="", compare=False)

    def validate(self) -> None:
        """Refuse what a subscriber could not use: unknown steps, failures without a code."""
        if not self.deployment_id:
            raise StatusEventError("a status event needs a deployment_id")
        if self.step not in STEPS:
            raise StatusEventError(f"step {self.step!r} is not one of {', '.join(STEPS)}")
        if self.state not in STATES:
            raise StatusEventError(f"state {self.state!r} is not one of {', '.join(STATES)}")
        if self.state == "failed":
            if not self.error_code:
                raise StatusEventError("a failed status event needs an error_code")
            if not self.message:
                raise StatusEventError("a failed status event needs a message a person can act on")
        if self.error_code is not None and not ERROR_CODE_RE.fullmatch(self.error_code):
            raise StatusEventError(
                f"error_code {self.error_code!r} is not UPPER_SNAKE_CASE (e.g. BUILD_FAILED)"
            )
        if not isinstance(self.details, dict):
            raise StatusEventError("details must be a JSON object")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_message(event: StatusEvent) -> tuple[bytes, dict[str, str], str]:
    """(data, attributes, ordering key) for publishing ``event``.

    The message and details are bounded (``bounds.clip``, ``bounds.clip_details``), so an
    event stays a few KB whatever a step had to say: every subscriber receives it.
    """
    event.validate()
    message = clip(event.message)
    data: dict[str, Any] = {
        "deployment_id": event.deployment_id,
        "service": event.service,
        "step": event.step,
        "state": event.state,
        "message": message,
        "source_uri": clip(event.source_uri, 1200),
        "details": clip_details(event.details),
    }
    if event.state == "failed":
        data["error"] = {"code": event.error_code, "message": message}
    envelope = {
        "specversion": "1.0",
        "id": event.event_id or str(uuid.uuid4()),
        "source": SOURCE_PREFIX + event.deployment_id,
        "type": EVENT_TYPE,
        "time": event.time or _now(),
        "datacontenttype": "application/json",
        "subject": event.deployment_id,
        "data": data,
    }
    try:
        body = json.dumps(envelope, separators=(",", ":"), sort_keys=True).encode()
    except (TypeError, ValueError) as exc:
        raise StatusEventError(f"details are not JSON-serialisable: {exc}") from None
    attributes = {
        "deployment_id": event.deployment_id,
        "service": event.service,
        "step": event.step,
        "state": event.state,
    }
    return body, attributes, event.deployment_id


def from_message(data: bytes, attributes: Mapping[str, str] | None = None) -> StatusEvent:
    """The event a message carries; the body is authoritative, attributes fill gaps."""
    attrs = dict(attributes or {})
    try:
        envelope = json.loads(data)
    except ValueError as exc:
        raise StatusEventError(f"status message body is not JSON: {exc}") from None
    if not isinstance(envelope, dict) or envelope.get("type") != EVENT_TYPE:
        raise StatusEventError(f"not a status event (CloudEvents type is not {EVENT_TYPE})")
    if envelope.get("specversion") != "1.0":
        raise StatusEventError(
            f"unsupported CloudEvents specversion {envelope.get('specversion')!r}"
        )
    body = envelope.get("data")
    if not isinstance(body, dict):
        raise StatusEventError("status event has no data object")
    error = body.get("error") or {}
    event = StatusEvent(
        deployment_id=body.get("deployment_id") or attrs.get("deployment_id", ""),
        service=body.get("service", attrs.get("service", "")),
        step=body.get("step") or attrs.get("step", ""),
        state=body.get("state") or attrs.get("state", ""),
        message=body.get("message", ""),
        error_code=error.get("code"),
        details=body.get("details") or {},
        source_uri=body.get("source_uri", ""),
        event_id=envelope.get("id", ""),
        time=envelope.get("time", ""),
    )
    event.validate()
    return event


class StatusPublisher:
    """Publishes status events with the deployment id as ordering key, one at a time.

    Wraps an official ``PublisherClient`` built with message ordering enabled (by default
    :attr:`orchestrator.clients.Clients.ordered_publisher`). ``publish`` blocks until
    Pub/Sub has the message, so a step reports before it moves on. When a publish fails the
    client pauses that ordering key; we resume it so a later event (typically the failure
    report) can still go out, and raise.
    """

    def __init__(
        self,
        topic: str = STATUS_TOPIC,
        *,
        publisher: Any = None,
        project: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        if publisher is None or (project is None and not topic.startswith("projects/")):
            from orchestrator import clients

            factory = clients.default()
            publisher = publisher if publisher is not None else factory.ordered_publisher
            project = project or factory.env.project
        self.topic = (
            topic if topic.startswith("projects/") else f"projects/{project}/topics/{topic}"
        )
        self.timeout = timeout
        self._publisher = publisher

    def start(self, event: StatusEvent) -> tuple[Any, str]:
        """Send ``event`` without waiting; pass the result to :meth:`finish`.

        Later events with the same deployment id still go out after it: the client keeps
        an ordering key's messages in sequence.
        """
        data, attributes, key = to_message(event)
        return self._publisher.publish(self.topic, data, ordering_key=key, **attributes), key

    def finish(self, started: tuple[Any, str]) -> str:
        """Wait for a started publish; its message id."""
        future, key = started
        try:
            return future.result(timeout=self.timeout)
        except Exception:
            self._publisher.resume_publish(self.topic, key)
            raise

    def publish(self, event: StatusEvent) -> str:
        """Publish ``event`` and return its Pub/Sub message id."""
        return self.finish(self.start(event))

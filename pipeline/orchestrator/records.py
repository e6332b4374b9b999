"""The orchestrator's own records, kept as objects in the records bucket.

Cloud Storage preconditions give the three guarantees the pipeline needs without a
database: a deployment is claimed exactly once (create with ``if_generation_match=0``), a
step's finished result is kept so a retried call returns it instead of redoing the work,
and one deployment at a time holds a service's lock. The records live in a bucket of their
own (``Settings.records_bucket``), not in the sources bucket, so writing one never fires
the intake trigger: on the sources bucket every write was an event delivered to
``on_source_uploaded`` (ignored there, but paid for, and retried when it failed).

Layout: ``deployments/ID/claim.json``, ``deployments/ID/STEP.json``,
``locks/SERVICE.json``, ``services/SERVICE/triggers.json``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from google.api_core import exceptions

from orchestrator.config import Settings

LOG = logging.getLogger(__name__)

DEPLOYMENTS_PREFIX = "deployments/"
# Cloud Storage sustains about one write a second to one object name; writing faster gets
# 429s (https://cloud.google.com/storage/quotas#objects, "Maximum rate of writes to the
# same object name: one write per second"; https://cloud.google.com/storage/docs/objects).
# A waiter never writes the lock object more often than this; it reads it more often.
MIN_WRITE_INTERVAL = 1.0
FIRST_POLL = 0.25  # the first reads of a held lock, then slower up to MAX_POLL
MAX_POLL = 1.0


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def deployment_prefix(deployment_id: str) -> str:
    return f"{DEPLOYMENTS_PREFIX}{deployment_id}/"


def claim_name(deployment_id: str) -> str:
    return deployment_prefix(deployment_id) + "claim.json"


def step_name(deployment_id: str, step: str) -> str:
    return deployment_prefix(deployment_id) + f"{step}.json"


def lock_name(service: str) -> str:
    return f"locks/{service}.json"


def locations_name(service: str) -> str:
    """Where a service's triggers were created (storage triggers follow their buckets)."""
    return f"services/{service}/triggers.json"


class Records:
    """Read and write records in the records bucket with the official storage client."""

    def __init__(self, settings: Settings, storage: Any) -> None:
        self.settings = settings
        self.bucket = storage.bucket(settings.records_bucket)

    # ---------------------------------------------------------------- plain objects

    def read(self, name: str) -> tuple[dict[str, Any], int] | None:
        """(document, generation), or None when the object does not exist."""
        blob = self.bucket.blob(name)
        try:
            data = blob.download_as_bytes()
        except exceptions.NotFound:
            return None
        return json.loads(data), int(blob.generation)

    def create(self, name: str, document: dict[str, Any]) -> int | None:
        """Create ``name`` only if it does not exist; its generation, or None if it did."""
        blob = self.bucket.blob(name)
        try:
            blob.upload_from_string(
                json.dumps(document, sort_keys=True),
                content_type="application/json",
                if_generation_match=0,
            )
        except exceptions.PreconditionFailed:
            return None
        return int(blob.generation)

    def replace(self, name: str, document: dict[str, Any], generation: int) -> int | None:
        """Overwrite ``name`` if it is still at ``generation``; the new one, or None."""
        blob = self.bucket.blob(name)
        try:
            blob.upload_from_string(
                json.dumps(document, sort_keys=True),
                content_type="application/json",
                if_generation_match=generation,
            )
        except exceptions.PreconditionFailed:
            return None
        return int(blob.generation)

    def write(self, name: str, document: dict[str, Any]) -> None:
        self.bucket.blob(name).upload_from_string(
            json.dumps(document, sort_keys=True), content_type="application/json"
        )

    def delete(self, name: str, generation: int | None = None) -> bool:
        try:
            self.bucket.blob(name).delete(if_generation_match=generation)
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            return False
        return True

    # ---------------------------------------------------------------- step results

    def step_result(self, deployment_id: str, step: str) -> dict[str, Any] | None:
        found = self.read(step_name(deployment_id, step))
        return found[0] if found else None

    def save_step(self, deployment_id: str, step: str, result: dict[str, Any]) -> None:
        self.write(step_name(deployment_id, step), result)

    # ---------------------------------------------------------------- service locks

    def holder(self, service: str) -> str | None:
        """The deployment that holds ``service``'s lock, or None when nobody does."""
        found = self.read(lock_name(service))
        return None if found is None else found[0].get("deployment_id")

    def acquire(
        self,
        service: str,
        deployment_id: str,
        execution: str,
        is_active: Callable[[str | None], bool],
        on_wait: Callable[[str], None],
        timeout: float,
        on_stale: Callable[[dict[str, Any]], None] | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> bool:
        """Hold ``service``'s lock for ``deployment_id``, waiting for the current holder.

        A lock whose holder's workflow execution is no longer running (it failed after its
        retries, or was cancelled) is stale and taken over, so a crash never wedges a
        service. ``on_wait(holder)`` is called once for each holder this deployment waits
        for. True when this call took the lock; False when the deployment already held it
        (a retried call, whose first attempt may have started work). ``on_stale(holder)`` is
        called before a stale lock is taken over, to report the deployment that held it.

        While it waits, the lock is read (every FIRST_POLL seconds, slowing to MAX_POLL)
        and written only when it looks free or stale, never twice within
        MIN_WRITE_INTERVAL: Cloud Storage throttles faster writes to one object name.
        """
        name = lock_name(service)
        deadline = time.monotonic() + timeout
        waited_for: str | None = None
        last_write = float("-inf")
        poll = FIRST_POLL

        def write(generation: int | None) -> bool:
            nonlocal last_write
            pause = last_write + MIN_WRITE_INTERVAL - time.monotonic()
            if pause > 0:
                sleep(pause)
            last_write = time.monotonic()
            mine = {"deployment_id": deployment_id, "execution": execution, "since": now()}
            if generation is None:
                return self.create(name, mine) is not None
            return self.replace(name, mine, generation) is not None

        if write(None):
            return True
        while True:
            found = self.read(name)
            if found is None:  # released since we looked
                if write(None):
                    return True
                continue
            holder, generation = found
            if holder.get("deployment_id") == deployment_id:
                return False  # a retried call of our own deployment
            if not is_active(holder.get("execution")):
                LOG.warning(
                    "taking over the stale lock of %s from %s", service, holder["deployment_id"]
                )
                if on_stale is not None:
                    on_stale(holder)
                if write(generation):
                    return True
                continue
            if waited_for != holder.get("deployment_id"):
                waited_for = str(holder.get("deployment_id"))
                on_wait(waited_for)
                poll = FIRST_POLL
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"deployment {waited_for} of service {service} still runs after "
                    f"{timeout:g}s of waiting"
                )
            sleep(poll)
            poll = min(poll * 2, MAX_POLL)

    def release(self, service: str, deployment_id: str) -> None:
        """Drop ``service``'s lock if ``deployment_id`` holds it."""
        name = lock_name(service)
        found = self.read(name)
        if found and found[0].get("deployment_id") == deployment_id:
            self.delete(name, found[1])

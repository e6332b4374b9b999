"""The orchestrator's own records, kept as objects under ``_orchestrator/`` in the sources bucket.

Cloud Storage preconditions give the three guarantees the pipeline needs without a
database: a deployment is claimed exactly once (create with ``if_generation_match=0``), a
step's finished result is kept so a retried call returns it instead of redoing the work,
and one deployment at a time holds a service's lock. Intake ignores this prefix, so the
records never trigger deployments themselves.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from google.api_core import exceptions

from orchestrator.config import Settings, pipeline

LOG = logging.getLogger(__name__)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def deployment_prefix(deployment_id: str) -> str:
    return f"{pipeline()['reserved_prefix']}deployments/{deployment_id}/"


def claim_name(deployment_id: str) -> str:
    return deployment_prefix(deployment_id) + "claim.json"


def step_name(deployment_id: str, step: str) -> str:
    return deployment_prefix(deployment_id) + f"{step}.json"


def lock_name(service: str) -> str:
    return f"{pipeline()['reserved_prefix']}locks/{service}.json"


def locations_name(service: str) -> str:
    """Where a service's triggers were created (storage triggers follow their buckets)."""
    return f"{pipeline()['reserved_prefix']}services/{service}/triggers.json"


class Records:
    """Read and write records in the sources bucket with the official storage client."""

    def __init__(self, settings: Settings, storage: Any) -> None:
        self.settings = settings
        self.bucket = storage.bucket(settings.sources_bucket)

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

    def acquire(
        self,
        service: str,
        deployment_id: str,
        execution: str,
        is_active: Any,
        on_wait: Any,
        timeout: float,
        poll: float = 0.25,
        on_stale: Any = None,
    ) -> bool:
        """Hold ``service``'s lock for ``deployment_id``, waiting for the current holder.

        A lock whose holder's workflow execution is no longer running (it failed after its
        retries, or was cancelled) is stale and taken over, so a crash never wedges a
        service. ``on_wait(holder)`` is called once when this deployment has to wait.
        True when this call took the lock; False when the deployment already held it (a
        retried call, whose first attempt may have started work). ``on_stale(holder)`` is
        called before a stale lock is taken over, to report the deployment that held it.
        """
        name = lock_name(service)
        mine = {"deployment_id": deployment_id, "execution": execution, "since": now()}
        deadline = time.monotonic() + timeout
        waited_for: str | None = None
        while True:
            if self.create(name, mine) is not None:
                return True
            found = self.read(name)
            if found is None:
                continue  # released between our two calls
            holder, generation = found
            if holder.get("deployment_id") == deployment_id:
                return False  # a retried call of our own deployment
            if not is_active(holder.get("execution")):
                LOG.warning(
                    "taking over the stale lock of %s from %s", service, holder["deployment_id"]
                )
                if on_stale is not None:
                    on_stale(holder)
                if self.replace(name, mine, generation) is not None:
                    return True
                continue
            if waited_for != holder.get("deployment_id"):
                waited_for = holder.get("deployment_id")
                on_wait(waited_for)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"deployment {waited_for} of service {service} still runs after "
                    f"{timeout:g}s of waiting"
                )
            time.sleep(poll)

    def release(self, service: str, deployment_id: str) -> None:
        """Drop ``service``'s lock if ``deployment_id`` holds it."""
        name = lock_name(service)
        found = self.read(name)
        if found and found[0].get("deployment_id") == deployment_id:
            self.delete(name, found[1])

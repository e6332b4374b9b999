"""From the model to what a template draws: bars placed on a time axis, words for numbers.

Kept apart from the templates so that what a page shows (which step failed, how long each
took, where each bar sits) is computed, and tested, in Python; the templates only lay it out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from orch.console.model import STEPS, Deployment, Step

STATE_WORDS = {
    "": "not reached",
    "waiting": "waiting",
    "running": "running",
    "succeeded": "succeeded",
    "skipped": "skipped",
    "failed": "failed",
}
LIST_STATES = ("queued", "waiting", "running", "succeeded", "failed")


def seconds_text(seconds: float | None) -> str:
    """``0.4 s``, ``12.3 s``, ``2 min 05 s``; empty when unknown."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def time_text(when: datetime | None) -> str:
    """UTC, to the second: the same on every machine that looks at it."""
    return when.strftime("%Y-%m-%d %H:%M:%S UTC") if when else ""


@dataclass
class Bar:
    """One step of a timeline as drawn: its place on the deployment's time axis (percent)."""

    name: str
    state: str
    state_word: str
    duration: str
    left: float
    width: float
    message: str
    error_code: str | None
    waited_for: str
    waited: str
    wait_width: float = 0.0  # the part of ``width`` spent waiting for the service's lock

    @property
    def work_width(self) -> float:
        return round(max(0.0, self.width - self.wait_width), 2)


def timeline(deployment: Deployment, now: datetime) -> list[Bar]:
    """The five steps as bars on one axis from the deployment's first moment to its last."""
    start = deployment.started()
    ends = [s.ended for s in deployment.steps.values() if s.ended]
    if deployment.finished:
        ends.append(deployment.finished)
    running = any(s.state in ("running", "waiting") for s in deployment.steps.values())
    end = now if running or not ends else max(ends)
    span = (end - start).total_seconds() if start and end else 0.0
    bars = []
    for name in STEPS:
        step = deployment.steps[name]
        bars.append(_bar(step, start, span, now))
    return bars


def _bar(step: Step, start: datetime | None, span: float, now: datetime) -> Bar:
    duration = step.duration(now)
    left = width = 0.0
    first = step.waited_since or step.started
    if start is not None and first is not None and span > 0:
        left = max(0.0, min(100.0, (first - start).total_seconds() / span * 100))
        whole = (duration or 0.0) + (
            (step.started - step.waited_since).total_seconds()
            if step.waited_since and step.started
            else 0.0
        )
        if step.state == "waiting" and step.waited_since:
            whole = (now - step.waited_since).total_seconds()
        width = max(0.8, min(100.0 - left, whole / span * 100))
    elif step.state:
        width = 100.0 if span <= 0 and step.state in ("running", "waiting") else 0.8
    waited = ""
    wait_width = 0.0
    if step.waited_since:
        until = step.started or (now if step.state == "waiting" else None)
        if until is not None:
            pause = max(0.0, (until - step.waited_since).total_seconds())
            waited = seconds_text(pause)
            if span > 0:
                wait_width = min(width, pause / span * 100)
    return Bar(
        name=step.name,
        state=step.state or "pending",
        state_word=STATE_WORDS.get(step.state, step.state),
        duration=seconds_text(duration),
        left=round(left, 2),
        width=round(width, 2),
        message=step.message,
        error_code=step.error_code,
        waited_for=step.waited_for,
        waited=waited,
        wait_width=round(wait_width, 2),
    )


@dataclass
class Row:
    """One deployment in the list."""

    deployment_id: str
    service: str
    state: str
    created: str
    duration: str
    source: str
    steps: list[tuple[str, str]]  # (step, state) for the small dots
    reason: str


def row(deployment: Deployment, now: datetime) -> Row:
    start = deployment.started()
    end = deployment.finished or max(
        (s.ended for s in deployment.steps.values() if s.ended), default=None
    )
    if not deployment.outcome:
        end = now
    total = (end - start).total_seconds() if start and end else None
    failed = deployment.failed_step
    reason = ""
    if deployment.state == "failed":
        code = deployment.error_code or (failed.error_code if failed else None)
        text = deployment.outcome_message or (failed.message if failed else "")
        reason = f"{code}: {text}" if code else text
    return Row(
        deployment_id=deployment.deployment_id,
        service=deployment.service,
        state=deployment.state,
        created=time_text(deployment.created or start),
        duration=seconds_text(max(0.0, total) if total is not None else None),
        source=deployment.source_uri,
        steps=[(name, deployment.steps[name].state or "pending") for name in STEPS],
        reason=reason[:300],
    )


def select(
    deployments: Iterable[Deployment], service: str = "", state: str = "", limit: int = 1000
) -> tuple[list[Deployment], int]:
    """(the deployments a filter keeps, newest first, up to ``limit``; how many it kept)."""
    kept = [
        d
        for d in deployments
        if (not service or d.service == service) and (not state or d.state == state)
    ]
    return kept[:limit], len(kept)

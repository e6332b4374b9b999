"""``--only console``: ``orch console``'s deployments page with 1,000 deployments.

The console's store is filled the way its watcher fills it, from status events as a
subscriber receives them (through the wire format): 1,000 deployments, most succeeded,
some failed at the build with a log tail, some still running. The console's own server
then answers ``GET /deployments`` over loopback, as a browser asks for it: the figure is
the whole answer (filter, sort, render, send), median and p95 of the measured rounds after
warm-up rounds. Target: under 300 ms (issue 20). The page's poll is measured too: an
unchanged page answers 304 without rendering. Nothing here needs localcloud.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

TARGET_MS = 300.0


@dataclass
class ConsoleSettings:
    deployments: int = 1000
    warmup: int = 3
    rounds: int = 20

    @classmethod
    def for_run(cls, quick: bool) -> ConsoleSettings:
        return cls(rounds=8 if quick else 20)


@dataclass
class ConsoleResult:
    page_ms: list[float] = field(default_factory=list)
    unchanged_ms: list[float] = field(default_factory=list)
    page_bytes: int = 0
    fill_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def median(self, values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    def p95(self, values: list[float]) -> float | None:
        if not values:
            return None
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _events(count: int) -> list[Any]:
    from orchestrator.status import StatusEvent, from_message, to_message

    start = datetime.now(UTC) - timedelta(hours=count)
    out = []

    def add(dep: str, service: str, step: str, state: str, at: datetime, **kw: Any) -> None:
        event = StatusEvent(
            deployment_id=dep,
            service=service,
            step=step,
            state=state,
            source_uri=f"gs://bench-sources/{service}.zip#{int(at.timestamp() * 1e6)}",
            time=at.isoformat().replace("+00:00", "Z"),
            **kw,
        )
        data, attributes, _ = to_message(event)
        out.append(from_message(data, attributes))

    for i in range(count):
        dep, service = f"d-{i:016x}", f"svc-{i % 40}"
        t = start + timedelta(hours=i)
        add(dep, service, "accepted", "succeeded", t, message="deploying")
        steps = ("build", "push", "deploy", "bind_triggers")
        running = i >= count - 20
        failing = i % 12 == 5
        for n, step in enumerate(steps):
            begun = t + timedelta(seconds=1 + 3 * n)
            add(dep, service, step, "running", begun, message=f"{step} running")
            if running and n == 2:
                break
            if failing and step == "build":
                tail = [f"Step #0: line {k} of the build log" for k in range(20)]
                add(
                    dep,
                    service,
                    step,
                    "failed",
                    begun + timedelta(seconds=2),
                    message="the build failed: pip could not install no-such-package",
                    error_code="BUILD_FAILED",
                    details={"log_tail": tail, "seconds": 2.0},
                )
                add(
                    dep,
                    service,
                    "done",
                    "failed",
                    begun + timedelta(seconds=2.1),
                    message="the build failed",
                    error_code="BUILD_FAILED",
                )
                break
            details: dict[str, Any] = {"seconds": 2.5}
            if step == "deploy":
                details |= {"url": f"https://{service}.run.app", "revision": f"{service}-{i:05d}"}
            add(dep, service, step, "succeeded", begun + timedelta(seconds=2.5), details=details)
        else:
            add(dep, service, "done", "succeeded", t + timedelta(seconds=13))
    return out


def bench(s: ConsoleSettings, result: ConsoleResult) -> None:
    import requests

    from orch.console.model import Store
    from orch.console.server import Console, serve
    from orchestrator.config import Settings

    store = Store()
    began = time.perf_counter()
    for event in _events(s.deployments):
        store.apply_event(event)
    store.records_loaded = True
    result.fill_seconds = time.perf_counter() - began
    server = serve(Console(Settings.defaults("bench"), None, store), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/deployments"
    session = requests.Session()
    try:
        for n in range(s.warmup + s.rounds):
            began = time.perf_counter()
            response = session.get(url, timeout=30)
            elapsed = (time.perf_counter() - began) * 1000
            response.raise_for_status()
            shown = response.text.count("<tr data-deployment=")
            if shown != s.deployments:
                raise RuntimeError(f"the page shows {shown} deployments, not {s.deployments}")
            result.page_bytes = len(response.content)
            if n >= s.warmup:
                result.page_ms.append(elapsed)
        # The poll of a page whose deployments are all finished: 304, nothing rendered.
        finished = f"{url}?state=succeeded&fragment=1"
        etag = session.get(finished, timeout=30).headers["ETag"]
        for _ in range(s.rounds):
            began = time.perf_counter()
            response = session.get(finished, headers={"If-None-Match": etag}, timeout=30)
            result.unchanged_ms.append((time.perf_counter() - began) * 1000)
            if response.status_code != 304:
                raise RuntimeError(f"an unchanged page answered {response.status_code}")
    finally:
        server.shutdown()
        server.server_close()


def run(s: ConsoleSettings) -> ConsoleResult:
    result = ConsoleResult()
    try:
        bench(s, result)
    except Exception as exc:  # kept, not raised: the row without a figure fails
        result.errors.append(f"{type(exc).__name__}: {exc}")
    return result


def rows(r: ConsoleResult) -> list[tuple[str, str, float | None, float | None, str, bool | None]]:
    median = r.median(r.page_ms)
    ok = None if median is None and not r.errors else (median is not None and median < TARGET_MS)
    return [
        (
            "console deployments page, 1,000 deployments, median",
            "ms",
            median,
            None,
            f"< {TARGET_MS:g} ms",
            ok,
        ),
        (
            "console deployments page, 1,000 deployments, p95",
            "ms",
            r.p95(r.page_ms),
            None,
            "",
            None,
        ),
        (
            "console poll of an unchanged page (304), median",
            "ms",
            r.median(r.unchanged_ms),
            None,
            "",
            None,
        ),
    ]


def passed(r: ConsoleResult) -> bool:
    return not r.errors and all(ok is not False for *_, ok in rows(r))


def notes(s: ConsoleSettings, r: ConsoleResult) -> list[str]:
    out = [
        f"console: {s.deployments:,} deployments from status events (stored in "
        f"{r.fill_seconds:.2f} s), GET /deployments over loopback, {s.warmup} warm-up then "
        f"{s.rounds} measured requests; page {r.page_bytes:,} bytes",
    ]
    out.extend(f"console: ERROR {e}" for e in r.errors)
    return out


def markdown(s: ConsoleSettings, r: ConsoleResult) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f} ms"

    median, p95 = r.median(r.page_ms), r.p95(r.page_ms)
    return "\n".join(
        [
            "| orch console | median | p95 | target |",
            "|---|---:|---:|---|",
            f"| Deployments page, {s.deployments:,} deployments ({r.page_bytes / 1024:,.0f} KiB "
            f"of HTML), GET over loopback | {ms(median)} | {ms(p95)} | < {TARGET_MS:g} ms |",
            f"| The page's poll when nothing changed (304) | {ms(r.median(r.unchanged_ms))} "
            f"| {ms(r.p95(r.unchanged_ms))} | - |",
            "",
            f"The console's store is filled from {s.deployments:,} deployments' status events "
            "(most succeeded, one in twelve failed at the build with a log tail, twenty "
            "running); the whole answer is timed, as a browser asks for it.",
        ]
    )


def to_json(s: ConsoleSettings, r: ConsoleResult) -> dict[str, Any]:
    return {"settings": asdict(s), "result": asdict(r)}

"""Deploy-pipeline benchmarks: a zip dropped in the sources bucket to the service answering.

A fresh localcloud is started and the pipeline provisioned on it as ``orch local up`` does
(``orch.provision``: the orchestrator's functions, each with one warm instance, the
``deploy`` workflow and the intake triggers). Then functions are deployed the way a user
does it, one after the other, by uploading a zip to ``gs://<sources bucket>/NAME.zip``
through the official storage client:

- ``plain``: an HTTP function without dependencies; every deploy changes its source text,
  so every deploy builds a new image and makes a new revision;
- ``deps``: ``examples/hello`` (it needs ``markupsafe``) with a source-only change each
  time: its dependencies layer comes from the build cache. Its first deploy (which
  installs the dependency) is warm-up and not counted; so is the ``plain`` function's
  first deploy (it creates the service; the counted ones update it);
- ``node``: a Node.js HTTP function without dependencies (``index.js`` and
  ``package.json``; the orchestrator's default runtime, ``nodejs22``), its text changed
  every deploy, like ``plain``; its warm-up deploy also builds the framework's layer.

Each deploy is timed from the upload call's return to the first answer of the service's
URL that carries the new source's text: a thread GETs the URL (one request at a time,
20 ms apart; the ingress holds a request while an instance starts) from the moment the
upload returned, independently of the status events. The status events (a subscription
with message ordering on the status topic) give each step's time: from its ``running``
event to its ``succeeded`` event (event ``time`` stamps, the same machine's clock), and
the hops between steps (the workflow calling the next step function).

Next to each deploy, the irreducible work of that deploy is done directly in the same
run, on the same localcloud:

- build: the same source (its marker text differs, same length, so no cache can serve it
  whole) submitted straight to Cloud Build, as ``gcloud builds submit --pack`` does, timed
  from ``create_build`` to ``operation.result()`` returning (polled every 20-50 ms);
- push: what the ``push`` step does with that image, through the same registry client
  (``orchestrator.push.Registry``): GET the manifest, HEAD every blob in the target
  repository, mount the missing ones, PUT the manifest under two tags; into a repository
  of its own, kept across deploys as the service's is;
- start: ``python -S -m functions_framework`` on the deployed image's unpacked layers,
  spawned by hand until it answers 200 (``benchmarks.run.bare_start``, the Cloud Run
  cold-start reference); for Node.js the image's entrypoint (the framework's ``main.js``
  on the same node) by hand the same way (``benchmarks.coldstart.node_bare_start``).

Overhead = (total - (build + push + start)) / total, per deploy, median. Every wait is
bounded; the localcloud started here is stopped at the end.

Then the two deploy APIs side by side (``api: run`` and ``api: functions``): the same
no-dependency function as two services, deployed alternately (run, functions, run, ...),
each deploy changing the source, timed the same way (upload returned → first answer with
the new text); one warm-up deploy each (it creates the service, and the function's
``gcf-artifacts`` repository) is not counted. Target: the Functions API path's p50 within
20% of the Cloud Run path's.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from google.api_core import exceptions

from benchmarks import build as build_bench
from benchmarks import coldstart as cold_bench
from benchmarks import run as run_bench
from benchmarks.pubsub import log, run_guarded
from localcloud import testing
from localcloud.testing import zip_tree
from orchestrator import status
from orchestrator.clients import Clients, Environment
from orchestrator.config import Settings
from orchestrator.manifest import deployment_id
from orchestrator.runtimes import DEFAULT_RUNTIMES, NODEJS, version_env

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello"
P50_TARGET_S = 0.8  # the no-dependency function, upload returned → new content answered (issue 19)
FUNCTIONS_RATIO_TARGET = 1.2  # api: functions p50 / api: run p50, in the same run
OVERHEAD_TARGET = 0.25  # (total - irreducible work) / total
POLL = 0.02  # the URL poller's pause between two answers with the old content
REQUEST_TIMEOUT = 60.0
SETUP_TIMEOUT = 60.0
PRESTART_SETTLE_S = 0.5  # see direct_build_push
SPARE_SETTLE_S = 1.0  # see Bench.one
PROVISION_TIMEOUT = 600.0
PLAIN_SERVICE = "bench-plain"
PLAIN_MAIN = (
    "import functions_framework\n\n\n@functions_framework.http\ndef hello(request):\n"
    '    return "plain {marker}\\n"\n'
)
PLAIN_MANIFEST = (
    f"service: {PLAIN_SERVICE}\nentry_point: hello\nsignature_type: http\n"
    "allow_unauthenticated: true\n"
)
APIS = {
    "run": "bench-api-run",
    "functions": "bench-api-functions",
}
NODE_SERVICE = "bench-node"
NODE_INDEX = 'exports.hello = (req, res) => {{\n  res.send("node {marker}\\n");\n}};\n'
NODE_PACKAGE = '{"name": "bench-node", "version": "1.0.0", "main": "index.js", "private": true}\n'
NODE_MANIFEST = PLAIN_MANIFEST.replace(PLAIN_SERVICE, NODE_SERVICE)
NODE_RUNTIME = DEFAULT_RUNTIMES[NODEJS] or "nodejs22"  # what the orchestrator builds it with
FUNCTION_ENV = {"GOOGLE_FUNCTION_TARGET": "hello", "GOOGLE_FUNCTION_SIGNATURE_TYPE": "http"}
CASES = {
    "plain": "no-dependency HTTP function, source changed each deploy",
    "deps": "examples/hello (markupsafe), source-only change, dependency layer cached",
    "node": f"no-dependency Node.js HTTP function ({NODE_RUNTIME}), source changed each deploy",
}
# (label, from, to): from/to are (step, state) of the first such event, "upload" (0) or
# "answered" (the first answer with the new content).
SPANS = (
    ("upload → accepted (intake)", "upload", ("accepted", "succeeded")),
    ("accepted → build running", ("accepted", "succeeded"), ("build", "running")),
    ("build", ("build", "running"), ("build", "succeeded")),
    ("build → push running", ("build", "succeeded"), ("push", "running")),
    (
        "build succeeded → its image unpacked for Cloud Run",
        ("build", "succeeded"),
        "revision unpacked",
    ),
    ("push", ("push", "running"), ("push", "succeeded")),
    ("push → deploy running", ("push", "succeeded"), ("deploy", "running")),
    ("deploy", ("deploy", "running"), ("deploy", "succeeded")),
    ("deploy running → revision created", ("deploy", "running"), "revision created"),
    ("revision created → ready (image check, start)", "revision created", "revision ready"),
    ("revision created → instance spawned (image checked)", "revision created", "revision spawned"),
    ("instance spawned → ready (it listens)", "revision spawned", "revision ready"),
    ("revision ready → deploy succeeded", "revision ready", ("deploy", "succeeded")),
    ("deploy → bind_triggers running", ("deploy", "succeeded"), ("bind_triggers", "running")),
    ("bind_triggers", ("bind_triggers", "running"), ("bind_triggers", "succeeded")),
    ("bind_triggers → done", ("bind_triggers", "succeeded"), ("done", "succeeded")),
    ("revision ready → answered", "revision ready", "answered"),
    ("deploy succeeded → answered", ("deploy", "succeeded"), "answered"),
    ("done → answered", ("done", "succeeded"), "answered"),
)
SUB_SPANS = (
    "revision created → instance spawned (image checked)",
    "instance spawned → ready (it listens)",
)
HOPS = tuple(
    label
    for label, a, b in SPANS
    if isinstance(a, tuple) and isinstance(b, tuple) and a[0] != b[0] and b[1] == "running"
)


@dataclass(frozen=True)
class PipelineSettings:
    deploys: int = 10  # counted deploys per case
    warmup: int = 1  # deploys per case before them, not counted
    timeout: float = 180.0  # per deploy, and per direct build

    @classmethod
    def for_run(cls, quick: bool) -> PipelineSettings:
        return cls(deploys=3 if quick else 10)


@dataclass
class Deploy:
    """One deploy through the pipeline, and the same work done directly."""

    n: int
    deployment_id: str = ""
    upload_s: float = 0.0  # the upload call itself
    total_s: float | None = None  # upload returned → first answer with the new content
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (s, step, state)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)  # step → succeeded details
    old_answers: int = 0  # answers with the previous content while polling
    revision: dict[str, float] = field(default_factory=dict)  # created, ready (s after upload)
    build_s: float | None = None  # direct: create_build → result
    build_server_s: float | None = None  # direct: the build's start_time → finish_time
    push_s: float | None = None  # direct: manifest, HEADs, mounts, two manifest PUTs
    push_counts: dict[str, int] = field(default_factory=dict)
    start_s: float | None = None  # direct: functions-framework spawned → first 200
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.total_s is not None

    @property
    def work_s(self) -> float | None:
        parts = (self.build_s, self.push_s, self.start_s)
        return None if any(p is None for p in parts) else sum(parts)  # type: ignore[arg-type]

    @property
    def overhead_s(self) -> float | None:
        work = self.work_s
        return None if self.total_s is None or work is None else self.total_s - work

    @property
    def overhead(self) -> float | None:
        work = self.work_s
        if self.total_s is None or work is None or not self.total_s:
            return None
        return (self.total_s - work) / self.total_s

    def at(self, point: Any) -> float | None:
        if point == "upload":
            return 0.0
        if point == "answered":
            return self.total_s
        if isinstance(point, str):
            return self.revision.get(point.removeprefix("revision "))
        step, state = point
        return next((t for t, s, st in self.events if s == step and st == state), None)

    def spans(self) -> dict[str, float]:
        out = {}
        for label, start, end in SPANS:
            a, b = self.at(start), self.at(end)
            if a is not None and b is not None:
                out[label] = b - a
        return out


@dataclass
class Case:
    key: str
    service: str = ""
    url: str = ""
    warmup: list[Deploy] = field(default_factory=list)
    deploys: list[Deploy] = field(default_factory=list)

    def ok(self) -> list[Deploy]:
        return [d for d in self.deploys if d.ok]

    @property
    def complete(self) -> bool:
        return bool(self.deploys) and all(d.ok and d.work_s is not None for d in self.deploys)

    @property
    def complete_total(self) -> bool:
        """Every deploy answered (the API comparison does no direct work)."""
        return bool(self.deploys) and all(d.ok for d in self.deploys)

    def values(self, attr: str) -> list[float]:
        return [v for d in self.ok() if (v := getattr(d, attr)) is not None]

    def p(self, attr: str, q: float) -> float | None:
        return percentile(self.values(attr), q)

    def span(self, label: str, q: float = 0.5) -> float | None:
        return percentile([s[label] for d in self.ok() if label in (s := d.spans())], q)

    def hops(self) -> float | None:
        sums = [sum(s.get(h, 0.0) for h in HOPS) for d in self.ok() if (s := d.spans())]
        return percentile(sums, 0.5)


@dataclass
class PipelineResult:
    cases: dict[str, Case] = field(default_factory=lambda: {k: Case(k) for k in CASES})
    apis: dict[str, Case] = field(default_factory=lambda: {k: Case(k) for k in APIS})
    provision_s: float | None = None
    errors: list[str] = field(default_factory=list)
    other_cores: float | None = None
    seconds: float = 0.0


def percentile(values: list[float], q: float) -> float | None:
    """Nearest rank (p95 of 10 samples is the largest); the median for q = 0.5."""
    if not values:
        return None
    if q == 0.5:
        return statistics.median(values)
    ordered = sorted(values)
    return ordered[min(max(math.ceil(q * len(ordered)) - 1, 0), len(ordered) - 1)]


def event_seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def log_lines(path: Path, digest: str) -> dict[str, float]:
    """When localcloud logged unpacking ``digest`` and starting its first instance (its
    log's asctime: local time, milliseconds)."""
    found: dict[str, float] = {}
    if not digest:
        return found
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return found
    for line in text.splitlines():
        if digest not in line:
            continue
        key = (
            "unpacked"
            if " unpacked " in line
            else "spawned"
            if " started instance pid " in line
            else ""
        )
        if key and key not in found:
            with contextlib.suppress(ValueError):
                stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                found[key] = stamp.timestamp()
    return found


# -- sources -----------------------------------------------------------------------------
def plain_files(marker: str) -> dict[str, str]:
    return {"main.py": PLAIN_MAIN.format(marker=marker), "function.yaml": PLAIN_MANIFEST}


def api_files(api: str) -> Any:
    """The no-dependency function as the service deployed through ``api``."""
    manifest = PLAIN_MANIFEST.replace(PLAIN_SERVICE, APIS[api])
    if api == "functions":
        manifest += "api: functions\nruntime: python311\n"
    return lambda marker: {"main.py": PLAIN_MAIN.format(marker=marker), "function.yaml": manifest}


def node_files(marker: str) -> dict[str, str]:
    return {
        "index.js": NODE_INDEX.format(marker=marker),
        "package.json": NODE_PACKAGE,
        "function.yaml": NODE_MANIFEST,
    }


def deps_files(marker: str) -> dict[str, str]:
    main = (HELLO / "main.py").read_text()
    changed = main.replace('f"Hello, ', f'f"Hello {marker}, ')
    if changed == main:
        raise RuntimeError("examples/hello/main.py no longer says 'Hello, ': update the bench")
    return {
        "main.py": changed,
        "function.yaml": (HELLO / "function.yaml").read_text(),
        "requirements.txt": (HELLO / "requirements.txt").read_text(),
    }


# -- the run -----------------------------------------------------------------------------
class Poller(threading.Thread):
    """GETs ``url`` until an answer carries ``marker``; when it came (perf_counter)."""

    def __init__(self, url: str, marker: str, deadline: float) -> None:
        super().__init__(daemon=True, name=f"poll {url}")
        self.url, self.marker, self.deadline = url, marker, deadline
        self.answered: float | None = None
        self.old = 0
        self.last = ""
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set() and time.monotonic() < self.deadline:
            try:
                code, body = run_bench.get(self.url, REQUEST_TIMEOUT)
            except OSError as exc:
                code, body = 0, str(exc)
            if code == 200 and self.marker in body:
                self.answered = time.perf_counter()
                return
            self.old += 1
            self.last = f"{code} {body[:120]!r}"
            self.halt.wait(POLL)


class Bench:
    def __init__(self, s: PipelineSettings, result: PipelineResult, scratch: Path) -> None:
        self.s, self.result, self.scratch = s, result, scratch
        self.data_dir = scratch / "data"

    def run(self) -> None:
        log("pipeline: starting localcloud on a fresh data dir ...")
        instance = testing.start(self.data_dir)
        try:
            # The storage client reads STORAGE_EMULATOR_HOST from the environment itself;
            # ORCH_CONFIG points nowhere, so no user config file can change the names.
            env = {**instance.env, "ORCH_CONFIG": str(self.scratch / "no-config.json")}
            with testing.patched_environ(env):
                self.clients = Clients(Environment.from_env(env))
                self.settings = Settings.from_env(env)
                try:
                    self.provision()
                    self.cases_run()
                    self.apis_run()
                finally:
                    run_bench.close(self.clients)
        finally:
            instance.stop()

    def provision(self) -> None:
        from orch.provision import provision

        log("pipeline: provisioning the pipeline (builds the orchestrator's image) ...")
        t0 = time.perf_counter()
        provision(self.settings, self.clients, log=lambda _: None)
        self.result.provision_s = time.perf_counter() - t0
        log(f"pipeline: provisioned in {self.result.provision_s:.1f} s")
        s = self.settings
        self.subscription = f"projects/{s.project}/subscriptions/bench-{uuid.uuid4().hex[:8]}"
        self.clients.subscriber.create_subscription(
            request={
                "name": self.subscription,
                "topic": s.topic_path(s.status_topic),
                "enable_message_ordering": True,
            },
            timeout=SETUP_TIMEOUT,
        )
        self.sources = self.clients.storage.bucket(s.sources_bucket)
        self.direct = self.clients.storage.create_bucket(
            f"bench-direct-{uuid.uuid4().hex[:8]}", timeout=SETUP_TIMEOUT
        )

    def cases_run(self) -> None:
        for key, files in (("plain", plain_files), ("deps", deps_files), ("node", node_files)):
            case = self.result.cases[key]
            case.service = files("x")["function.yaml"].split("service:", 1)[1].split()[0]
            for n in range(self.s.warmup + self.s.deploys):
                counted = n >= self.s.warmup
                d = Deploy(n)
                (case.deploys if counted else case.warmup).append(d)
                try:
                    self.one(case, d, files, counted)
                except Exception as exc:
                    d.error = d.error or f"{type(exc).__name__}: {exc}"
                line = f"pipeline: {key} #{n}{'' if counted else ' (warm-up)'}: "
                if d.ok:
                    work = "" if d.work_s is None else f", work {d.work_s:.2f} s"
                    line += f"{d.total_s:.2f} s{work}"
                else:
                    line += f"FAILED: {d.error}"
                log(line)

    def apis_run(self) -> None:
        """Both deploy APIs, alternately, the same function: only the path differs."""
        for n in range(self.s.warmup + self.s.deploys):
            counted = n >= self.s.warmup
            for api in APIS:
                case = self.result.apis[api]
                case.service = APIS[api]
                d = Deploy(n)
                (case.deploys if counted else case.warmup).append(d)
                try:
                    marker = f"v{n:03d}-{uuid.uuid4().hex[:6]}"
                    self.deploy(case, d, api_files(api)(marker), marker)
                except Exception as exc:
                    d.error = d.error or f"{type(exc).__name__}: {exc}"
                total = "FAILED: " + d.error if not d.ok else f"{d.total_s:.2f} s"
                log(f"pipeline: api {api} #{n}{'' if counted else ' (warm-up)'}: {total}")

    def one(self, case: Case, d: Deploy, files: Any, counted: bool) -> None:
        """One deploy through the pipeline; when counted, the direct work too (the build
        and push before the deploy on odd deploys, after it on even ones)."""
        marker = f"v{d.n:03d}-p{uuid.uuid4().hex[:6]}"
        direct_marker = marker[:-7] + "-d" + marker[-6:]
        first = counted and d.n % 2 == 1
        if first:
            self.direct_build_push(case, d, files(direct_marker))
        self.deploy(case, d, files(marker), marker)
        if counted:
            # Once the new revision's instance has started, Cloud Run starts a spare of its
            # base for the next deploy (localcloud/run/prestart.py): its start (the
            # framework's imports, ~0.2 s of CPU) is let end before the direct work is
            # timed, or it would slow the reference down.
            time.sleep(SPARE_SETTLE_S)
        if counted and not first:
            self.direct_build_push(case, d, files(direct_marker))
        if counted and d.ok:
            digest = d.details.get("push", {}).get("digest", "")
            image = run_bench.load_image(self.data_dir, digest)
            start = cold_bench.node_bare_start if case.key == "node" else run_bench.bare_start
            d.start_s = start(image, self.scratch / "bare.log", self.s.timeout)

    def deploy(self, case: Case, d: Deploy, files: dict[str, str], marker: str) -> None:
        data = zip_tree(files)
        blob = self.sources.blob(f"{case.service}.zip")
        t0 = time.perf_counter()
        blob.upload_from_string(data, content_type="application/zip", timeout=SETUP_TIMEOUT)
        up, wall = time.perf_counter(), time.time()
        d.upload_s = up - t0
        deadline = time.monotonic() + self.s.timeout
        poller = Poller(case.url, marker, deadline) if case.url else None
        if poller is not None:
            poller.start()
        try:
            d.deployment_id = deployment_id(self.sources.name, blob.name, blob.generation)
            done = self.follow(d, wall, deadline)
            if done is None:
                return
            url = done.details.get("url", "")
            if poller is None:  # the first deploy: the URL is known now
                if not url:
                    d.error = "the done event has no url"
                    return
                case.url = url
                poller = Poller(url, marker, deadline)
                poller.start()
            poller.join(max(deadline - time.monotonic(), 0))
            d.old_answers = poller.old
            if poller.answered is None:
                d.error = f"the service never answered the new content (last: {poller.last})"
                return
            d.total_s = poller.answered - up
            self.revision_times(case, d, wall)
        finally:
            if poller is not None:
                poller.halt.set()

    def revision_times(self, case: Case, d: Deploy, wall: float) -> None:
        """When Cloud Run created the new revision and when it became Ready (its startup
        probe answered), from the revision's create_time and Ready condition."""
        name = d.details.get("deploy", {}).get("revision", "")
        if not name:
            return
        revision = self.clients.run_revisions.get_revision(
            name=f"{self.settings.service_path(case.service)}/revisions/{name}",
            timeout=SETUP_TIMEOUT,
        )
        d.revision["created"] = revision.create_time.timestamp() - wall
        ready = next((c for c in revision.conditions if c.type_ == "Ready"), None)
        if ready is not None and ready.last_transition_time:
            d.revision["ready"] = ready.last_transition_time.timestamp() - wall
        digest = d.details.get("push", {}).get("digest", "")
        if not digest:  # api: functions: push is skipped, the image is the build's
            return
        for key, line in log_lines(self.data_dir / "logs" / "localcloud.log", digest).items():
            d.revision[key] = line - wall

    def follow(self, d: Deploy, wall: float, deadline: float) -> status.StatusEvent | None:
        """Pull this deployment's status events until ``done``; the done event (succeeded),
        or None with ``d.error`` set."""
        subscriber = self.clients.subscriber
        while time.monotonic() < deadline:
            try:
                response = subscriber.pull(
                    subscription=self.subscription, max_messages=50, timeout=10
                )
            except exceptions.DeadlineExceeded:
                continue
            if response.received_messages:
                subscriber.acknowledge(
                    subscription=self.subscription,
                    ack_ids=[m.ack_id for m in response.received_messages],
                )
            for m in response.received_messages:
                event = status.from_message(m.message.data, m.message.attributes)
                if event.deployment_id != d.deployment_id:
                    continue
                d.events.append((event_seconds(event.time) - wall, event.step, event.state))
                if event.state == "succeeded":
                    d.details.setdefault(event.step, dict(event.details))
                if event.state == "failed" and not d.error:
                    d.error = f"{event.step} failed: {event.error_code}: {event.message}"
                if event.step == "done" or (event.step == "accepted" and event.state == "failed"):
                    return event if event.state == "succeeded" else None
        d.error = d.error or f"no done event within {self.s.timeout:g}s"
        return None

    def direct_build_push(self, case: Case, d: Deploy, files: dict[str, str]) -> None:
        from orchestrator import push
        from orchestrator.push import Registry, split_image

        s = self.settings
        blob = self.direct.blob(f"{case.service}-{d.n}.zip")
        blob.upload_from_string(zip_tree(files), timeout=SETUP_TIMEOUT)
        image = f"{s.staging_image('bench-direct-' + case.service)}:n{d.n}"
        # The orchestrator names a Node.js source's runtime and version (nodejs22).
        env = {**FUNCTION_ENV, **version_env(NODE_RUNTIME)} if case.key == "node" else FUNCTION_ENV
        build = testing.pack_build((self.direct.name, blob.name, blob.generation), image, env)
        t0 = time.perf_counter()
        operation = self.clients.cloud_build.create_build(
            project_id=s.project, build=build, timeout=SETUP_TIMEOUT
        )
        built = operation.result(timeout=self.s.timeout, polling=build_bench.POLLING)
        d.build_s = time.perf_counter() - t0
        d.build_server_s = build_bench.seconds(built.start_time, built.finish_time)
        # Cloud Run starts a sandbox of every image pushed, ahead of its revision
        # (localcloud/run/prestart.py); this one is never deployed: its start (the
        # framework's imports, ~0.2 s of CPU) is let end before the push and the bare
        # start are timed, or it would slow the reference down.
        time.sleep(PRESTART_SETTLE_S)
        pinned = f"{image.rsplit(':', 1)[0]}@{built.results.images[0].digest}"

        host, source, digest = split_image(pinned)
        target = s.image("bench-direct-" + case.service).partition("/")[2]
        registry = Registry(SimpleNamespace(clients=self.clients), host)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        counts = push.publish(registry, source, digest, target, [f"n{d.n}", "latest"])
        d.push_s = time.perf_counter() - t0
        d.push_counts = counts


def run(s: PipelineSettings) -> PipelineResult:
    """Errors are kept, not raised: the rows without figures fail."""
    result = PipelineResult()
    return run_guarded("pipeline", result, lambda scratch: Bench(s, result, scratch).run())


# -- reporting ---------------------------------------------------------------------------
def rows(r: PipelineResult) -> list[tuple[str, str, float | None, float | None, str, bool | None]]:
    """(scenario, unit, pipeline, directly, target, ok): per case the total p50/p95 against
    the irreducible work, the overhead (judged), and each step against its direct work."""
    out: list[tuple[str, str, float | None, float | None, str, bool | None]] = []
    for key in CASES:
        case = r.cases[key]
        complete = case.complete
        p50 = case.p("total_s", 0.5)
        target = f"< {P50_TARGET_S:g} s" if key == "plain" else ""  # issue 19
        ok: bool | None = None
        if not complete:
            ok = False
        elif target:
            ok = p50 is not None and p50 < P50_TARGET_S
        out.append((f"pipeline {key} total p50", "s", p50, case.p("work_s", 0.5), target, ok))
        out.append(
            (
                f"pipeline {key} total p95",
                "s",
                case.p("total_s", 0.95),
                case.p("work_s", 0.95),
                "",
                None if complete else False,
            )
        )
        overhead = case.p("overhead", 0.5)
        out.append(
            (
                f"pipeline {key} overhead p50",
                "%",
                None if overhead is None else overhead * 100,
                None,
                f"< {OVERHEAD_TARGET:.0%}",
                complete and overhead is not None and overhead < OVERHEAD_TARGET,
            )
        )
        for label, step, attr in (
            ("build step", "build", "build_s"),
            ("push step", "push", "push_s"),
            ("deploy step", "deploy", "start_s"),
        ):
            out.append(
                (f"pipeline {key} {label} p50", "s", case.span(step), case.p(attr, 0.5), "", None)
            )
        out.append(
            (
                f"pipeline {key} intake + hops p50",
                "s",
                _add(case.span(SPANS[0][0]), case.hops()),
                None,
                "",
                None,
            )
        )
    out.extend(api_rows(r))
    return out


def api_rows(
    r: PipelineResult,
) -> list[tuple[str, str, float | None, float | None, str, bool | None]]:
    """api: functions against api: run: p50 and p95 totals, and the judged ratio."""
    run, fn = r.apis["run"], r.apis["functions"]
    complete = run.complete_total and fn.complete_total
    out: list[tuple[str, str, float | None, float | None, str, bool | None]] = []
    for q, label in ((0.5, "p50"), (0.95, "p95")):
        out.append(
            (
                f"pipeline api: functions total {label} (ref: api: run)",
                "s",
                fn.p("total_s", q),
                run.p("total_s", q),
                "",
                None if complete else False,
            )
        )
    ratio = _ratio(fn.p("total_s", 0.5), run.p("total_s", 0.5))
    out.append(
        (
            "pipeline api: functions / api: run, total p50",
            "x",
            ratio,
            None,
            f"<= {FUNCTIONS_RATIO_TARGET:g}",
            complete and ratio is not None and ratio <= FUNCTIONS_RATIO_TARGET,
        )
    )
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def passed(r: PipelineResult) -> bool:
    apis = all(c.complete_total for c in r.apis.values())
    ratio = _ratio(r.apis["functions"].p("total_s", 0.5), r.apis["run"].p("total_s", 0.5))
    return (
        not r.errors
        and all(c.complete for c in r.cases.values())
        and apis
        and ratio is not None
        and ratio <= FUNCTIONS_RATIO_TARGET
    )


def notes(s: PipelineSettings, r: PipelineResult) -> list[str]:
    out = [
        f"pipeline: {s.deploys} counted deploys per case after {s.warmup} warm-up, one at a "
        "time; total = upload returned → first answer with the new text (URL polled every "
        f"{POLL * 1000:g} ms from the upload's return); steps from the status events' time "
        "stamps (running → succeeded); reference = the same deploy's work done directly: "
        "Cloud Build (create_build → result), the push step's registry calls, "
        "functions-framework spawned by hand → first 200; overhead = (total - work) / total "
        "per deploy, median; p95 is nearest-rank",
    ]
    if r.provision_s is not None:
        out.append(f"pipeline: provisioned in {r.provision_s:.1f} s (fresh localcloud)")
    for key, what in CASES.items():
        case = r.cases[key]
        ok = case.ok()
        out.append(
            f"pipeline {key}: {what}: {len(ok)}/{len(case.deploys)} deploys ok; totals (s) "
            + ", ".join(f"{d.total_s:.2f}" for d in ok)
            + "; warm-up "
            + ", ".join("-" if d.total_s is None else f"{d.total_s:.2f}" for d in case.warmup)
        )
        spans = [(label, case.span(label)) for label, *_ in SPANS]
        out.append(
            f"pipeline {key} where the time goes (p50, s): "
            + "; ".join(f"{label} {v:.3f}" for label, v in spans if v is not None)
        )
        build_own = percentile(
            [v for d in ok if (v := d.details.get("build", {}).get("build_seconds")) is not None],
            0.5,
        )
        server = case.p("build_server_s", 0.5)
        mounted = [d.details.get("push", {}).get("mounted") for d in ok]
        direct_counts = [d.push_counts for d in ok if d.push_counts]
        out.append(
            f"pipeline {key} directly (p50, s): build {case.p('build_s', 0.5) or 0:.3f} "
            f"(start→finish {server or 0:.3f}; the pipeline's build start→finish "
            f"{build_own or 0:.3f}), push {case.p('push_s', 0.5) or 0:.3f} "
            f"(blobs {direct_counts[0] if direct_counts else '-'}; the push step mounted "
            f"{mounted[0] if mounted else '-'}), start {case.p('start_s', 0.5) or 0:.3f}; "
            f"answers with the old text while polling: {sum(d.old_answers for d in ok)}"
        )
        for d in case.warmup + case.deploys:
            if d.error:
                out.append(f"pipeline {key} #{d.n}: ERROR {d.error}")
    for api, case in r.apis.items():
        ok = case.ok()
        out.append(
            f"pipeline api: {api} ({case.service}, alternating with the other API): "
            f"{len(ok)}/{len(case.deploys)} deploys ok; totals (s) "
            + ", ".join(f"{d.total_s:.2f}" for d in ok)
            + "; warm-up "
            + ", ".join("-" if d.total_s is None else f"{d.total_s:.2f}" for d in case.warmup)
            + "; steps p50 (s): "
            + "; ".join(
                f"{label} {v:.3f}"
                for label in ("build", "push", "deploy", "bind_triggers", "bind_triggers → done")
                if (v := case.span(label)) is not None
            )
        )
        for d in case.warmup + case.deploys:
            if d.error:
                out.append(f"pipeline api: {api} #{d.n}: ERROR {d.error}")
    out.extend(f"pipeline: ERROR {err}" for err in r.errors)
    if r.other_cores is not None and r.other_cores > 0.25:
        out.append(
            f"pipeline: WARNING: other processes used {r.other_cores:.2f} cores meanwhile; "
            "the figures are skewed by other work on this machine"
        )
    out.append(f"pipeline: {r.seconds:.1f} s in all")
    return out


def markdown(s: PipelineSettings, r: PipelineResult) -> str:
    plain, deps, node = r.cases["plain"], r.cases["deps"], r.cases["node"]

    def sec(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} s"

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.0f}%"

    lines = [
        "| Deploy pipeline: zip uploaded → service answers the new source | p50 | p95 "
        "| work done directly, p50 (build + push + start) | overhead, p50 | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for case, label, target in (
        (
            plain,
            "No-dependency HTTP function, source changed",
            f"p50 < {P50_TARGET_S:g} s, overhead < 25%",
        ),
        (deps, "`examples/hello` (markupsafe), source-only change", "overhead < 25%"),
        (
            node,
            f"No-dependency Node.js function ({NODE_RUNTIME}), source changed",
            "overhead < 25%",
        ),
    ):
        lines.append(
            f"| {label} | {sec(case.p('total_s', 0.5))} | {sec(case.p('total_s', 0.95))} "
            f"| {sec(case.p('work_s', 0.5))} | {pct(case.p('overhead', 0.5))} | {target} |"
        )
    lines += [
        "",
        "| Where the time goes (p50, from the status events) | no-dependency function "
        "| `examples/hello` | Node.js, no dependency | done directly (no-dep / hello / Node.js) |",
        "|---|---:|---:|---:|---:|",
    ]
    direct = {"build": "build_s", "push": "push_s", "deploy": "start_s"}
    what = {
        "build": "Cloud Build",
        "push": "registry calls",
        "deploy": "process start",
    }
    for label, *_ in SPANS:
        if label in ("done → answered", "deploy succeeded → answered"):
            continue  # the new revision answers before the deploy step's event: see notes
        ref = "-"
        if label in direct:
            ref = (
                f"{what[label]} {sec(plain.p(direct[label], 0.5))} / "
                f"{sec(deps.p(direct[label], 0.5))} / {sec(node.p(direct[label], 0.5))}"
            )
        if label in direct or label == "bind_triggers":
            name = f"`{label}` step, running → succeeded"
        elif label in SUB_SPANS:
            name = f"… … of which {label}"
        elif label.startswith(("deploy running", "revision ")) and "answered" not in label:
            name = f"… of which {label}"
        else:
            name = label
        lines.append(
            f"| {name} | {sec(plain.span(label))} | {sec(deps.span(label))} "
            f"| {sec(node.span(label))} | {ref} |"
        )
    lines.append(
        f"| intake + the workflow's hops between steps (sum) "
        f"| {sec(_add(plain.span(SPANS[0][0]), plain.hops()))} "
        f"| {sec(_add(deps.span(SPANS[0][0]), deps.hops()))} "
        f"| {sec(_add(node.span(SPANS[0][0]), node.hops()))} | - |"
    )
    lines += ["", *(where_overhead(case) for case in (plain, deps, node) if case.ok())]
    run, fn = r.apis["run"], r.apis["functions"]
    lines += [
        "",
        "| Deploy API, the no-dependency function, deployed alternately | p50 | p95 "
        "| `build` step p50 | `deploy` step p50 | target |",
        "|---|---:|---:|---:|---:|---|",
        f"| `api: run` (Cloud Run Admin API) | {sec(run.p('total_s', 0.5))} "
        f"| {sec(run.p('total_s', 0.95))} | {sec(run.span('build'))} "
        f"| {sec(run.span('deploy'))} | reference |",
        f"| `api: functions` (Cloud Functions API v2) | {sec(fn.p('total_s', 0.5))} "
        f"| {sec(fn.p('total_s', 0.95))} | {sec(fn.span('build'))} "
        f"| {sec(fn.span('deploy'))} | p50 within 20% of `api: run` |",
    ]
    lines += [
        "",
        f"{s.deploys} deploys of each, one at a time, after {s.warmup} warm-up deploy each "
        "(it creates the service; for `hello`, installs the dependency), on a fresh "
        "localcloud with the pipeline provisioned by `orch.provision`. Total = the "
        "upload call's return → the first answer of the service's URL with the new text "
        f"(polled every {POLL * 1000:g} ms). The work is done directly in the same run for "
        "each deploy: the same source submitted to Cloud Build, the push step's registry "
        "calls (blob mounts, two manifest PUTs), and functions-framework spawned by hand on "
        "the deployed image until it answers (for Node.js, the image's entrypoint, the "
        "framework's `main.js`, on the same node); overhead = (total - work) / total, per "
        "deploy.",
    ]
    return "\n".join(lines)


def where_overhead(case: Case) -> str:
    """One sentence: the overhead in seconds and the parts of it the spans show (p50s)."""

    def diff(a: float | None, b: float | None) -> str:
        return "-" if a is None or b is None else f"{a - b:+.2f} s"

    name = {
        "plain": "no-dependency function",
        "deps": "`examples/hello`",
        "node": "Node.js function",
    }[case.key]
    steps = _add(case.span("build"), case.span("push"))
    direct = _add(case.p("build_s", 0.5), case.p("push_s", 0.5))
    return (
        f"Overhead of the {name}, p50 {case.p('overhead_s', 0.5) or 0:.2f} s: the new "
        f"revision's image checked and its instance spawned {case.span(SUB_SPANS[0]) or 0:.2f} s "
        "(the image is unpacked from its push on, ahead of the revision), intake and the "
        f"workflow's hops {_add(case.span(SPANS[0][0]), case.hops()) or 0:.2f} s, the build "
        f"and push steps beyond the same work done directly {diff(steps, direct)}, the "
        f"instance's start beyond the bare start "
        f"{diff(case.span(SUB_SPANS[1]), case.p('start_s', 0.5))} (p50s: they need not "
        "add up). The deploy step's last "
        f"{case.span('revision ready → deploy succeeded') or 0:.2f} s (after the revision is "
        "Ready: waiting on the operation, the IAM policy, its record) delay `done`, not "
        "the answer."
    )


def to_json(s: PipelineSettings, r: PipelineResult) -> dict[str, Any]:
    cases = {}
    for key, case in r.cases.items():
        cases[key] = {
            "what": CASES[key],
            "service": case.service,
            "url": case.url,
            "total_p50_s": case.p("total_s", 0.5),
            "total_p95_s": case.p("total_s", 0.95),
            "work_p50_s": case.p("work_s", 0.5),
            "overhead_p50": case.p("overhead", 0.5),
            "spans_p50_s": {label: case.span(label) for label, *_ in SPANS},
            "deploys": [asdict(d) | {"spans": d.spans()} for d in case.deploys],
            "warmup": [asdict(d) | {"spans": d.spans()} for d in case.warmup],
        }
    apis = {
        api: {
            "service": case.service,
            "total_p50_s": case.p("total_s", 0.5),
            "total_p95_s": case.p("total_s", 0.95),
            "spans_p50_s": {label: case.span(label) for label, *_ in SPANS},
            "deploys": [asdict(d) | {"spans": d.spans()} for d in case.deploys],
            "warmup": [asdict(d) | {"spans": d.spans()} for d in case.warmup],
        }
        for api, case in r.apis.items()
    }
    return {
        "settings": asdict(s),
        "provision_s": r.provision_s,
        "cases": cases,
        "apis": apis,
        "errors": r.errors,
        "other_cores": r.other_cores,
        "seconds": r.seconds,
    }

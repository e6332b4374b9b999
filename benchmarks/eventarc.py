"""Eventarc benchmarks: event latency to a warm Cloud Run function, next to Pub/Sub push.

A tiny CloudEvent function (``record``) is built by localcloud's Cloud Build, deployed
private through the official Cloud Run client (the trigger's service account holds
``roles/run.invoker``) on a fresh localcloud whose instances do not idle out, and wired
to two Eventarc triggers: a bucket's ``object.v1.finalized`` events and a topic's
``messagePublished`` events. The function POSTs the event's key and the moment it was
entered (``time.perf_counter()``: CLOCK_MONOTONIC, the same clock in the sandbox as in
this process) to a recorder, an HTTP/1.1 server in this process, which notes the moment
each POST arrives. Every event is sent alone (the next one after the last arrived and a
short pause), so the figures are one event's latency on a warm, idle system:

- storage: ``blob.upload_from_string()`` returned → the function's POST arrived;
- pubsub: ``publisher.publish()`` called → the function's POST arrived;
- push (the reference): ``publisher.publish()`` called → a plain push subscription's POST
  to the recorder arrived (no Eventarc, no Cloud Run, no CloudEvent), in the same run.

Publishes are timed from the call, not from ``.result()`` returning: localcloud answers the
publish and pushes at the same moment, so a push usually arrives before the client has seen
its answer and "returned → received" is noise around zero (it is reported too). An upload is
timed from its return: the notification is only sent once the object is finalized.

The raw figures include the function's own POST to the recorder (nothing is subtracted).
To say where the time goes, the same run also measures the legs on their own: upload
returned → the Cloud Storage notification pushed (a push subscription on the notifications
topic, no Eventarc; the notification is committed before the upload is answered); a
CloudEvent POSTed straight to the instance's port (no Pub/Sub, no ingress) → the
function's POST arrived; and the ID token each Eventarc push mints (and the ingress
verifies), timed in this process with localcloud's issuer.
The scenarios run interleaved in rounds, so a drift of the machine meets them all alike.

Every wait is bounded; the localcloud started here is stopped at the end.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from google.cloud import eventarc_v1, pubsub_v1, run_v2
from google.cloud.devtools import cloudbuild_v1
from google.iam.v1 import policy_pb2

from benchmarks import build
from benchmarks.pubsub import LATENCY_BATCH, cpu_snapshot, log, other_cores
from localcloud import testing
from localcloud.core.oidc import Issuer
from orchestrator.clients import Clients, Environment

PROJECT = "local-project"  # localcloud's own project: its storage notifications topic lives here
REGION = "us-central1"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
TRIGGER_SA = f"eventarc-bench@{PROJECT}.iam.gserviceaccount.com"
TARGET = "record"
MAIN = '''\
"""POST the event's key and when the function was entered to RECORD_URL."""

import base64
import http.client
import json
import os
import time
from urllib.parse import urlsplit

import functions_framework

URL = urlsplit(os.environ["RECORD_URL"])


@functions_framework.cloud_event
def record(event):
    entered = time.perf_counter()
    data = event.data
    if isinstance(data, dict) and "message" in data:  # MessagePublishedData
        key = base64.b64decode(data["message"]["data"]).decode()
    else:  # StorageObjectData
        key = data["name"]
    body = json.dumps({"key": key, "entered": entered}).encode()
    conn = http.client.HTTPConnection(URL.hostname, URL.port, timeout=10)
    try:
        conn.request("POST", "/fn", body, {"Content-Type": "application/json"})
        conn.getresponse().read()
    finally:
        conn.close()
'''
IDLE_MS = 3_600_000  # LOCALCLOUD_RUN_IDLE_MS: the instance stays warm for the whole run
TARGET_P50_MS = 50.0  # storage: upload returned → function invoked
WARMUP_TIMEOUT = 60.0  # the first event also starts the instance
MAX_LOST_IN_A_ROW = 3  # a scenario that loses this many events in a row is abandoned

# Scenario keys, in the order they are reported; each: (what, the reference it is shown with).
SCENARIOS = {
    "storage": "upload returned → function invoked (Eventarc storage trigger)",
    "pubsub": "publish() called → function invoked (Eventarc Pub/Sub trigger)",
    "push": "publish() called → push received (plain push subscription, the reference)",
    "notification": "upload returned → storage notification pushed (no Eventarc)",
    "direct": "CloudEvent POSTed to the instance's port → function's POST received",
}
# Timed from publish() called: a push can arrive before the client sees publish() return
# (the server answers and pushes at once), so "returned → received" is noise around 0 ms.
PUBLISHES = ("pubsub", "push")


@dataclass(frozen=True)
class EventSettings:
    uploads: int = 50  # per upload scenario (storage, notification)
    publishes: int = 100  # per publish scenario (pubsub, push); direct: half as many
    rounds: int = 5  # the scenarios interleave in this many rounds
    pause: float = 0.02  # s between one event's arrival and the next event
    timeout: float = 5.0  # s an event may take before it counts as lost
    setup_timeout: float = 180.0  # the build, the deploy

    @classmethod
    def for_run(cls, quick: bool) -> EventSettings:
        return cls(uploads=20, publishes=40, rounds=2) if quick else cls()

    def count(self, key: str) -> int:
        if key in ("pubsub", "push"):
            return self.publishes
        return self.publishes // 2 if key == "direct" else self.uploads


@dataclass
class Series:
    """One scenario: the latency of each event that arrived (ms), in the order sent."""

    key: str
    expected: int = 0
    from_call: bool = False  # publishes: timed from publish() called, uploads from returned
    latencies_ms: list[float] = field(default_factory=list)
    entered_ms: list[float] = field(default_factory=list)  # the same origin → function entered
    call_ms: list[float] = field(default_factory=list)  # the upload / publish call itself
    since_return_ms: list[float] = field(default_factory=list)  # publish returned → arrival
    lost: int = 0
    lost_in_a_row: int = 0
    abandoned: str | None = None

    @property
    def received(self) -> int:
        return len(self.latencies_ms)

    @property
    def complete(self) -> bool:
        return self.expected > 0 and self.received == self.expected

    def p(self, q: float, values: list[float] | None = None) -> float | None:
        """Nearest-rank percentile (ms), None without samples."""
        ordered = sorted(self.latencies_ms if values is None else values)
        if not ordered:
            return None
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


@dataclass
class EventResult:
    series: dict[str, Series] = field(default_factory=dict)
    build_s: float | None = None
    deploy_s: float | None = None
    warmup_s: dict[str, float] = field(default_factory=dict)  # first event of each path
    token_mint_ms: float | None = None
    token_verify_ms: float | None = None
    errors: list[str] = field(default_factory=list)
    other_cores: float | None = None
    seconds: float = 0.0


# -- the recorder ------------------------------------------------------------------------
@dataclass
class Arrival:
    at: float  # perf_counter when the POST arrived
    entered: float | None  # perf_counter when the function was entered (function POSTs)


class Recorder:
    """HTTP/1.1 on loopback: the function's POSTs (``/fn``) and plain pushes (``/push``),
    each keyed by the event's key; the first arrival of a key counts."""

    def __init__(self) -> None:
        self.arrivals: dict[str, Arrival] = {}
        self.errors: list[str] = []
        self.cond = threading.Condition()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a push endpoint would have it

            def do_POST(self) -> None:
                at = time.perf_counter()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()
                recorder.record(self.path, body, at)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def record(self, path: str, body: bytes, at: float) -> None:
        try:
            data = json.loads(body)
            if path == "/fn":
                key, entered = data["key"], float(data["entered"])
            else:  # a push envelope: a storage event's key is its object, else the data
                message = data["message"]
                attributes = message.get("attributes") or {}
                key = attributes.get("objectId") or base64.b64decode(message["data"]).decode()
                entered = None
        except (ValueError, KeyError, TypeError) as exc:
            with self.cond:
                self.errors.append(f"{path}: {type(exc).__name__}: {exc}: {body[:200]!r}")
            return
        with self.cond:
            if key not in self.arrivals:
                self.arrivals[key] = Arrival(at, entered)
                self.cond.notify_all()

    def wait(self, key: str, timeout: float) -> Arrival | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while key not in self.arrivals:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.arrivals[key]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the run -------------------------------------------------------------------------------
def instance_port(log_uri: str) -> int:
    """The port of the revision's latest instance, from the revision's log."""
    ports = [
        int(line.split("port ", 1)[1].split(")", 1)[0])
        for line in Path(log_uri).read_text(errors="replace").splitlines()
        if line.startswith("[localcloud] starting (")
    ]
    if not ports:
        raise RuntimeError(f"no instance start in {log_uri}")
    return ports[-1]


def token_costs(n: int = 50) -> tuple[float, float]:
    """(mint, verify) of one ID token with localcloud's issuer, ms (median): what each
    Eventarc push does on top of a plain push, and what the ingress does on each request."""
    with tempfile.TemporaryDirectory(prefix="bench-oidc-") as keys:
        issuer = Issuer(Path(keys), "http://127.0.0.1:1")
        mints, verifies = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            token = issuer.mint_id_token("http://127.0.0.1:8100", TRIGGER_SA)
            t1 = time.perf_counter()
            issuer.verify(token)
            t2 = time.perf_counter()
            mints.append((t1 - t0) * 1000)
            verifies.append((t2 - t1) * 1000)
    return statistics.median(mints), statistics.median(verifies)


class Bench:
    def __init__(self, s: EventSettings, result: EventResult, scratch: Path) -> None:
        self.s, self.result, self.scratch = s, result, scratch
        self.recorder = Recorder()
        self.suffix = uuid.uuid4().hex[:8]
        self.senders: dict[str, Any] = {}
        self.to_close: list[Any] = []

    def run(self) -> None:
        log("eventarc: starting localcloud on a fresh data dir ...")
        instance = testing.start(
            self.scratch / "data",
            extra_env={
                "LOCALCLOUD_RUN_IDLE_MS": str(IDLE_MS),
                # Only the warm-up could need a retry (never the measured events): make it soon.
                "LOCALCLOUD_EVENTARC_MIN_BACKOFF_MS": "100",
                "LOCALCLOUD_EVENTARC_MAX_BACKOFF_MS": "1000",
            },
        )
        try:
            with instance.client_env():
                clients = Clients(Environment.from_env(instance.env))
                publisher = pubsub_v1.PublisherClient(batch_settings=LATENCY_BATCH)
                self.to_close += [clients, publisher]
                self.setup(clients, publisher)
            self.measure()
        finally:
            self.close()
            self.recorder.close()
            instance.stop()

    def close(self) -> None:
        for thing in self.to_close:
            if isinstance(thing, Clients):
                for name in ("cloud_build", "run_services", "run_revisions", "eventarc"):
                    if name in vars(thing):
                        with contextlib.suppress(Exception):
                            vars(thing)[name].transport.close()
                for name in ("subscriber", "storage"):
                    if name in vars(thing):
                        with contextlib.suppress(Exception):
                            vars(thing)[name].close()
            elif isinstance(thing, pubsub_v1.PublisherClient):
                with contextlib.suppress(Exception):
                    thing.stop()
                    thing.transport.close()
            else:
                with contextlib.suppress(Exception):
                    thing.close()

    # -- setup ---------------------------------------------------------------------------
    def setup(self, clients: Clients, publisher: Any) -> None:
        image = self.build(clients)
        service = self.deploy(clients, image)
        storage, subscriber = clients.storage, clients.subscriber
        buckets = {
            # In the region, where the storage trigger lives (a bucket made without a
            # location is in the US multi-region).
            key: storage.create_bucket(f"ev-bench-{key}-{self.suffix}", location=REGION, timeout=30)
            for key in ("storage", "notification")
        }
        topics = {}
        for key in ("pubsub", "push"):
            topics[key] = publisher.topic_path(PROJECT, f"ev-bench-{key}-{self.suffix}")
            publisher.create_topic(name=topics[key], timeout=30)
        self.trigger(
            clients,
            service,
            [
                {"attribute": "type", "value": "google.cloud.storage.object.v1.finalized"},
                {"attribute": "bucket", "value": buckets["storage"].name},
            ],
        )
        self.trigger(
            clients,
            service,
            [{"attribute": "type", "value": "google.cloud.pubsub.topic.v1.messagePublished"}],
            transport={"pubsub": {"topic": topics["pubsub"]}},
        )
        # Plain push subscriptions to the recorder: the reference, and the storage legs.
        pushes = {
            "push": (topics["push"], ""),
            "notification": (
                f"projects/{PROJECT}/topics/localcloud-storage-events",
                f'attributes.bucketId = "{buckets["notification"].name}" AND '
                'attributes.eventType = "OBJECT_FINALIZE"',
            ),
        }
        for key, (topic, flt) in pushes.items():
            subscriber.create_subscription(
                request={
                    "name": f"projects/{PROJECT}/subscriptions/ev-bench-{key}-{self.suffix}",
                    "topic": topic,
                    "filter": flt,
                    "ack_deadline_seconds": 60,
                    "push_config": {"push_endpoint": f"{self.recorder.url}/push"},
                },
                timeout=30,
            )

        def upload(bucket: Any) -> Any:
            def send(key: str) -> tuple[float, float]:
                t0 = time.perf_counter()
                bucket.blob(key).upload_from_string(b"x", timeout=30)
                return t0, time.perf_counter()

            return send

        def publish(topic: str) -> Any:
            def send(key: str) -> tuple[float, float]:
                t0 = time.perf_counter()
                publisher.publish(topic, key.encode()).result(timeout=30)
                return t0, time.perf_counter()

            return send

        revision = clients.run_revisions.get_revision(name=service.latest_ready_revision)
        self.senders = {
            "storage": upload(buckets["storage"]),
            "pubsub": publish(topics["pubsub"]),
            "push": publish(topics["push"]),
            "notification": upload(buckets["notification"]),
            "direct": self.direct_sender(revision),
        }
        for key, send in self.senders.items():  # connections, instance, leases: all warm
            for i in range(3):
                t0 = time.perf_counter()
                name = f"warm-{key}-{i}"
                send(name)
                if self.recorder.wait(name, WARMUP_TIMEOUT if i == 0 else self.s.timeout) is None:
                    raise RuntimeError(f"{key}: warm-up event {name} did not arrive")
                if i == 0:
                    self.result.warmup_s[key] = time.perf_counter() - t0
        log(
            "eventarc: warm; first events took "
            + ", ".join(f"{k} {v:.2f} s" for k, v in self.result.warmup_s.items())
        )

    def build(self, clients: Clients) -> str:
        bucket = clients.storage.create_bucket(f"ev-bench-src-{self.suffix}", timeout=30)
        blob = bucket.blob("function.zip")
        blob.upload_from_string(build.zip_tree({"main.py": MAIN}), timeout=30)
        image = f"{REGION}-docker.pkg.dev/{PROJECT}/functions/ev-bench-recorder"
        args = ["build", image, "--network", "cloudbuild"]
        for env in (
            f"GOOGLE_FUNCTION_TARGET={TARGET}",
            "GOOGLE_FUNCTION_SIGNATURE_TYPE=cloudevent",
        ):
            args += ["--env", env]
        source = {"bucket": bucket.name, "object_": blob.name, "generation": blob.generation}
        log("eventarc: building the recorder function ...")
        t0 = time.perf_counter()
        built = clients.cloud_build.create_build(
            project_id=PROJECT,
            build=cloudbuild_v1.Build(
                source={"storage_source": source},
                steps=[{"name": "gcr.io/k8s-skaffold/pack", "entrypoint": "pack", "args": args}],
                images=[image],
            ),
            timeout=30,
        ).result(timeout=self.s.setup_timeout, polling=build.POLLING)
        self.result.build_s = time.perf_counter() - t0
        return f"{image}@{built.results.images[0].digest}"

    def deploy(self, clients: Clients, image: str) -> Any:
        t0 = time.perf_counter()
        env = [{"name": "RECORD_URL", "value": self.recorder.url}]
        service = clients.run_services.create_service(
            parent=PARENT,
            service_id=f"ev-bench-{self.suffix}",
            service=run_v2.Service(
                template={
                    "containers": [{"image": image, "env": env}],
                    "scaling": {"max_instance_count": 1},
                }
            ),
            timeout=30,
        ).result(timeout=self.s.setup_timeout)
        policy = clients.run_services.get_iam_policy(request={"resource": service.name})
        policy.bindings.append(
            policy_pb2.Binding(role="roles/run.invoker", members=[f"serviceAccount:{TRIGGER_SA}"])
        )
        clients.run_services.set_iam_policy(request={"resource": service.name, "policy": policy})
        self.result.deploy_s = time.perf_counter() - t0
        log(f"eventarc: built in {self.result.build_s:.1f} s, deployed {service.uri}")
        return service

    def trigger(self, clients: Clients, service: Any, filters: list[dict], **fields: Any) -> None:
        clients.eventarc.create_trigger(
            parent=PARENT,
            trigger_id=f"ev-bench-{uuid.uuid4().hex[:8]}",
            trigger=eventarc_v1.Trigger(
                event_filters=filters,
                destination={
                    "cloud_run": {"service": service.name.rsplit("/", 1)[-1], "region": REGION}
                },
                service_account=TRIGGER_SA,
                **fields,
            ),
            timeout=30,
        ).result(timeout=60)

    def direct_sender(self, revision: Any) -> Any:
        """POST a binary-mode CloudEvent (MessagePublishedData) to the instance itself."""
        port = instance_port(revision.log_uri)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.to_close.append(conn)

        def send(key: str) -> tuple[float, float]:
            body = json.dumps(
                {
                    "message": {"data": base64.b64encode(key.encode()).decode(), "messageId": key},
                    "subscription": f"projects/{PROJECT}/subscriptions/direct",
                }
            ).encode()
            headers = {
                "ce-specversion": "1.0",
                "ce-id": key,
                "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
                "ce-source": f"//pubsub.googleapis.com/projects/{PROJECT}/topics/direct",
                "Content-Type": "application/json",
            }
            for attempt in range(2):  # the instance may have closed an idle connection
                t0 = time.perf_counter()
                try:
                    conn.request("POST", "/", body, headers)
                    response = conn.getresponse()
                    response.read()
                    break
                except (ConnectionError, http.client.HTTPException):
                    conn.close()
                    if attempt:
                        raise
            if response.status != 200:
                raise RuntimeError(f"the instance answered {response.status}")
            return t0, t0

        return send

    # -- measuring -----------------------------------------------------------------------
    def measure(self) -> None:
        s = self.s
        series = self.result.series
        for key in SCENARIOS:
            series[key] = Series(key, expected=s.count(key), from_call=key in PUBLISHES)
        keys = list(SCENARIOS)
        log(f"eventarc: measuring, {s.rounds} interleaved rounds ...")
        for rnd in range(s.rounds):
            for key in keys if rnd % 2 == 0 else keys[::-1]:
                one = series[key]
                n = one.expected
                for i in range(n * rnd // s.rounds, n * (rnd + 1) // s.rounds):
                    if one.abandoned:
                        break
                    self.sample(one, f"{key}-{i}")
        for key in SCENARIOS:
            one = series[key]
            log(
                f"eventarc: {key}: {one.received}/{one.expected}, "
                f"p50 {one.p(0.5) or 0:.1f} ms, p99 {one.p(0.99) or 0:.1f} ms"
            )

    def sample(self, one: Series, name: str) -> None:
        try:
            called, sent = self.senders[one.key](name)
        except Exception as exc:
            one.abandoned = f"sending {name}: {type(exc).__name__}: {exc}"
            return
        arrival = self.recorder.wait(name, self.s.timeout)
        if arrival is None:
            one.lost += 1
            one.lost_in_a_row += 1
            if one.lost_in_a_row >= MAX_LOST_IN_A_ROW:
                one.abandoned = f"{one.lost_in_a_row} events in a row lost (>{self.s.timeout:g} s)"
        else:
            one.lost_in_a_row = 0
            origin = called if one.from_call else sent
            one.latencies_ms.append((arrival.at - origin) * 1000)
            one.call_ms.append((sent - called) * 1000)
            one.since_return_ms.append((arrival.at - sent) * 1000)
            if arrival.entered is not None:
                one.entered_ms.append((arrival.entered - origin) * 1000)
        time.sleep(self.s.pause)


def run(s: EventSettings) -> EventResult:
    """Errors are kept, not raised: the rows without figures fail."""
    result = EventResult()
    began = time.monotonic()
    before = cpu_snapshot()
    with tempfile.TemporaryDirectory(prefix="bench-eventarc-") as scratch:
        bench = Bench(s, result, Path(scratch))
        try:
            bench.run()
        except Exception as exc:
            result.errors.append(f"{type(exc).__name__}: {exc}")
            log(f"eventarc: failed: {exc}")
        result.errors += bench.recorder.errors
    try:
        result.token_mint_ms, result.token_verify_ms = token_costs()
    except Exception as exc:
        result.errors.append(f"token costs: {type(exc).__name__}: {exc}")
    result.other_cores = other_cores(before)
    result.seconds = time.monotonic() - began
    return result


# -- reporting (benchmarks/__main__.py turns rows() into its Row) ---------------------------
def rows(r: EventResult) -> list[tuple[str, str, float | None, float | None, str, bool | None]]:
    """(scenario, unit, localcloud, reference, target, ok): storage and Pub/Sub events,
    p50 and p99, each against the plain push's same percentile; a scenario that lost events
    fails its rows."""
    push = r.series.get("push")
    out = []
    for key, label in (("storage", "eventarc storage"), ("pubsub", "eventarc pubsub")):
        one = r.series.get(key)
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            value = one.p(q) if one else None
            reference = push.p(q) if push else None
            target, ok = "", None
            if key == "storage" and q == 0.5:
                target = f"< {TARGET_P50_MS:g} ms"
                ok = value is not None and value < TARGET_P50_MS
            if one is None or not one.complete:
                ok = False
            out.append((f"{label} {name}", "ms", value, reference, target, ok))
    return out


def passed(r: EventResult) -> bool:
    push = r.series.get("push")
    return not r.errors and push is not None and push.complete


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _describe(one: Series) -> str:
    line = (
        f"{one.received}/{one.expected}, p50 {one.p(0.5) or 0:.2f} ms, "
        f"p99 {one.p(0.99) or 0:.2f} ms, max {max(one.latencies_ms, default=0):.2f} ms"
    )
    if one.entered_ms:
        posts = [a - b for a, b in zip(one.latencies_ms, one.entered_ms, strict=False)]
        line += (
            f"; to the function entered p50 {_median(one.entered_ms) or 0:.2f} ms, "
            f"its POST to the recorder p50 {_median(posts) or 0:.2f} ms"
        )
    if one.key != "direct" and one.call_ms:
        call = "publish()" if one.from_call else "upload"
        line += f"; the {call} call itself p50 {_median(one.call_ms) or 0:.2f} ms"
    if one.from_call and one.since_return_ms:
        line += f"; publish() returned → arrival p50 {_median(one.since_return_ms) or 0:.2f} ms"
    if one.abandoned:
        line += f"; ABANDONED: {one.abandoned}"
    return line


def notes(s: EventSettings, r: EventResult) -> list[str]:
    out = [
        "eventarc: each event sent alone (the next after the last arrived and "
        f"{s.pause * 1000:g} ms), {s.rounds} interleaved rounds, warm instance "
        f"(LOCALCLOUD_RUN_IDLE_MS={IDLE_MS}); reference = a plain push subscription to the "
        "same recorder; the function's own POST to the recorder is included",
    ]
    for key, what in SCENARIOS.items():
        one = r.series.get(key)
        if one is not None:
            out.append(f"eventarc {key}: {what}: " + _describe(one))
    legs = {k: v.p(0.5) for k, v in r.series.items() if v.received}
    if set(SCENARIOS) <= legs.keys():
        out.append(
            "eventarc where the time goes (p50, ms): upload returned → notification pushed "
            f"{legs['notification']:.1f} (a whole publish() → push alone: {legs['push']:.1f}); "
            f"Eventarc (CloudEvent, ID token) + ingress + function "
            f"{legs['storage'] - legs['notification']:+.1f} on storage, "
            f"{legs['pubsub'] - legs['push']:+.1f} on Pub/Sub, of which the function alone "
            f"(POSTed to directly, its own POST included) {legs['direct']:.1f}"
        )
    if r.token_mint_ms is not None and r.token_verify_ms is not None:
        out.append(
            f"eventarc: an ID token (RS256) costs {r.token_mint_ms:.2f} ms to mint (each "
            f"Eventarc push) and {r.token_verify_ms:.2f} ms to verify (the ingress), in-process"
        )
    if r.build_s is not None:
        out.append(
            f"eventarc: setup: build {r.build_s:.1f} s, deploy {r.deploy_s or 0:.1f} s; first "
            "events: " + ", ".join(f"{k} {v:.2f} s" for k, v in r.warmup_s.items())
        )
    out.extend(f"eventarc: ERROR {err}" for err in r.errors)
    if r.other_cores is not None and r.other_cores > 0.25:
        out.append(
            f"eventarc: WARNING: other processes used {r.other_cores:.2f} cores meanwhile; "
            "the figures are skewed by other work on this machine"
        )
    out.append(f"eventarc: {r.seconds:.1f} s in all")
    return out


def markdown(r: EventResult) -> str:
    push = r.series.get("push")

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    lines = [
        "| Eventarc → warm Cloud Run function | p50 | p99 | Pub/Sub push alone p50 / p99 "
        "| p50 ratio | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for key, label, target in (
        ("storage", "Object finalized (upload returned) → function invoked", "p50 < 50 ms"),
        ("pubsub", "Pub/Sub publish() called → function invoked", "-"),
    ):
        one = r.series.get(key)
        p50, ref = (one.p(0.5) if one else None), (push.p(0.5) if push else None)
        ratio = f"{p50 / ref:.2f}x" if p50 is not None and ref else "-"
        lines.append(
            f"| {label} | {cell(p50)} | {cell(one.p(0.99) if one else None)} "
            f"| {cell(ref)} / {cell(push.p(0.99) if push else None)} | {ratio} | {target} |"
        )
    lines += [
        "",
        "One event at a time to a warm instance; the function POSTs to a recorder in the "
        "benchmark process, and that POST is included. Pub/Sub push alone: a push "
        "subscription straight to the same recorder, publish() called → push received "
        "(from publish() returned, a push often arrives first), in the same run.",
    ]
    return "\n".join(lines)


def to_json(s: EventSettings, r: EventResult) -> dict[str, Any]:
    series = {}
    for key, one in r.series.items():
        series[key] = {
            "what": SCENARIOS[key],
            "expected": one.expected,
            "received": one.received,
            "lost": one.lost,
            "abandoned": one.abandoned,
            "p50_ms": one.p(0.5),
            "p99_ms": one.p(0.99),
            "max_ms": max(one.latencies_ms, default=None),
            "entered_p50_ms": one.p(0.5, one.entered_ms),
            "call_p50_ms": one.p(0.5, one.call_ms),
            "from": "publish() called" if one.from_call else "upload returned",
            "since_return_p50_ms": one.p(0.5, one.since_return_ms),
            "latencies_ms": one.latencies_ms,
        }
    return {
        "settings": {
            "uploads": s.uploads,
            "publishes": s.publishes,
            "rounds": s.rounds,
            "pause": s.pause,
            "timeout": s.timeout,
        },
        "series": series,
        "build_s": r.build_s,
        "deploy_s": r.deploy_s,
        "warmup_s": r.warmup_s,
        "token_mint_ms": r.token_mint_ms,
        "token_verify_ms": r.token_verify_ms,
        "errors": r.errors,
        "other_cores": r.other_cores,
        "seconds": r.seconds,
    }

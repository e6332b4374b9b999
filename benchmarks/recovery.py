"""Recovery after a SIGKILL mid-deployment (issue 14): ``orch local up`` again, until the
service answers and until the deployment's ``done`` event.

localcloud is started exactly as a user starts it: ``python -m orch.cli local up`` (the
supervisor in a session of its own, the pipeline provisioned by ``orch.provision``) on a
fresh data directory and free ports (``LOCALCLOUD_*_PORT``, as ``orch local up`` reads
them), so the restart is the same command on the same data directory and ports, and the
supervisor's process group can be killed as a whole without killing this process
(``localcloud.testing.start`` keeps localcloud in the caller's group).

One HTTP function (no dependencies, its text changed each deploy) is deployed by
uploading ``bench-recovery.zip`` to the sources bucket, once as warm-up (it creates the
service), then:

- reference deploys, not killed, on the warm pipeline: upload returned → ``done`` (the
  event's time stamp) and → the first answer with the new text;
- as many deploys killed, one after the other: when its ``deploy`` step reports
  ``running`` (the step is asking Cloud Run for the new revision, or waiting for it to
  start), SIGKILL to the supervisor's process group (its children die with it: the API
  server's parts, fake-gcs-server, and the instances, ``bwrap --die-with-parent``), and
  once the group is gone ``orch local up`` again. From that command's start: localcloud
  healthy (its "localcloud is up" line), the service's URL answering (either text:
  polled every 20 ms from the restart), the deployment's ``done`` (its time stamp;
  succeeded, or failed with its reason), the new text answering (when ``done``
  succeeded) and ``orch local up`` returning (the pipeline provisioned again, nothing to
  change). The references come first because a restart leaves the pipeline's functions
  cold (localcloud starts instances on a service's first request, minimum instances
  included), so a deploy after one pays their cold starts; the killed deploys are timed
  from the restart, where all of them are cold alike.

Every status event is read through one subscription with message ordering; each kind of
count keeps Pub/Sub's message id, so a redelivery is told from a second publish. Once a
deployment's execution has ended, a sentinel published on the status topic with the
deployment's ordering key is waited for: every ``done`` published before it has been
read; at the end of the run it is done once more for each killed deployment, so the
count of ``done`` events per deployment is final. A killed deployment without ``done``
within the bound, or with more than one, fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from google.api_core import exceptions

from benchmarks import run as run_bench
from benchmarks.pipeline import PLAIN_MAIN, POLL, Poller, event_seconds
from benchmarks.pubsub import cpu_snapshot, log
from localcloud import testing
from localcloud.core.config import Config, free_port
from localcloud.testing import zip_tree
from orchestrator import status
from orchestrator.clients import Clients, Environment
from orchestrator.config import Settings
from orchestrator.manifest import deployment_id

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
SERVICE = "bench-recovery"
MANIFEST = (
    f"service: {SERVICE}\nentry_point: hello\nsignature_type: http\nallow_unauthenticated: true\n"
)
KILL_AT = ("deploy", "running")  # the status event at which localcloud is killed
UP_TIMEOUT = 600.0  # the first `orch local up` builds the orchestrator's image
DOWN_TIMEOUT = 30.0  # the killed process group gone
SETUP_TIMEOUT = 60.0
EXECUTION_TIMEOUT = 60.0  # after `done`, its execution ended
SENTINEL = "bench_sentinel"
# Where the time goes after the restart: (label, from, to), each a Recovery attribute, a
# status event after the restart ("step state"), or "restart" (0).
AFTER = (
    ("`orch local up` → it spawns localcloud (the command's own start)", "restart", "spawned_s"),
    ("… → localcloud healthy", "spawned_s", "healthy_s"),
    (
        "localcloud healthy → the service answers (an instance's cold start)",
        "healthy_s",
        "answered_s",
    ),
    (
        "localcloud healthy → `deploy` running again (the call made again)",
        "healthy_s",
        "deploy running",
    ),
    ("`deploy` running → succeeded", "deploy running", "deploy succeeded"),
    ("`deploy` succeeded → `bind_triggers` running", "deploy succeeded", "bind_triggers running"),
    ("`bind_triggers` running → `done`", "bind_triggers running", "done succeeded"),
)
NOISY_CORES = 0.25


@dataclass(frozen=True)
class RecoverySettings:
    repeats: int = 3  # killed deploys (and as many reference deploys)
    timeout: float = 180.0  # a deploy's `done`; after a restart, from `orch local up`

    @classmethod
    def for_run(cls, quick: bool) -> RecoverySettings:
        return cls(repeats=1 if quick else 3)


@dataclass
class Seen:
    """One status event as read: Pub/Sub's message id tells a redelivery from a publish."""

    received: float  # perf_counter
    at: float  # the event's own time stamp (epoch seconds)
    step: str
    state: str
    message_id: str
    event_id: str
    error: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reference:
    """A deploy not killed: upload returned → done, → the new text answered."""

    n: int
    deployment_id: str = ""
    done_s: float | None = None
    answered_s: float | None = None
    error: str = ""


@dataclass
class Recovery:
    """A deploy killed at ``KILL_AT``; times from ``orch local up`` started again."""

    n: int
    deployment_id: str = ""
    killed_after_s: float | None = None  # upload returned → SIGKILL
    kill_lag_s: float | None = None  # the KILL_AT event's time stamp → SIGKILL
    down_s: float | None = None  # SIGKILL → the process group gone
    spawned_s: float | None = None  # restart → orch spawned the supervisor (its imports)
    healthy_s: float | None = None  # restart → "localcloud is up"
    answered_s: float | None = None  # restart → the URL's first 200
    answered_with: str = ""  # "previous" or "new"
    refused: int = 0  # answers before it (connection refused, 5xx)
    done_s: float | None = None  # restart → the done event's time stamp
    done_state: str = ""
    done_message: str = ""
    new_answered_s: float | None = None  # restart → the new text answered (done succeeded)
    up_returned_s: float | None = None  # restart → `orch local up` exited
    up_code: int | None = None
    total_s: float | None = None  # upload returned → done, downtime included
    dones: int = 0  # done events published for this deployment (distinct message ids)
    done_receipts: int = 0  # done messages received (redeliveries included)
    repeated: dict[str, int] = field(default_factory=dict)  # step/state published twice+
    executions: list[str] = field(default_factory=list)  # this deployment's: state, error
    events: list[tuple[float, str, str]] = field(default_factory=list)  # s after restart
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.done_s is not None and self.dones == 1

    def after(self, point: str) -> float | None:
        """Seconds from the restart to the first ``step state`` event after it."""
        step, state = point.split()
        return next((t for t, s, st in self.events if s == step and st == state and t > 0), None)


@dataclass
class RecoveryResult:
    references: list[Reference] = field(default_factory=list)
    recoveries: list[Recovery] = field(default_factory=list)
    first_up_s: float | None = None  # the first `orch local up` (fresh, provisions)
    warmup_s: float | None = None
    errors: list[str] = field(default_factory=list)
    other_cores: float | None = None
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return (
            not self.errors
            and bool(self.recoveries)
            and all(r.ok for r in self.recoveries)
            and all(not r.error for r in self.references)
        )


def point(rec: Recovery, name: str) -> float | None:
    if name == "restart":
        return 0.0
    if " " in name:
        return rec.after(name)
    value: float | None = getattr(rec, name)
    return value


def spans(rec: Recovery) -> dict[str, float]:
    out = {}
    for label, a, b in AFTER:
        start, end = point(rec, a), point(rec, b)
        if start is not None and end is not None:
            out[label] = end - start
    return out


def span_median(recs: list[Recovery], label: str) -> float | None:
    found = [v for r in recs if (v := spans(r).get(label)) is not None]
    return statistics.median(found) if found else None


def median_of(items: list[Any], attr: str) -> float | None:
    found = [v for x in items if (v := getattr(x, attr)) is not None]
    return statistics.median(found) if found else None


def span_of(items: list[Any], attr: str) -> tuple[float, float] | None:
    found = [v for x in items if (v := getattr(x, attr)) is not None]
    return (min(found), max(found)) if found else None


# -- CPU used by others ------------------------------------------------------------------
class CpuMeter:
    """Cores other processes used, over the segments measured. The localcloud started by
    ``orch local up`` is not this process's descendant (``orch`` exits and it is
    reparented), so it is counted as ours by its supervisor's pid. A killed localcloud's
    CPU leaves /proc with it: the meter stops before each kill and starts again once the
    new supervisor is up, so the gap between is not measured."""

    def __init__(self) -> None:
        self.other = 0.0
        self.elapsed = 0.0
        self.began: tuple[float, float, float] | None = None

    def start(self, roots: set[int]) -> None:
        self.began = cpu_snapshot(roots)

    def stop(self, roots: set[int]) -> None:
        began, self.began = self.began, None
        after = cpu_snapshot(roots)
        if began is None or after is None or after[0] <= began[0]:
            return
        self.other += max((after[1] - began[1]) - (after[2] - began[2]), 0.0)
        self.elapsed += after[0] - began[0]

    @property
    def cores(self) -> float | None:
        return self.other / self.elapsed if self.elapsed > 0 else None


# -- the status events -------------------------------------------------------------------
class Follower(threading.Thread):
    """Pulls the status subscription for the whole run, through every restart: a failed
    pull (localcloud down) gets a fresh channel, not gRPC's reconnect backoff."""

    def __init__(self, env: Environment, subscription: str) -> None:
        super().__init__(daemon=True, name="status follower")
        self.env, self.subscription = env, subscription
        self.subscriber = Clients(env).subscriber
        self.events: dict[str, list[Seen]] = {}
        self.sentinels: set[str] = set()
        self.failed_pulls = 0
        self.unreadable = 0
        self.cond = threading.Condition()
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                response = self.subscriber.pull(
                    subscription=self.subscription, max_messages=100, timeout=5, retry=None
                )
            except exceptions.DeadlineExceeded:
                continue
            except Exception:
                self.failed_pulls += 1
                self.reconnect()
                self.halt.wait(0.05)
                continue
            received = time.perf_counter()
            messages = list(response.received_messages)
            if not messages:
                continue
            with contextlib.suppress(Exception):  # unacked: redelivered, and counted so
                self.subscriber.acknowledge(
                    subscription=self.subscription, ack_ids=[m.ack_id for m in messages]
                )
            with self.cond:
                for m in messages:
                    self.take(m.message, received)
                self.cond.notify_all()

    def take(self, message: Any, received: float) -> None:
        attributes = dict(message.attributes)
        if SENTINEL in attributes:
            self.sentinels.add(attributes[SENTINEL])
            return
        try:
            event = status.from_message(message.data, attributes)
        except status.StatusEventError:
            self.unreadable += 1
            return
        self.events.setdefault(event.deployment_id, []).append(
            Seen(
                received,
                event_seconds(event.time),
                event.step,
                event.state,
                message.message_id,
                event.event_id,
                f"{event.error_code}: {event.message}" if event.state == "failed" else "",
                dict(event.details),
            )
        )

    def reconnect(self) -> None:
        old = self.subscriber
        with contextlib.suppress(Exception):
            old.close()
        self.subscriber = Clients(self.env).subscriber

    def wait(self, predicate: Callable[[], T | None], deadline: float) -> T | None:
        with self.cond:
            while True:
                found = predicate()
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(min(left, 0.5))

    def first(self, dep: str, step: str, state: str | None = None) -> Seen | None:
        for seen in self.events.get(dep, []):
            if seen.step == step and (state is None or seen.state == state):
                return seen
        return None

    def stop(self) -> None:
        self.halt.set()
        self.join(10)
        with contextlib.suppress(Exception):
            self.subscriber.close()


class AnyPoller(threading.Thread):
    """GETs ``url`` until a 200 carries one of ``markers``: when, and which."""

    def __init__(self, url: str, markers: dict[str, str], deadline: float) -> None:
        super().__init__(daemon=True, name=f"poll {url}")
        self.url, self.markers, self.deadline = url, markers, deadline
        self.answered: float | None = None
        self.which = ""
        self.misses = 0
        self.last = ""
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set() and time.monotonic() < self.deadline:
            try:
                code, body = run_bench.get(self.url, 60.0)
            except OSError as exc:
                code, body = 0, str(exc)
            if code == 200:
                which = next((k for k, m in self.markers.items() if m in body), "")
                if which:
                    self.answered, self.which = time.perf_counter(), which
                    return
            self.misses += 1
            self.last = f"{code} {body[:120]!r}"
            self.halt.wait(POLL)


# -- localcloud through `orch local up` --------------------------------------------------
class Up:
    """``python -m orch.cli local up`` running: its output lines with when they came."""

    def __init__(self, env: dict[str, str], log_file: IO[str]) -> None:
        self.started, self.started_wall = time.perf_counter(), time.time()
        self.lines: list[tuple[float, str]] = []
        self.healthy = threading.Event()
        self.log_file = log_file
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orch.cli", "local", "up"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        self.reader = threading.Thread(target=self.read, daemon=True, name="orch local up")
        self.reader.start()
        self.returned: float | None = None

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            now = time.perf_counter()
            self.lines.append((now, line.rstrip()))
            self.log_file.write(f"{now - self.started:8.3f} {line}")
            self.log_file.flush()
            if line.startswith(("localcloud is up", "localcloud is already running")):
                self.healthy.set()
        self.process.wait()
        self.returned = time.perf_counter()
        self.healthy.set()  # also when it failed: the waiter looks at the exit code

    def at(self, prefix: str) -> float | None:
        return next((t - self.started for t, line in self.lines if line.startswith(prefix)), None)

    def wait(self, timeout: float) -> int | None:
        self.reader.join(timeout)
        return self.process.returncode if self.returned is not None else None

    def tail(self, n: int = 15) -> str:
        return "\n".join(line for _, line in self.lines[-n:])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()


def close(clients: Clients) -> None:
    """Close what ``clients`` opened: channels, sessions, the publisher's thread."""
    run_bench.close(clients)
    if "executions" in vars(clients):
        with contextlib.suppress(Exception):
            clients.executions.transport.close()
    if "ordered_publisher" in vars(clients):
        with contextlib.suppress(Exception):
            clients.ordered_publisher.stop()


def group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Bench:
    def __init__(self, s: RecoverySettings, result: RecoveryResult, scratch: Path) -> None:
        self.s, self.result, self.scratch = s, result, scratch
        self.data_dir = scratch / "data"
        self.meter = CpuMeter()
        self.up_log = open(scratch / "orch-local-up.log", "w")  # noqa: SIM115 - closed in run
        self.supervisor: int | None = None
        self.follower: Follower | None = None
        self.url = ""
        self.marker = ""  # the text the service answers now
        self.n = 0

    # -- localcloud ----------------------------------------------------------------------
    def environment(self) -> None:
        ports: dict[str, Any] = {attr: free_port() for attr in testing.PORTS.values()}
        config = Config(data_dir=self.data_dir.resolve(), **ports)
        env = {
            **os.environ,
            "LOCALCLOUD_DATA": str(config.data_dir),
            **testing.port_env(config),
            # ORCH_CONFIG points nowhere, so no user config file can change the names.
            "ORCH_CONFIG": str(self.scratch / "no-config.json"),
        }
        for key in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "LOCALCLOUD_GRPC_HOST"):
            env.pop(key, None)
        self.up_env = env
        self.config = Config.from_env(env)
        self.client_env = {**self.config.client_env(), "ORCH_CONFIG": env["ORCH_CONFIG"]}

    def up(self) -> Up:
        self.up_log.write(f"--- orch local up at {time.strftime('%H:%M:%S')}\n")
        return Up(self.up_env, self.up_log)

    def supervisor_pid(self) -> int:
        state = json.loads((self.config.data_dir / "state.json").read_text())
        return int(state["pid"])

    def roots(self) -> set[int]:
        return {os.getpid()} | ({self.supervisor} if self.supervisor else set())

    def clients(self) -> None:
        """Fresh clients (new channels) for this localcloud's life."""
        old = getattr(self, "c", None)
        if old is not None:
            close(old)
        self.c = Clients(Environment.from_env(self.client_env))
        self.sources = self.c.storage.bucket(self.settings.sources_bucket)

    def run(self) -> None:
        self.environment()
        log("recovery: orch local up on a fresh data dir (provisions the pipeline) ...")
        try:
            first = self.up()
            code = first.wait(UP_TIMEOUT)
            if code != 0:
                first.kill()
                raise RuntimeError(f"orch local up failed ({code}):\n{first.tail()}")
            self.result.first_up_s = (first.returned or 0) - first.started
            self.supervisor = self.supervisor_pid()
            log(f"recovery: up and provisioned in {self.result.first_up_s:.1f} s")
            with testing.patched_environ(self.client_env):
                self.settings = Settings.from_env(self.client_env)
                self.clients()
                self.subscribe()
                self.meter.start(self.roots())
                try:
                    self.deploys()
                finally:
                    self.meter.stop(self.roots())
                    self.finish()
        finally:
            self.down()
            self.up_log.close()

    def down(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        if getattr(self, "c", None) is not None:
            close(self.c)
        with contextlib.suppress(Exception):
            subprocess.run(
                [sys.executable, "-m", "orch.cli", "local", "down"],
                env=self.up_env,
                capture_output=True,
                timeout=DOWN_TIMEOUT + 15,
            )
        if self.supervisor and not group_gone(self.supervisor):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.supervisor, signal.SIGKILL)

    def subscribe(self) -> None:
        s = self.settings
        self.subscription = f"projects/{s.project}/subscriptions/bench-{uuid.uuid4().hex[:8]}"
        self.c.subscriber.create_subscription(
            request={
                "name": self.subscription,
                "topic": s.topic_path(s.status_topic),
                "enable_message_ordering": True,
            },
            timeout=SETUP_TIMEOUT,
        )
        self.follower = Follower(Environment.from_env(self.client_env), self.subscription)
        self.follower.start()

    # -- deploys -------------------------------------------------------------------------
    def upload(self) -> tuple[str, str, float, float]:
        """A new source; (deployment id, marker, upload returned: perf_counter, wall)."""
        self.n += 1
        marker = f"r{self.n:03d}-{uuid.uuid4().hex[:6]}"
        files: dict[str, str | bytes] = {
            "main.py": PLAIN_MAIN.format(marker=marker),
            "function.yaml": MANIFEST,
        }
        blob = self.sources.blob(f"{SERVICE}.zip")
        blob.upload_from_string(
            zip_tree(files), content_type="application/zip", timeout=SETUP_TIMEOUT
        )
        up, wall = time.perf_counter(), time.time()
        return deployment_id(self.sources.name, blob.name, blob.generation), marker, up, wall

    def done_of(self, dep: str, deadline: float) -> Seen | None:
        assert self.follower is not None
        follower = self.follower
        return follower.wait(lambda: follower.first(dep, "done"), deadline)

    def deploys(self) -> None:
        log("recovery: warm-up deploy (creates the service) ...")
        t0 = time.perf_counter()
        dep, marker, _, _ = self.upload()
        done = self.done_of(dep, time.monotonic() + self.s.timeout)
        if done is None or done.state != "succeeded":
            why = done.error if done else f"no done within {self.s.timeout:g} s"
            raise RuntimeError(f"the warm-up deploy did not succeed: {why}")
        self.url = str(done.details.get("url", ""))
        poller = Poller(self.url, marker, time.monotonic() + self.s.timeout)
        poller.run()
        if poller.answered is None:
            raise RuntimeError(f"the warm-up deploy never answered (last: {poller.last})")
        self.marker = marker
        self.result.warmup_s = time.perf_counter() - t0
        self.ended(dep)
        # The references first, on a warm pipeline: after a restart the pipeline's
        # functions come back cold (instances on first request), and a deploy then pays
        # their cold starts; the killed deploys are timed from the restart, so the cold
        # steps before their kill do not count.
        for k in range(self.s.repeats):
            ref = Reference(k + 1)
            self.result.references.append(ref)
            try:
                self.reference(ref)
            except Exception as exc:
                ref.error = ref.error or f"{type(exc).__name__}: {exc}"
            log(
                f"recovery: reference #{ref.n}: "
                + (
                    f"FAILED: {ref.error}"
                    if ref.error
                    else f"done {ref.done_s or 0:.2f} s, answered {ref.answered_s or 0:.2f} s"
                )
            )
        for k in range(self.s.repeats):
            rec = Recovery(k + 1)
            self.result.recoveries.append(rec)
            try:
                self.killed(rec)
            except Exception as exc:
                rec.error = rec.error or f"{type(exc).__name__}: {exc}"
            log(
                f"recovery: killed #{rec.n}: "
                + (
                    f"FAILED: {rec.error}"
                    if rec.error
                    else f"answered ({rec.answered_with}) {rec.answered_s or 0:.2f} s, done "
                    f"({rec.done_state}) {rec.done_s or 0:.2f} s after orch local up"
                )
            )
            if self.supervisor is None or group_gone(self.supervisor):
                break  # localcloud did not come back: nothing more to measure

    def reference(self, ref: Reference) -> None:
        dep, marker, up, wall = self.upload()
        ref.deployment_id = dep
        deadline = time.monotonic() + self.s.timeout
        poller = Poller(self.url, marker, deadline)
        poller.start()
        try:
            done = self.done_of(dep, deadline)
            if done is None:
                ref.error = f"no done within {self.s.timeout:g} s"
                return
            ref.done_s = done.at - wall
            if done.state != "succeeded":
                ref.error = f"done {done.state}: {done.error}"
                return
            poller.join(max(deadline - time.monotonic(), 0))
            if poller.answered is None:
                ref.error = f"the new text never answered (last: {poller.last})"
                return
            ref.answered_s = poller.answered - up
            self.marker = marker
        finally:
            poller.halt.set()
        self.ended(dep)

    def killed(self, rec: Recovery) -> None:
        assert self.follower is not None and self.supervisor is not None
        follower = self.follower
        dep, marker, up, up_wall = self.upload()
        rec.deployment_id = dep
        step, state = KILL_AT
        at = follower.wait(
            lambda: follower.first(dep, step, state), time.monotonic() + self.s.timeout
        )
        if at is None:
            rec.error = f"no {step} {state} event within {self.s.timeout:g} s"
            return
        pgid = self.supervisor
        if os.getpgid(pgid) != pgid or pgid == os.getpgrp():  # never this process's group
            raise RuntimeError(f"localcloud's supervisor {pgid} does not lead its own group")
        self.meter.stop(self.roots())
        os.killpg(pgid, signal.SIGKILL)
        killed, killed_wall = time.perf_counter(), time.time()
        rec.killed_after_s = killed - up
        rec.kill_lag_s = killed_wall - at.at
        testing.wait_for(lambda: group_gone(pgid), DOWN_TIMEOUT, "the killed group gone", 0.01)
        rec.down_s = time.perf_counter() - killed
        with contextlib.suppress(AssertionError):  # a zombie supervisor looks alive to orch
            testing.wait_for(
                lambda: not Path(f"/proc/{self.supervisor}").exists(), DOWN_TIMEOUT, "reaped"
            )

        deadline = time.monotonic() + self.s.timeout
        poller = AnyPoller(self.url, {"previous": self.marker, "new": marker}, deadline)
        restarted = self.up()  # its `started` is the restart's time
        wall = restarted.started_wall
        poller.start()
        try:
            restarted.healthy.wait(UP_TIMEOUT)
            healthy = restarted.at("localcloud is up")
            if healthy is None:
                code = restarted.wait(SETUP_TIMEOUT)
                rec.error = f"orch local up did not start localcloud ({code}):\n{restarted.tail()}"
                return
            rec.healthy_s = healthy
            rec.spawned_s = restarted.at("starting localcloud")
            self.supervisor = self.supervisor_pid()
            self.meter.start(self.roots())
            done = self.done_of(dep, deadline)
            poller.join(max(deadline - time.monotonic(), 0))
            if poller.answered is not None:
                rec.answered_s = poller.answered - restarted.started
                rec.answered_with = poller.which
            rec.refused = poller.misses
            if done is None:
                rec.error = f"no done within {self.s.timeout:g} s of orch local up"
            else:
                rec.done_s = done.at - wall
                rec.total_s = done.at - up_wall
                rec.done_state = done.state
                rec.done_message = done.error
            if done is not None and done.state == "succeeded":
                if poller.which == "new":
                    rec.new_answered_s = rec.answered_s
                else:
                    after = Poller(self.url, marker, deadline)
                    after.run()
                    if after.answered is not None:
                        rec.new_answered_s = after.answered - restarted.started
                    else:
                        rec.error = f"done succeeded, the new text never answered ({after.last})"
                if rec.new_answered_s is not None:
                    self.marker = marker
            code = restarted.wait(UP_TIMEOUT)
            rec.up_code = code
            if restarted.returned is not None:
                rec.up_returned_s = restarted.returned - restarted.started
            if code != 0 and not rec.error:
                rec.error = f"orch local up ended with {code}:\n{restarted.tail()}"
            if poller.answered is None and not rec.error:
                rec.error = f"the service never answered after the restart (last: {poller.last})"
        finally:
            poller.halt.set()
        rec.events = [
            (round(e.at - wall, 3), e.step, e.state) for e in follower.events.get(dep, [])
        ]
        self.clients()
        if rec.done_s is not None:
            rec.executions = self.ended(dep)

    def ended(self, dep: str) -> list[str]:
        """Once ``dep``'s executions have ended, a sentinel on its ordering key, waited
        for: every event published for it before has been read. Its executions, with their
        states."""
        assert self.follower is not None
        path = self.settings.workflow_path
        from google.cloud.workflows import executions_v1

        def mine() -> list[Any]:
            listed = self.c.executions.list_executions(
                request={"parent": path, "view": executions_v1.ExecutionView.FULL},
                timeout=SETUP_TIMEOUT,
            )
            return [e for e in listed if dep in e.argument]

        def finished() -> list[Any] | None:
            found = mine()
            active = [e for e in found if e.state.name == "ACTIVE"]
            return None if active or not found else found

        found = finished() or self.wait_executions(finished)
        token = uuid.uuid4().hex
        self.c.ordered_publisher.publish(
            self.settings.topic_path(self.settings.status_topic),
            b"bench sentinel",
            ordering_key=dep,
            **{SENTINEL: token},
        ).result(timeout=SETUP_TIMEOUT)
        follower = self.follower
        follower.wait(lambda: token in follower.sentinels, time.monotonic() + SETUP_TIMEOUT)
        return [
            f"{e.state.name}" + (f" ({e.error.payload[:200]})" if e.error.payload else "")
            for e in found or mine()
        ]

    def wait_executions(self, finished: Callable[[], list[Any] | None]) -> list[Any] | None:
        deadline = time.monotonic() + EXECUTION_TIMEOUT
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if found := finished():
                return found
        return None

    def finish(self) -> None:
        """The last sentinel read: the count of each deployment's events is final."""
        follower = self.follower
        if follower is None:
            return
        for rec in self.result.recoveries:
            if not rec.deployment_id:
                continue
            with contextlib.suppress(Exception):
                self.ended(rec.deployment_id)
            seen = follower.events.get(rec.deployment_id, [])
            dones = [e for e in seen if e.step == "done"]
            rec.dones = len({e.message_id for e in dones})
            rec.done_receipts = len(dones)
            published: dict[str, set[str]] = {}
            for e in seen:
                published.setdefault(f"{e.step} {e.state}", set()).add(e.message_id)
            rec.repeated = {k: len(v) for k, v in published.items() if len(v) > 1}
            if rec.dones > 1 and not rec.error:
                rec.error = f"{rec.dones} done events"


def run(s: RecoverySettings) -> RecoveryResult:
    """Errors are kept, not raised: the rows without figures fail."""
    result = RecoveryResult()
    began = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    bench = Bench(s, result, scratch)
    try:
        bench.run()
    except Exception as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}")
        log(f"recovery: failed: {exc}")
    finally:
        keep = os.environ.get("BENCH_KEEP")  # to read localcloud's logs after a failure
        if keep:
            log(f"recovery: kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    result.other_cores = bench.meter.cores
    result.seconds = time.monotonic() - began
    return result


# -- reporting ---------------------------------------------------------------------------
def rows(r: RecoveryResult) -> list[tuple[str, str, float | None, float | None, str, bool | None]]:
    """(scenario, unit, after the kill, the same deploy not killed, target, ok): medians."""
    recs, refs = r.recoveries, r.references
    complete = r.complete
    some = None if complete else False
    within = [x for x in recs if x.done_s is not None]
    return [
        ("recovery up → localcloud healthy", "s", median_of(recs, "healthy_s"), None, "", some),
        (
            "recovery up → service answers",
            "s",
            median_of(recs, "answered_s"),
            None,
            "",
            None if recs and all(x.answered_s is not None for x in recs) else False,
        ),
        (
            "recovery up → done",
            "s",
            median_of(recs, "done_s"),
            median_of(refs, "done_s"),
            "done within bound",
            bool(recs) and len(within) == len(recs) and not r.errors,
        ),
        (
            "recovery up → new revision answers",
            "s",
            median_of(recs, "new_answered_s"),
            median_of(refs, "answered_s"),
            "",
            None,
        ),
        ("recovery up → up returned", "s", median_of(recs, "up_returned_s"), None, "", None),
        (
            "recovery done events per deployment, max",
            "n",
            float(max((x.dones for x in recs), default=0)) if recs else None,
            None,
            "= 1",
            bool(recs) and all(x.dones == 1 for x in recs) and not r.errors,
        ),
        ("recovery complete", "n", float(len([x for x in recs if x.ok])), None, "", complete),
    ]


def passed(r: RecoveryResult) -> bool:
    return r.complete


def notes(s: RecoverySettings, r: RecoveryResult) -> list[str]:
    out = [
        f"recovery: {s.repeats} reference deploy(s) of one no-dependency HTTP function on the "
        f"warm pipeline, then {s.repeats} killed; SIGKILL to localcloud's process "
        f"group at the deployment's `{KILL_AT[0]} {KILL_AT[1]}` event, then `orch local up` "
        "(python -m orch.cli local up) on the same data dir and ports; times from that "
        f"command's start (the URL polled every {POLL * 1000:g} ms from then; done by its "
        f"time stamp); a killed deployment without done within {s.timeout:g} s, or with "
        "more than one, fails",
    ]
    if r.first_up_s is not None:
        out.append(
            f"recovery: first orch local up (fresh, builds and provisions) {r.first_up_s:.1f} s; "
            f"warm-up deploy {r.warmup_s or 0:.1f} s"
        )
    for ref in r.references:
        out.append(
            f"recovery reference #{ref.n} {ref.deployment_id}: upload → done "
            f"{_s(ref.done_s)}, → answered {_s(ref.answered_s)}"
            + (f"; ERROR {ref.error}" if ref.error else "")
        )
    for x in r.recoveries:
        out.append(
            f"recovery killed #{x.n} {x.deployment_id}: killed {_s(x.killed_after_s)} after the "
            f"upload ({_s(x.kill_lag_s)} after its {KILL_AT[0]} {KILL_AT[1]} event), group gone "
            f"in {_s(x.down_s)}; after orch local up: healthy {_s(x.healthy_s)}, answered "
            f"{_s(x.answered_s)} ({x.answered_with or '-'}, {x.refused} misses before), done "
            f"{_s(x.done_s)} ({x.done_state or '-'}{': ' + x.done_message if x.done_message else ''})"
            f", new text answered {_s(x.new_answered_s)}, orch local up returned "
            f"{_s(x.up_returned_s)} (exit {x.up_code}); upload → done {_s(x.total_s)} in all; "
            f"done events {x.dones} "
            f"({x.done_receipts} received); executions: {', '.join(x.executions) or '-'}"
            + (
                "; published more than once: "
                + ", ".join(f"{k} x{v}" for k, v in sorted(x.repeated.items()))
                if x.repeated
                else ""
            )
        )
        out.append(
            f"recovery killed #{x.n} where the time goes (s): "
            + "; ".join(f"{label} {v:.2f}" for label, v in spans(x).items())
        )
        out.append(
            f"recovery killed #{x.n} events (s after orch local up): "
            + ", ".join(f"{step} {state} {t:+.2f}" for t, step, state in x.events)
        )
        if x.error:
            out.append(f"recovery killed #{x.n}: ERROR {x.error}")
    out.extend(f"recovery: ERROR {err}" for err in r.errors)
    if r.other_cores is not None and r.other_cores > NOISY_CORES:
        out.append(
            f"recovery: WARNING: other processes used {r.other_cores:.2f} cores meanwhile; "
            "the figures are skewed by other work on this machine"
        )
    out.append(f"recovery: {r.seconds:.1f} s in all")
    return out


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def markdown(s: RecoverySettings, r: RecoveryResult) -> str:
    recs, refs = r.recoveries, r.references

    def cell(attr: str) -> tuple[str, str]:
        m, span = median_of(recs, attr), span_of(recs, attr)
        return _s(m), "-" if span is None else f"{span[0]:.2f}-{span[1]:.2f} s"

    def ratio(a: float | None, b: float | None) -> str:
        return "-" if a is None or not b else f"{a / b:.2f}x"

    answered = sum(x.answered_s is not None for x in recs)
    previous = sum(x.answered_with == "previous" for x in recs)
    succeeded = sum(x.done_state == "succeeded" for x in recs)
    ended = sum(x.done_s is not None for x in recs)
    ref_done, ref_answer = median_of(refs, "done_s"), median_of(refs, "answered_s")
    lines = [
        "| Recovery: localcloud's process group SIGKILLed while a deployment's `deploy` step "
        "runs, then `orch local up` on the same data directory | median | min-max "
        "| the same deploy not killed, median | ratio | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    rows_ = [
        ("`orch local up` → localcloud healthy", "healthy_s", None, "-"),
        (
            f"`orch local up` → the service's URL answers ({previous} of {answered} with the "
            "previous revision)",
            "answered_s",
            None,
            "-",
        ),
        (
            f"`orch local up` → the deployment's `done` ({succeeded} of {len(recs)} "
            f"succeeded, {ended} ended)",
            "done_s",
            ref_done,
            f"`done` within {s.timeout:g} s",
        ),
        (
            "`orch local up` → the new revision answers",
            "new_answered_s",
            ref_answer,
            "-",
        ),
        ("`orch local up` returns (pipeline provisioned again)", "up_returned_s", None, "-"),
    ]
    for label, attr, ref, target in rows_:
        med, span = cell(attr)
        m = median_of(recs, attr)
        lines.append(f"| {label} | {med} | {span} | {_s(ref)} | {ratio(m, ref)} | {target} |")
    dones = [x.dones for x in recs]
    receipts = sum(x.done_receipts for x in recs)
    lines.append(
        f"| `done` events per killed deployment (distinct publishes; {receipts} received in "
        f"all) | {max(dones, default=0)} | {min(dones, default=0)}-{max(dones, default=0)} "
        "| 1 | - | exactly 1 |"
    )
    lines += [
        "",
        "| Where the time goes after `orch local up` (medians: they need not add up) | s |",
        "|---|---:|",
        *(f"| {label} | {_s(span_median(recs, label))} |" for label, *_ in AFTER),
        "",
        f"One no-dependency function (its text changed each deploy): a warm-up deploy creates "
        f"the service, {len(refs)} reference deploys run on the warm pipeline, then "
        f"{len(recs)} deploys are killed one after the other. localcloud is started by `orch local up` (`python -m orch.cli local "
        "up`, on free ports given as `LOCALCLOUD_*_PORT`), so its supervisor leads a "
        "process group of its own: when the deployment's `deploy` step reports `running` "
        "(it is asking Cloud Run for the new revision, or waiting for it to start), that "
        "group gets SIGKILL, and once it is gone `orch "
        "local up` runs again on the same data directory and ports. Times are from that "
        "command's start: its \"localcloud is up\" line, the service's URL answering "
        f"(polled every {POLL * 1000:g} ms from the restart, either text), the `done` "
        "event's time stamp, the new text answering. The reference: the same kind of "
        "deploy, upload returned → `done` and → the new text answered. `done` events are "
        "counted by Pub/Sub message id after the deployment's execution ended and a "
        "sentinel on its ordering key was read back. After a restart localcloud starts a "
        "service's instances on its first request, the pipeline's functions (minimum one "
        "instance each) included: the resumed deployment pays the cold start of the "
        "`deploy` and `bind_triggers` functions.",
    ]
    return "\n".join(lines)


def to_json(s: RecoverySettings, r: RecoveryResult) -> dict[str, Any]:
    return {
        "settings": asdict(s),
        "kill_at": list(KILL_AT),
        "first_up_s": r.first_up_s,
        "warmup_s": r.warmup_s,
        "references": [asdict(x) for x in r.references],
        "recoveries": [asdict(x) | {"ok": x.ok, "spans": spans(x)} for x in r.recoveries],
        "spans_median_s": {label: span_median(r.recoveries, label) for label, *_ in AFTER},
        "medians": {
            attr: median_of(r.recoveries, attr)
            for attr in (
                "spawned_s",
                "healthy_s",
                "answered_s",
                "done_s",
                "new_answered_s",
                "up_returned_s",
            )
        },
        "reference_medians": {
            attr: median_of(r.references, attr) for attr in ("done_s", "answered_s")
        },
        "complete": r.complete,
        "errors": r.errors,
        "other_cores": r.other_cores,
        "seconds": r.seconds,
    }

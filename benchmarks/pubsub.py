"""Pub/Sub benchmarks: localcloud against Google's official emulator, in the same run.

Both servers are driven by the same official ``google-cloud-pubsub`` client over
StreamingPull (``SubscriberClient.subscribe``), on the same machine, one after the other,
so the figures are ratios measured under identical conditions rather than absolute
numbers that depend on the machine. localcloud persists every publish and ack to SQLite
before answering (it always does), the official emulator keeps everything in memory.

Every wait is bounded: a server that loses messages or stalls fails its row with what did
arrive instead of hanging the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.types import BatchSettings, FlowControl

from localcloud import testing

PROJECT = "bench-project"
# Generous, so the client's flow control is not what limits throughput.
FLOW = FlowControl(max_messages=5000, max_bytes=100 * 1024 * 1024)
# The latency publisher sends almost at once; the default (10 ms) would dominate the figure.
LATENCY_BATCH = BatchSettings(max_latency=0.001)
SETUP_TIMEOUT = 30.0

Publish = Callable[[bytes], Future]


@dataclass(frozen=True)
class Settings:
    """What to run; ``--quick`` shrinks the counts, not the shape of the scenarios."""

    messages: int = 20_000
    size: int = 200
    rate: float = 500.0
    duration: float = 10.0
    timeout: float = 120.0
    official: bool = True


@dataclass
class Throughput:
    sent: int  # publishes the server confirmed
    received: int  # distinct messages received (and acked) by subscribe()
    expected: int
    seconds: float  # first publish to last receipt
    publish_seconds: float  # first publish to last publish confirmed

    @property
    def complete(self) -> bool:
        return self.received == self.expected

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Latency:
    sent: int
    received: int
    expected: int
    offered_rate: float  # messages/s the paced publisher actually achieved
    p50_ms: float
    p99_ms: float
    max_ms: float
    publish_p50_ms: float  # publish() to the server's answer: the publish half of p50

    @property
    def complete(self) -> bool:
        return self.received == self.expected


@dataclass
class ServerResult:
    """One server's figures; ``errors`` says why a scenario has none."""

    server: str
    throughput: Throughput | None = None
    latency: Latency | None = None
    errors: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None  # why the server did not run at all
    other_cores: dict[str, float] = field(default_factory=dict)  # see ``other_cores``


class Receiver:
    """The subscribe() callback: acks, and counts each message once with its latency.

    A redelivery (e.g. an ack that lost a race with a lease deadline) must not count
    twice, so messages are keyed by the index the publisher wrote into their data.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.lock = threading.Lock()
        self.seen: set[int] = set()
        self.latencies_ns: list[int] = []
        self.last_ns = 0
        self.warm = threading.Event()
        self.done = threading.Event()

    def __call__(self, message: Any) -> None:
        now = time.perf_counter_ns()
        message.ack()
        index, sent_ns = (int(x) for x in message.data.split()[:2])
        with self.lock:
            if index < 0:
                self.warm.set()
            elif index not in self.seen:
                self.seen.add(index)
                self.latencies_ns.append(now - sent_ns)
                self.last_ns = now
                if len(self.seen) >= self.expected:
                    self.done.set()


def payload(index: int, size: int) -> bytes:
    """``index send_ns`` padded to ``size``: the send time travels with the message."""
    return f"{index} {time.perf_counter_ns()}".encode().ljust(size)


@contextlib.contextmanager
def session(host: str, receiver: Receiver, batch: BatchSettings, size: int) -> Iterator[Publish]:
    """A fresh topic and subscription on ``host``, subscribe() running, connections warm.

    One message goes round trip before the caller starts its clock, so neither server is
    charged for channel set-up or the first StreamingPull.
    """
    with testing.patched_environ({"PUBSUB_EMULATOR_HOST": host}):
        publisher = pubsub_v1.PublisherClient(batch_settings=batch)
        subscriber = pubsub_v1.SubscriberClient()
    suffix = uuid.uuid4().hex[:12]
    topic = publisher.topic_path(PROJECT, f"bench-topic-{suffix}")
    sub = subscriber.subscription_path(PROJECT, f"bench-sub-{suffix}")
    future = None
    try:
        publisher.create_topic(name=topic, timeout=SETUP_TIMEOUT)
        # A long deadline: a redelivery under load would be work neither server should do.
        subscriber.create_subscription(
            name=sub, topic=topic, ack_deadline_seconds=60, timeout=SETUP_TIMEOUT
        )
        future = subscriber.subscribe(sub, receiver, flow_control=FLOW)
        publisher.publish(topic, payload(-1, size)).result(timeout=SETUP_TIMEOUT)
        if not receiver.warm.wait(SETUP_TIMEOUT):
            raise RuntimeError(f"the warm-up message did not arrive within {SETUP_TIMEOUT:g}s")
        yield lambda data: publisher.publish(topic, data)
    finally:
        if future is not None:
            future.cancel()
            with contextlib.suppress(Exception):
                future.result(timeout=10)
        with contextlib.suppress(Exception):
            publisher.stop()
        subscriber.close()
        publisher.transport.close()


def confirm(futures: list[Future], deadline: float) -> int:
    """How many publishes the server confirmed before ``deadline`` (monotonic)."""
    ok = 0
    for future in futures:
        try:
            future.result(timeout=max(deadline - time.monotonic(), 0.001))
            ok += 1
        except Exception:  # a timeout or a failed publish: that message just doesn't count
            pass
    return ok


def throughput(host: str, s: Settings) -> Throughput:
    """Publish ``s.messages`` with default batching; receive and ack them all."""
    receiver = Receiver(s.messages)
    with session(host, receiver, BatchSettings(), s.size) as publish:
        deadline = time.monotonic() + s.timeout
        start = time.perf_counter_ns()
        futures = [publish(payload(i, s.size)) for i in range(s.messages)]
        sent = confirm(futures, deadline)
        published = time.perf_counter_ns()
        receiver.done.wait(max(deadline - time.monotonic(), 0.0))
        with receiver.lock:
            received, last = len(receiver.seen), receiver.last_ns
    return Throughput(
        sent=sent,
        received=received,
        expected=s.messages,
        seconds=max(last - start, 0) / 1e9,
        publish_seconds=(published - start) / 1e9,
    )


def latency(host: str, s: Settings) -> Latency:
    """Publish at a steady ``s.rate`` for ``s.duration``; publish-to-receipt percentiles.

    Message i is sent at ``start + i / rate`` on the monotonic clock, so a late wake-up
    does not push every later message back (no drift); a late publisher catches up.
    """
    n = max(int(s.rate * s.duration), 1)
    receiver = Receiver(n)
    with session(host, receiver, LATENCY_BATCH, s.size) as publish:
        futures = []
        confirmed: list[int] = []  # list.append is atomic; the client's threads call it
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / s.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            sent_ns = time.perf_counter_ns()
            future = publish(payload(i, s.size))
            future.add_done_callback(
                lambda _f, t=sent_ns: confirmed.append(time.perf_counter_ns() - t)
            )
            futures.append(future)
        offered = n / max(time.perf_counter() - start, 1e-9)
        deadline = time.monotonic() + s.timeout
        sent = confirm(futures, deadline)
        receiver.done.wait(max(deadline - time.monotonic(), 0.0))
        with receiver.lock:
            samples = sorted(receiver.latencies_ns)
    return Latency(
        sent=sent,
        received=len(samples),
        expected=n,
        offered_rate=offered,
        p50_ms=percentile(samples, 0.50) / 1e6,
        p99_ms=percentile(samples, 0.99) / 1e6,
        max_ms=(samples[-1] if samples else 0) / 1e6,
        publish_p50_ms=percentile(sorted(confirmed), 0.50) / 1e6,
    )


def percentile(ordered: list[int], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 when empty)."""
    if not ordered:
        return 0.0
    return float(ordered[min(int(q * len(ordered)), len(ordered) - 1)])


def cpu_snapshot(roots: set[int] | None = None) -> tuple[float, float, float] | None:
    """(monotonic time, CPU-seconds of the whole machine, of the process trees under
    ``roots``, by default this process's); Linux only.

    The servers are this process's children, so the tree is the client and the server;
    what its processes started and waited for counts too, through their children's times.
    """
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        machine = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
        stats: dict[int, tuple[int, int]] = {}  # pid -> (parent, CPU ticks)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    f = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                    # utime + stime, and cutime + cstime: the children it reaped (a
                    # sandbox, a build step), which are gone from /proc by now
                    stats[int(entry.name)] = (int(f[1]), sum(int(t) for t in f[11:15]))
    except (OSError, ValueError):
        return None
    tree, grew = set(roots) if roots is not None else {os.getpid()}, True
    while grew:
        new = {pid for pid, (parent, _) in stats.items() if parent in tree} - tree
        tree |= new
        grew = bool(new)
    ours = sum(stats[pid][1] for pid in tree if pid in stats)
    tick = os.sysconf("SC_CLK_TCK")
    return time.monotonic(), machine / tick, ours / tick


def other_cores(before: tuple[float, float, float] | None) -> float | None:
    """Cores other processes used since ``before``: on a small shared machine, anyone
    else's work skews every figure, and this says when a run is not to be trusted."""
    after = cpu_snapshot()
    if before is None or after is None or after[0] <= before[0]:
        return None
    other = (after[1] - before[1]) - (after[2] - before[2])
    return max(other, 0.0) / (after[0] - before[0])


def run_guarded(name: str, result: Any, work: Callable[[Path], None]) -> Any:
    """Run one benchmark part's ``work`` in a scratch directory removed afterwards, keeping
    an error on ``result`` instead of raising it (the rows without figures then fail), and
    noting how long it took and how many cores others used meanwhile."""
    began = time.monotonic()
    before = cpu_snapshot()
    scratch = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    try:
        work(scratch)
    except Exception as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}")
        log(f"{name}: failed: {exc}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result.other_cores = other_cores(before)
    result.seconds = time.monotonic() - began
    return result


def run_scenarios(server: str, host: str, s: Settings) -> ServerResult:
    """Both scenarios against one running server; a failing scenario doesn't stop the other."""
    result = ServerResult(server)
    for name, scenario in (("throughput", throughput), ("latency", latency)):
        log(f"{server}: {name} ...")
        before = cpu_snapshot()
        try:
            setattr(result, name, scenario(host, s))
        except Exception as exc:
            result.errors[name] = f"{type(exc).__name__}: {exc}"
        other = other_cores(before)
        if other is not None:
            result.other_cores[name] = other
        elapsed = time.monotonic() - before[0] if before else 0.0
        log(f"{server}: {name} done in {elapsed:.1f}s")
    return result


def run_localcloud(s: Settings) -> ServerResult:
    data_dir = Path(tempfile.mkdtemp(prefix="bench-localcloud-"))
    try:
        instance = testing.start(data_dir)
        try:
            return run_scenarios("localcloud", instance.config.grpc_address, s)
        finally:
            instance.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def run_official(s: Settings) -> ServerResult:
    reason = testing.official_emulator_available() if s.official else "disabled (--no-official)"
    if reason:
        return ServerResult("official", skipped=reason)
    data_dir = Path(tempfile.mkdtemp(prefix="bench-official-"))
    try:
        log("official: starting the emulator ...")
        emulator = testing.start_official_emulator(data_dir)
        try:
            return run_scenarios("official", emulator.host, s)
        finally:
            emulator.stop()
    except RuntimeError as exc:
        return ServerResult("official", skipped=str(exc))
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def run(s: Settings) -> tuple[ServerResult, ServerResult]:
    """localcloud, then the official emulator: never both at once on a 2-core machine."""
    return run_localcloud(s), run_official(s)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)

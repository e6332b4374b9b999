"""Pub/Sub over REST (issue 17): localcloud's HTTP port against Google's official emulator's
REST, side by side in one run.

Both servers are started once (localcloud with its defaults, IAM enforced; the emulator with
``gcloud beta emulators pubsub start``, which answers HTTP/JSON on its one port) and driven by
the same aiohttp client, in alternating rounds (localcloud then the emulator, then the
emulator then localcloud, ...), so drift on a shared machine falls on both sides alike. Each
round, on each server, on a fresh topic and subscription:

- ``publishers`` tasks POST ``:publish`` with ``batch`` messages a request over keep-alive
  connections, until ``messages`` are published (the request bodies are encoded before the
  clock starts: the client's JSON is not what is measured);
- at the same time ``pullers`` tasks POST ``:pull`` (``maxMessages``) and then
  ``:acknowledge`` every ack id they were given, until every message has been received at
  least once (each is keyed by the index written into its data, so a redelivery counts once
  and is reported as such), or until the time limit, when the missing ones are counted lost.

Figures: end-to-end throughput, messages / (first publish to last acknowledge answered), and
the raw publish rate, messages / (first publish to last publish answered); medians over the
rounds. Each server's own CPU per 1,000 messages is noted too: a shared machine's other load
skews it far less than the wall-clock rates. The target: localcloud >= 2x the emulator's
end-to-end throughput, with nothing lost.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import statistics
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import pubsub
from benchmarks.pubsub import log, run_guarded
from localcloud import testing

PROJECT = "bench-project"
TARGET = 2.0  # localcloud's end-to-end throughput / the emulator's
SIDES = ("localcloud", "official")
NOISY_CORES = 0.25


@dataclass(frozen=True)
class RestSettings:
    messages: int = 20_000  # per round and server
    size: int = 200  # bytes of data per message
    batch: int = 100  # messages per publish request
    publishers: int = 4  # concurrent publishing tasks
    pullers: int = 4  # concurrent pull + acknowledge tasks
    max_messages: int = 1000  # per pull (Google's limit)
    rounds: int = 3  # per server, alternating
    timeout: float = 120.0  # per round and server
    official: bool = True

    @classmethod
    def for_run(
        cls, quick: bool, messages: int | None = None, official: bool = True
    ) -> RestSettings:
        if quick:
            return cls(messages=messages or 5_000, rounds=2, timeout=60.0, official=official)
        return cls(messages=messages or 20_000, official=official)


@dataclass
class Measure:
    """One round on one server."""

    expected: int
    published: int = 0  # messages the server confirmed (message ids answered)
    received: int = 0  # distinct messages pulled and acknowledged
    redelivered: int = 0  # deliveries of a message already received
    seconds: float = 0.0  # first publish to last acknowledge answered
    publish_seconds: float = 0.0  # first publish to last publish answered
    pulls: int = 0  # pull requests answered
    empty_pulls: int = 0  # of which without a message
    server_cpu_s: float | None = None  # the server's CPU time during the round
    other_cores: float | None = None
    error: str | None = None

    @property
    def lost(self) -> int:
        return self.expected - self.received

    @property
    def complete(self) -> bool:
        return self.error is None and self.received == self.expected

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0

    @property
    def publish_rate(self) -> float:
        return self.published / self.publish_seconds if self.publish_seconds > 0 else 0.0

    @property
    def cpu_per_k(self) -> float | None:
        if self.server_cpu_s is None or not self.received:
            return None
        return self.server_cpu_s / self.received * 1000


@dataclass
class Side:
    server: str
    rounds: list[Measure] = field(default_factory=list)
    skipped: str | None = None

    def _median(self, attr: str) -> float | None:
        values = [getattr(m, attr) for m in self.rounds if m.complete]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else None

    @property
    def throughput(self) -> float | None:
        return self._median("rate")

    @property
    def publish_rate(self) -> float | None:
        return self._median("publish_rate")

    @property
    def cpu(self) -> float | None:
        return self._median("cpu_per_k")

    @property
    def complete(self) -> bool:
        return bool(self.rounds) and all(m.complete for m in self.rounds)


@dataclass
class RestResult:
    sides: dict[str, Side] = field(default_factory=lambda: {s: Side(s) for s in SIDES})
    errors: list[str] = field(default_factory=list)
    other_cores: float | None = None
    seconds: float = 0.0

    def ratio(self, attr: str) -> float | None:
        lc, off = getattr(self.sides["localcloud"], attr), getattr(self.sides["official"], attr)
        return None if lc is None or not off else lc / off


class Client:
    """Pub/Sub's REST API at ``base`` (``http://host:port``), over one keep-alive session."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def call(self, method: str, path: str, body: bytes | dict[str, Any]) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.session.request(
            method,
            f"{self.base}/v1/{path}",
            data=data,
            headers={"Content-Type": "application/json"},
        ) as response:
            text = await response.read()
            if response.status != 200:
                raise RuntimeError(f"{method} {path}: HTTP {response.status}: {text[:300]!r}")
            return json.loads(text) if text.strip() else {}


def publish_bodies(s: RestSettings) -> list[tuple[int, bytes]]:
    """The publish requests, encoded ahead: (messages in it, JSON body)."""
    out = []
    for first in range(0, s.messages, s.batch):
        indexes = range(first, min(first + s.batch, s.messages))
        messages = [
            {"data": base64.b64encode(str(i).encode().ljust(s.size)).decode()} for i in indexes
        ]
        out.append((len(indexes), json.dumps({"messages": messages}).encode()))
    return out


async def measure(base: str, s: RestSettings, bodies: list[tuple[int, bytes]]) -> Measure:
    """One round on the server at ``base``: a fresh topic and subscription, one message
    round trip to warm both up, then the clock: publish everything while pulling."""
    m = Measure(expected=s.messages)
    suffix = uuid.uuid4().hex[:12]
    topic = f"projects/{PROJECT}/topics/bench-rest-{suffix}"
    sub = f"projects/{PROJECT}/subscriptions/bench-rest-{suffix}"
    connector = aiohttp.TCPConnector(limit=s.publishers + s.pullers + 2)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=s.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        client = Client(session, base)
        await client.call("PUT", topic, {})
        await client.call("PUT", sub, {"topic": topic, "ackDeadlineSeconds": 60})
        warm = json.dumps({"messages": [{"data": base64.b64encode(b"-1").decode()}]}).encode()
        await client.call("POST", f"{topic}:publish", warm)
        while True:
            got = await client.call("POST", f"{sub}:pull", {"maxMessages": 10})
            acks = [r["ackId"] for r in got.get("receivedMessages", [])]
            if acks:
                await client.call("POST", f"{sub}:acknowledge", {"ackIds": acks})
                break
        seen: set[int] = set()
        done = asyncio.Event()
        queue = list(reversed(bodies))
        last_ack = last_publish = 0.0

        async def publisher() -> None:
            nonlocal last_publish
            while queue:
                count, body = queue.pop()
                answer = await client.call("POST", f"{topic}:publish", body)
                m.published += min(len(answer.get("messageIds", [])), count)
                last_publish = time.perf_counter()

        async def puller() -> None:
            nonlocal last_ack
            pull = json.dumps({"maxMessages": s.max_messages}).encode()
            while not done.is_set():
                got = await client.call("POST", f"{sub}:pull", pull)
                m.pulls += 1
                received = got.get("receivedMessages", [])
                if not received:
                    m.empty_pulls += 1
                    continue
                acks = []
                indexes = []
                for r in received:
                    acks.append(r["ackId"])
                    indexes.append(int(base64.b64decode(r["message"].get("data", ""))))
                await client.call("POST", f"{sub}:acknowledge", {"ackIds": acks})
                last_ack = time.perf_counter()
                for index in indexes:
                    if index < 0:
                        continue
                    if index in seen:
                        m.redelivered += 1
                    else:
                        seen.add(index)
                if len(seen) >= s.messages:
                    done.set()

        start = time.perf_counter()
        pullers = [asyncio.create_task(puller()) for _ in range(s.pullers)]
        try:
            async with asyncio.timeout(s.timeout):
                await asyncio.gather(*(publisher() for _ in range(s.publishers)))
                m.publish_seconds = last_publish - start
                await done.wait()
        except TimeoutError:
            m.error = f"not every message arrived within {s.timeout:g} s"
        finally:
            for task in pullers:
                task.cancel()
            for task in pullers:
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception as exc:  # a puller failed: the round says why
                    m.error = m.error or f"{type(exc).__name__}: {exc}"
        m.received = len(seen)
        m.seconds = max(last_ack - start, 0.0)
    return m


def tree_cpu(pid: int) -> float:
    """CPU-seconds a process and its descendants have used (the emulator is Java under
    gcloud's Python wrapper, localcloud serves Pub/Sub in its own process)."""
    stats: dict[int, tuple[int, float]] = {}
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                f = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = (int(f[1]), (int(f[11]) + int(f[12])) * tick)
    tree, grew = {pid}, True
    while grew:
        new = {p for p, (parent, _) in stats.items() if parent in tree} - tree
        tree |= new
        grew = bool(new)
    return sum(stats[p][1] for p in tree if p in stats)


def one_round(base: str, pid: int, s: RestSettings, bodies: list[tuple[int, bytes]]) -> Measure:
    before = pubsub.cpu_snapshot()
    cpu = tree_cpu(pid)
    try:
        m = asyncio.run(measure(base, s, bodies))
    except Exception as exc:
        m = Measure(expected=s.messages, error=f"{type(exc).__name__}: {exc}")
    m.server_cpu_s = tree_cpu(pid) - cpu
    m.other_cores = pubsub.other_cores(before)
    return m


def bench(s: RestSettings, result: RestResult, scratch: Path) -> None:
    bodies = publish_bodies(s)
    servers: dict[str, tuple[str, int]] = {}  # side -> (base URL, pid)
    stops = []
    try:
        log("rest: starting localcloud ...")
        instance = testing.start(scratch / "localcloud")
        stops.append(instance.stop)
        servers["localcloud"] = (instance.config.http_url, instance.process.pid)
        off = result.sides["official"]
        reason = testing.official_emulator_available() if s.official else "disabled"
        if reason:
            off.skipped = reason
        else:
            log("rest: starting the official emulator ...")
            try:
                emulator = testing.start_official_emulator(scratch / "official")
                stops.append(emulator.stop)
                servers["official"] = (f"http://{emulator.host}", emulator.process.pid)
            except RuntimeError as exc:
                off.skipped = str(exc)
        for side, (base, _) in servers.items():
            # One uncounted round each: the emulator's JVM compiles its hot paths, and
            # localcloud's first publish creates its SQLite tables' pages.
            m = asyncio.run(measure(base, s, bodies))
            log(f"rest: warm-up {side}: {m.rate:,.0f} msg/s" + (f": {m.error}" if m.error else ""))
        for n in range(s.rounds):
            for side in SIDES if n % 2 == 0 else SIDES[::-1]:
                if side not in servers:
                    continue
                base, pid = servers[side]
                m = one_round(base, pid, s, bodies)
                result.sides[side].rounds.append(m)
                log(
                    f"rest: round {n} {side}: {m.rate:,.0f} msg/s end to end, publish "
                    f"{m.publish_rate:,.0f} msg/s ({m.received:,}/{m.expected:,} received, "
                    f"{m.redelivered} redelivered)" + (f": {m.error}" if m.error else "")
                )
    finally:
        for stop in reversed(stops):
            stop()


def run(s: RestSettings) -> RestResult:
    """Errors are kept, not raised: the rows without figures fail."""
    result = RestResult()
    return run_guarded("rest", result, lambda scratch: bench(s, result, scratch))


def rows(r: RestResult) -> list[tuple[str, str, float | None, float | None, str, bool | None]]:
    """(scenario, unit, localcloud, official, target, ok): the throughput row fails when
    localcloud lost a message or missed the target against an emulator that ran."""
    lc, off = r.sides["localcloud"], r.sides["official"]
    ratio = r.ratio("throughput")
    ok: bool | None = None
    if r.errors or not lc.complete:
        ok = False
    elif ratio is not None:
        ok = ratio >= TARGET
    elif off.skipped is None:  # the emulator ran and has no figure: nothing to compare
        ok = False
    return [
        (
            "rest Pub/Sub throughput, publish → pull + ack",
            "msg/s",
            lc.throughput,
            off.throughput,
            f">= {TARGET:g}x official",
            ok,
        ),
        ("rest Pub/Sub publish rate", "msg/s", lc.publish_rate, off.publish_rate, "", None),
        ("rest server CPU per 1,000 messages", "s", lc.cpu, off.cpu, "", None),
    ]


def passed(r: RestResult) -> bool:
    return all(ok is not False for *_, ok in rows(r))


def notes(s: RestSettings, r: RestResult) -> list[str]:
    out = [
        f"rest: {s.messages:,} messages of {s.size} B per round and server, {s.publishers} "
        f"publishers x {s.batch} messages a request, {s.pullers} pullers (maxMessages "
        f"{s.max_messages}) acknowledging each pull; one uncounted warm-up round per server, then {s.rounds} "
        "alternating rounds; medians; the publish rate is measured while the pullers run",
    ]
    for side in r.sides.values():
        if side.skipped:
            out.append(f"rest {side.server}: not run: {side.skipped}")
            continue
        for n, m in enumerate(side.rounds):
            cpu = "-" if m.cpu_per_k is None else f"{m.cpu_per_k:.3f}"
            out.append(
                f"rest {side.server} round {n}: {m.rate:,.0f} msg/s end to end in "
                f"{m.seconds:.2f} s, publish {m.publish_rate:,.0f} msg/s; {m.received:,}/"
                f"{m.expected:,} received ({m.lost} lost, {m.redelivered} redelivered), "
                f"{m.pulls} pulls ({m.empty_pulls} empty); server CPU per 1,000 messages "
                f"{cpu} s" + (f"; ERROR {m.error}" if m.error else "")
            )
            if m.other_cores is not None and m.other_cores > NOISY_CORES:
                out.append(
                    f"rest {side.server} round {n}: WARNING: other processes used "
                    f"{m.other_cores:.2f} cores meanwhile; the figures are skewed"
                )
    out.extend(f"rest: ERROR {e}" for e in r.errors)
    out.append(f"rest: wall time {r.seconds:.0f} s")
    return out


def _v(value: float | None, spec: str, unit: str) -> str:
    return "-" if value is None else f"{format(value, spec)} {unit}"


def markdown(s: RestSettings, r: RestResult) -> str:
    lc, off = r.sides["localcloud"], r.sides["official"]

    def ratio(attr: str) -> str:
        value = r.ratio(attr)
        return "-" if value is None else f"{value:.2f}x"

    lines = [
        "| Pub/Sub over REST (HTTP/JSON), aiohttp keep-alive, alternating rounds "
        "| localcloud | official emulator | localcloud / official | target |",
        "|---|---:|---:|---:|---|",
        f"| Throughput, {s.messages:,} messages of {s.size} B, publish → pull + acknowledge, "
        f"median of {s.rounds} | {_v(lc.throughput, ',.0f', 'msg/s')} "
        f"| {_v(off.throughput, ',.0f', 'msg/s')} | {ratio('throughput')} | >= {TARGET:g}x |",
        f"| Publish rate, {s.publishers} publishers x {s.batch} messages a request "
        f"| {_v(lc.publish_rate, ',.0f', 'msg/s')} | {_v(off.publish_rate, ',.0f', 'msg/s')} "
        f"| {ratio('publish_rate')} | - |",
        f"| Server CPU per 1,000 messages | {_v(lc.cpu, '.3f', 's')} "
        f"| {_v(off.cpu, '.3f', 's')} | {ratio('cpu')} | - |",
        "",
        "Both servers run at once, each driven in turn by the same aiohttp client (keep-alive, "
        f"{s.publishers} publishing and {s.pullers} pulling tasks, request bodies encoded "
        "before the clock starts) after one uncounted warm-up round each; the pullers ack "
        "every pull at once, and a round counts only when every message arrived. localcloud "
        "commits every publish and ack to SQLite before answering; the emulator keeps them "
        "in memory.",
    ]
    return "\n".join(lines)


def to_json(s: RestSettings, r: RestResult) -> dict[str, Any]:
    return {
        "settings": asdict(s),
        "sides": {
            name: asdict(side)
            | {a: getattr(side, a) for a in ("throughput", "publish_rate", "cpu", "complete")}
            for name, side in r.sides.items()
        },
        "ratios": {a: r.ratio(a) for a in ("throughput", "publish_rate", "cpu")},
        "errors": r.errors,
        "other_cores": r.other_cores,
        "seconds": r.seconds,
    }

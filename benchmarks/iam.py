"""What IAM enforcement costs (issue 16): the same figures with ``LOCALCLOUD_IAM=off`` (no
permission checked) and ``enforce`` (every call checked), side by side in one run.

Two localclouds run side by side, one in each mode, each on its own data directory with the
pipeline provisioned (``orch.provision``, which applies Terraform's grants, so the pipeline
runs under ``enforce``), and each given one warm-up deploy (the pipeline's functions start
cold). Then, round after round, the two are measured interleaved, one run at a time (off then
enforce, then enforce then off, ...), so load from other work on a shared machine, which
comes and goes over seconds to minutes, falls on both alike:

- Pub/Sub end-to-end throughput with the official client: ``benchmarks.pubsub.throughput``
  (``--messages`` messages, default batching, first publish to last receipt and ack), and
  the server process's CPU-seconds meanwhile;
- zip-to-serving through the deploy pipeline: ``benchmarks.pipeline``'s deploy of the
  no-dependency HTTP function (upload to the sources bucket returned → the service answers
  the new text).

An earlier form restarted one localcloud in each mode in turn: every restart started the
pipeline's instances again, seconds of CPU that each mode's runs overlapped differently,
and a mode's runs came minutes apart from the other's.

Judged on ratios paired by round: each round's enforce figure (its runs' median, its
deploys' median) divided by the same round's off figure, and the target on the median of
those ratios: enforce within 5% of off, throughput ratio >= 0.95, time ratio <= 1.05. The
medians over every run are reported too. Both localclouds are stopped at the end.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import pipeline as pipeline_bench
from benchmarks import pubsub
from benchmarks import run as run_bench
from benchmarks.pubsub import log, run_guarded
from localcloud import testing
from orchestrator.clients import Clients, Environment
from orchestrator.config import Settings

MODES = ("off", "enforce")
TARGET = 0.05  # enforce within 5% of off


@dataclass(frozen=True)
class IamSettings:
    rounds: int = 5  # restarts per mode
    deploys: int = 3  # counted deploys per round and mode
    messages: int = 20_000  # per throughput measurement
    pubsub_runs: int = 2  # throughput measurements per round and mode
    size: int = 200
    timeout: float = 180.0  # per deploy; per throughput measurement

    @classmethod
    def for_run(cls, quick: bool, messages: int | None = None) -> IamSettings:
        if quick:
            # Two rounds: each mode once first and once second, or the ratio is the order's.
            return cls(
                rounds=2, deploys=2, messages=messages or 5_000, pubsub_runs=1, timeout=120.0
            )
        return cls(messages=messages or 20_000)


@dataclass
class Side:
    """One mode's figures, over every round."""

    mode: str
    throughputs: list[float] = field(default_factory=list)  # msg/s, every complete run
    incomplete: int = 0  # throughput runs that lost messages
    # localcloud's CPU-seconds per 1,000 messages of a throughput run: what the checks cost
    # in work, which other load on a shared machine skews far less than wall-clock rates.
    cpu_per_k: list[float] = field(default_factory=list)
    serving_s: list[float] = field(default_factory=list)  # every counted deploy
    failed: list[str] = field(default_factory=list)  # deploys that did not serve

    @property
    def throughput(self) -> float | None:
        return statistics.median(self.throughputs) if self.throughputs else None

    @property
    def serving(self) -> float | None:
        return statistics.median(self.serving_s) if self.serving_s else None

    @property
    def cpu(self) -> float | None:
        return statistics.median(self.cpu_per_k) if self.cpu_per_k else None


@dataclass
class IamResult:
    sides: dict[str, Side] = field(default_factory=lambda: {m: Side(m) for m in MODES})
    provision_s: float | None = None
    errors: list[str] = field(default_factory=list)
    other_cores: float | None = None
    seconds: float = 0.0
    # enforce / off of each round's figures ("throughput", "serving", "cpu"), one per round
    # where both modes have one.
    paired: dict[str, list[float]] = field(default_factory=dict)

    def ratio(self, attr: str) -> float | None:
        """enforce / off of the medians over every run."""
        on, off = getattr(self.sides["enforce"], attr), getattr(self.sides["off"], attr)
        return None if on is None or not off else on / off

    def paired_ratio(self, attr: str) -> float | None:
        """The median of the rounds' enforce / off: what the targets judge."""
        ratios = self.paired.get(attr)
        return statistics.median(ratios) if ratios else None


class Server:
    """One localcloud in one mode, with the pipeline provisioned on it."""

    def __init__(self, mode: str, s: IamSettings, scratch: Path) -> None:
        self.mode = mode
        scratch.mkdir(parents=True, exist_ok=True)
        # The pipeline benchmark's own deploy machinery, driven here one deploy at a time.
        self.pipeline = pipeline_bench.Bench(
            pipeline_bench.PipelineSettings(timeout=s.timeout),
            pipeline_bench.PipelineResult(),
            scratch,
        )
        self.case = self.pipeline.result.cases["plain"]
        self.case.service = pipeline_bench.PLAIN_SERVICE
        self.instance: testing.Instance | None = None

    def start(self) -> float:
        """Start it and provision the pipeline; the provisioning's seconds."""
        log(f"iam: starting localcloud with LOCALCLOUD_IAM={self.mode} ...")
        self.instance = testing.start(
            self.pipeline.data_dir, extra_env={"LOCALCLOUD_IAM": self.mode}
        )
        env = {**self.instance.env, "ORCH_CONFIG": str(self.pipeline.scratch / "none.json")}
        # Provisioning reads the process's environment; what is measured afterwards only
        # goes through these clients, which hold their own endpoints.
        with testing.patched_environ(env):
            self.pipeline.clients = Clients(Environment.from_env(env))
            self.pipeline.settings = Settings.from_env(env)
            t0 = time.perf_counter()
            self.pipeline.provision()
        return time.perf_counter() - t0

    def stop(self) -> None:
        if self.pipeline.__dict__.get("clients") is not None:
            run_bench.close(self.pipeline.clients)
        if self.instance is not None:
            self.instance.stop()


class Bench:
    def __init__(self, s: IamSettings, result: IamResult, scratch: Path) -> None:
        self.s, self.result = s, result
        self.servers = {mode: Server(mode, s, scratch / mode) for mode in MODES}
        self.deploys = 0

    def run(self) -> None:
        try:
            provisioned = [self.servers[mode].start() for mode in MODES]
            self.result.provision_s = statistics.median(provisioned)
            log(f"iam: provisioned in {', '.join(f'{t:.1f}' for t in provisioned)} s")
            for mode in MODES:  # the pipeline's functions, cold until a first deploy
                self.deploy(-1, mode, counted=False)
            for n in range(self.s.rounds):
                self.pair(self.round(n, MODES if n % 2 == 0 else MODES[::-1]))
        finally:
            for server in self.servers.values():
                server.stop()

    def pair(self, figures: dict[str, dict[str, float | None]]) -> None:
        """One round's enforce / off, for each figure both modes have."""
        for attr, on in figures["enforce"].items():
            off = figures["off"].get(attr)
            if on is not None and off:
                self.result.paired.setdefault(attr, []).append(on / off)

    def round(self, n: int, order: tuple[str, ...]) -> dict[str, dict[str, float | None]]:
        """Both modes once, interleaved run by run in ``order``: each throughput run, then
        each deploy, goes to one server and then the other, seconds apart, so load from
        other work on the machine falls on both alike. Each mode's figures for this round
        (None where none completed)."""
        rates: dict[str, list[float]] = {m: [] for m in order}
        cpus: dict[str, list[float]] = {m: [] for m in order}
        times: dict[str, list[float]] = {m: [] for m in order}
        for _ in range(self.s.pubsub_runs):
            for mode in order:
                self.throughput(n, mode, rates[mode], cpus[mode])
        for _ in range(self.s.deploys):
            for mode in order:
                took = self.deploy(n, mode)
                if took is not None:
                    times[mode].append(took)
        figures: dict[str, dict[str, float | None]] = {}
        for mode in order:
            side = self.result.sides[mode]
            side.throughputs.extend(rates[mode])
            side.cpu_per_k.extend(cpus[mode])
            side.serving_s.extend(times[mode])
            figures[mode] = {
                "throughput": statistics.median(rates[mode]) if rates[mode] else None,
                "cpu": statistics.median(cpus[mode]) if cpus[mode] else None,
                "serving": statistics.median(times[mode]) if times[mode] else None,
            }
        return figures

    def throughput(self, n: int, mode: str, rates: list[float], cpus: list[float]) -> None:
        instance = self.servers[mode].instance
        assert instance is not None
        settings = pubsub.Settings(
            messages=self.s.messages, size=self.s.size, timeout=self.s.timeout
        )
        cpu_before = process_cpu(instance.process.pid)
        t = pubsub.throughput(instance.config.grpc_address, settings)
        cpu = process_cpu(instance.process.pid) - cpu_before
        if t.complete:
            rates.append(t.rate)
            cpus.append(cpu / (t.expected + 1) * 1000)  # + the warm-up message
        else:
            self.result.sides[mode].incomplete += 1
        log(f"iam: round {n} {mode}: Pub/Sub {t.rate:,.0f} msg/s ({t.received}/{t.expected})")

    def deploy(self, n: int, mode: str, counted: bool = True) -> float | None:
        """One zip-to-serving deploy; its time, or None (and the failure kept)."""
        server, side = self.servers[mode], self.result.sides[mode]
        d = pipeline_bench.Deploy(self.deploys)
        self.deploys += 1
        marker = f"v{d.n:03d}-{mode}"
        try:
            server.pipeline.deploy(server.case, d, pipeline_bench.plain_files(marker), marker)
        except Exception as exc:
            d.error = d.error or f"{type(exc).__name__}: {exc}"
        if not d.ok or d.total_s is None:
            side.failed.append(f"deploy {d.n}: {d.error}")
            log(f"iam: round {n} {mode}: deploy {d.n} FAILED: {d.error}")
            return None
        log(
            f"iam: round {n} {mode}: deploy {d.n}: {d.total_s:.2f} s"
            + ("" if counted else " (warm-up)")
        )
        return d.total_s


def process_cpu(pid: int) -> float:
    """CPU-seconds (user + system, every thread) a process has used: localcloud's API
    server serves Pub/Sub in its own process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(s: IamSettings) -> IamResult:
    """Errors are kept, not raised: the rows without figures fail."""
    result = IamResult()
    return run_guarded("iam", result, lambda scratch: Bench(s, result, scratch).run())


def complete(r: IamResult) -> bool:
    return not r.errors and all(
        side.throughputs and not side.incomplete and side.serving_s and not side.failed
        for side in r.sides.values()
    )


def rows(r: IamResult) -> list[tuple[str, str, float | None, float | None, str, bool | None]]:
    """(scenario, unit, enforce, off, target, ok): the medians over every run, and the
    judged ratios, paired by round (unit "x", no reference: the value is the ratio)."""
    whole = complete(r)
    t_ratio, s_ratio = r.paired_ratio("throughput"), r.paired_ratio("serving")
    return [
        (
            "iam Pub/Sub throughput, enforce vs off",
            "msg/s",
            r.sides["enforce"].throughput,
            r.sides["off"].throughput,
            "",
            None,
        ),
        (
            "iam Pub/Sub throughput, enforce / off paired by round, median",
            "x",
            t_ratio,
            None,
            f">= {1 - TARGET:.2f}x",
            whole and t_ratio is not None and t_ratio >= 1 - TARGET,
        ),
        (
            "iam zip-to-serving p50, enforce vs off",
            "s",
            r.sides["enforce"].serving,
            r.sides["off"].serving,
            "",
            None,
        ),
        (
            "iam zip-to-serving, enforce / off paired by round, median",
            "x",
            s_ratio,
            None,
            f"<= {1 + TARGET:.2f}x",
            whole and s_ratio is not None and s_ratio <= 1 + TARGET,
        ),
        (
            "iam Pub/Sub server CPU per 1,000 messages",
            "s",
            r.sides["enforce"].cpu,
            r.sides["off"].cpu,
            "",
            None,
        ),
    ]


def passed(r: IamResult) -> bool:
    return complete(r) and all(ok is not False for *_, ok in rows(r))


def notes(s: IamSettings, r: IamResult) -> list[str]:
    out = [
        f"iam: two localclouds side by side, one per mode, each with the pipeline "
        f"provisioned ({_s(r.provision_s)} s, Terraform's grants applied) and one warm-up "
        f"deploy; {s.rounds} rounds, each interleaving the modes run by run: "
        f"{s.pubsub_runs} Pub/Sub throughput run(s) ({s.messages:,} messages of {s.size} B) "
        f"and {s.deploys} deploys of the no-dependency function per mode; judged on the "
        "median of the rounds' enforce / off",
    ]
    for attr in ("throughput", "serving", "cpu"):
        ratios = ", ".join(f"{x:.3f}" for x in r.paired.get(attr, [])) or "-"
        out.append(f"iam enforce / off per round, {attr}: {ratios}")
    for side in r.sides.values():
        tps = ", ".join(f"{x:,.0f}" for x in side.throughputs) or "-"
        times = ", ".join(f"{x:.2f}" for x in side.serving_s) or "-"
        cpus = ", ".join(f"{x:.3f}" for x in side.cpu_per_k) or "-"
        out.append(
            f"iam {side.mode}: throughput per run {tps} msg/s (localcloud CPU per 1,000 "
            f"messages {cpus} s); zip-to-serving {times} s"
        )
        if side.incomplete:
            out.append(f"iam {side.mode}: {side.incomplete} throughput run(s) lost messages")
        out.extend(f"iam {side.mode}: FAILED {f}" for f in side.failed)
    out.extend(f"iam: ERROR {e}" for e in r.errors)
    if r.other_cores is not None and r.other_cores > 0.25:
        out.append(
            f"iam: WARNING: other processes used {r.other_cores:.2f} cores meanwhile; "
            "the figures are skewed by other work on this machine"
        )
    out.append(f"iam: wall time {r.seconds:.0f} s")
    return out


def _s(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def markdown(s: IamSettings, r: IamResult) -> str:
    off, on = r.sides["off"], r.sides["enforce"]

    def ratio(attr: str) -> str:
        value = r.ratio(attr)
        return "-" if value is None else f"{value:.3f}x"

    def paired(attr: str) -> str:
        value = r.paired_ratio(attr)
        return "-" if value is None else f"{value:.3f}x"

    lines = [
        "| IAM enforcement, two localclouds side by side, interleaved run by run "
        "| `LOCALCLOUD_IAM=off` | `enforce` | enforce / off, of the medians "
        "| enforce / off paired by round, median | target |",
        "|---|---:|---:|---:|---:|---|",
        f"| Pub/Sub throughput, {s.messages:,} messages of {s.size} B, official client, "
        f"median of {len(off.throughputs)} / {len(on.throughputs)} runs "
        f"| {_s(off.throughput, ',.0f')} msg/s | {_s(on.throughput, ',.0f')} msg/s "
        f"| {ratio('throughput')} | {paired('throughput')} | >= {1 - TARGET:.2f}x |",
        f"| Zip to serving (no-dependency function), median of {len(off.serving_s)} / "
        f"{len(on.serving_s)} deploys | {_s(off.serving, '.2f')} s "
        f"| {_s(on.serving, '.2f')} s | {ratio('serving')} | {paired('serving')} "
        f"| <= {1 + TARGET:.2f}x |",
        f"| localcloud's CPU per 1,000 messages of the throughput runs, median "
        f"| {_s(off.cpu, '.3f')} s | {_s(on.cpu, '.3f')} s | {ratio('cpu')} | {paired('cpu')} "
        "| - |",
    ]
    return "\n".join(lines)


def to_json(s: IamSettings, r: IamResult) -> dict[str, Any]:
    return {
        "settings": asdict(s),
        "sides": {
            m: asdict(side) | {a: getattr(side, a) for a in ("throughput", "serving", "cpu")}
            for m, side in r.sides.items()
        },
        "ratios": {a: r.ratio(a) for a in ("throughput", "serving", "cpu")},
        "paired": r.paired,
        "paired_ratios": {a: r.paired_ratio(a) for a in ("throughput", "serving", "cpu")},
        "provision_s": r.provision_s,
        "errors": r.errors,
        "other_cores": r.other_cores,
        "seconds": r.seconds,
    }

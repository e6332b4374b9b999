"""``python -m benchmarks`` (``make bench``): run every benchmark, print a table, save JSON.

The figures that matter are ratios against a reference measured in the same run on the
same machine: for Pub/Sub, Google's official emulator (plus localcloud's absolute p50
latency); for Cloud Build, the irreducible work of each build (unzip, pip install, tar.gz)
done directly (plus the absolute time of a warm source-only rebuild). The markdown
snippet printed at the end is what goes into docs/performance.md (its headline rows into
the README), so the figures always come from this command. The exit code is 1 when a row fails its target, loses messages
or a build fails, so a regression is visible to whoever runs it. For Cloud Run, the
ingress against the same functions-framework process called directly (throughput and
latency, alternating rounds), and a cold start against functions-framework started by hand.
``--only build``, ``--only pubsub`` or ``--only run`` runs one of them.
For Cloud Workflows (``--only workflows``), a loop's step rate against the PyPI
``workflows-emulator`` on the same file, memory per execution, and the overhead of an
``http.post`` step against a direct POST.
For the deploy pipeline (``--only pipeline``), a zip uploaded to the sources bucket until the
service answers the new source (Python without and with a dependency, Node.js without),
p50/p95, each step's time from the status events, against the same deploy's build, push
and process start done directly; the Python no-dependency p50 under 0.8 s (issue 19).
For recovery (``--only recovery``), localcloud's process group SIGKILLed mid-deployment and
``orch local up`` run again: until the service answers and until the deployment's ``done``
event, against the same deploy not killed.
For IAM enforcement (``--only iam``), Pub/Sub throughput and zip-to-serving with
``LOCALCLOUD_IAM=enforce`` against ``off`` (nothing checked), on one localcloud restarted
in each mode: enforce within 5%.
For Pub/Sub over REST (``--only rest``), publishers POSTing batches and pullers pulling and
acknowledging over keep-alive HTTP, against the official emulator's REST in alternating
rounds: at least 2x its end-to-end throughput.
For ``orch console`` (``--only console``), its deployments page with 1,000 deployments
served over loopback: under 300 ms.
For Python cold starts (``--only coldstart``), a scaled-to-zero service's first 200 against a
bare ``functions-framework`` start of the same source from a fresh copy (which compiles),
alternating rounds: at most 0.6x; for Node.js, against a bare ``npx functions-framework`` start
of the same source from a fresh copy: at most 1.2x.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import build, pubsub
from benchmarks import coldstart as cold_bench
from benchmarks import console as console_bench
from benchmarks import eventarc as events_bench
from benchmarks import iam as iam_bench
from benchmarks import pipeline as pipeline_bench
from benchmarks import recovery as recovery_bench
from benchmarks import rest as rest_bench
from benchmarks import run as cloud_run
from benchmarks import workflows as workflows_bench
from benchmarks.build import BuildResult, BuildSettings
from benchmarks.pubsub import Latency, ServerResult, Settings, Throughput
from benchmarks.run import RunResult, RunSettings
from localcloud.cloudbuild import buildpack
from localcloud.run import stage

ROOT = Path(__file__).resolve().parent.parent
P50_TARGET_MS = 10.0
NOISY_CORES = 0.25  # other processes using more than this during a scenario: say so
THROUGHPUT_TARGET = 2.0
BUILD_OVERHEAD_TARGET = 0.20  # cold builds: (build - irreducible) / irreducible
WARM_TARGET_S = 1.0  # a warm rebuild of a source-only change
RUN_THROUGHPUT_TARGET = 0.85  # ingress / direct requests/s at the highest concurrency
RUN_ADDED_P50_MS = 1.0  # ingress p50 - direct p50 at concurrency 1
RUN_COLD_TARGET = 1.2  # first request to a scaled-to-zero service / bare process start
# Containment (own user and network namespaces, seccomp, cgroup limits) against the earlier
# filesystem-only sandbox, side by side: within 10% (issue 12).
CONTAINMENT_TARGET = 0.10


@dataclass
class Row:
    scenario: str
    unit: str
    localcloud: float | None
    official: float | None
    target: str
    ok: bool | None  # None: nothing to judge (informational, or no reference)
    group: str = "pubsub"  # "build": ``official`` is the irreducible work; "run": direct

    @property
    def ratio(self) -> float | None:
        """localcloud / reference, whatever the unit (for latency and time, lower is better)."""
        if self.localcloud is None or not self.official:
            return None
        return self.localcloud / self.official


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer messages, shorter runs")
    parser.add_argument("--messages", type=int, help="throughput: messages (20000; quick 5000)")
    parser.add_argument("--size", type=int, default=200, help="message size in bytes (200)")
    parser.add_argument("--rate", type=float, default=500.0, help="latency: messages/s (500)")
    parser.add_argument("--duration", type=float, help="latency: seconds (10; quick 3)")
    parser.add_argument("--timeout", type=float, help="per-scenario limit, s (120; quick 30)")
    parser.add_argument("--no-official", action="store_true", help="skip the official emulator")
    parser.add_argument(
        "--only",
        choices=(
            "build",
            "pubsub",
            "run",
            "eventarc",
            "workflows",
            "pipeline",
            "recovery",
            "iam",
            "rest",
            "console",
            "coldstart",
        ),
        help="run only the Cloud Build, Pub/Sub, Cloud Run, Eventarc, Workflows, deploy "
        "pipeline, recovery, IAM enforcement, Pub/Sub over REST, console or cold start (Python, Node.js) part",
    )
    parser.add_argument(
        "--repeats", type=int, help="build: fresh localcloud data dirs, each cold (3; quick 1)"
    )
    parser.add_argument(
        "--rounds", type=int, help="run: rounds per side, concurrency and client (3; quick 2)"
    )
    parser.add_argument(
        "--round-seconds", type=float, help="run: seconds per round (1; wrk: whole seconds)"
    )
    parser.add_argument(
        "--cold-starts",
        type=int,
        help="run: cold starts of each kind (5; quick 3); coldstart: rounds (7; quick 3)",
    )
    parser.add_argument("--no-wrk", action="store_true", help="run: the Python load generator only")
    parser.add_argument("--output", type=Path, help="JSON results (.bench/results.json)")
    args = parser.parse_args(argv)
    if args.output is None:  # a partial run must not overwrite the figures the README quotes
        name = "results" + ("-quick" if args.quick else "") + (f"-{args.only}" if args.only else "")
        args.output = ROOT / ".bench" / f"{name}.json"
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    quick = args.quick
    return Settings(
        messages=args.messages or (5_000 if quick else 20_000),
        size=max(args.size, 64),  # room for the index and the send timestamp
        rate=args.rate,
        duration=args.duration or (3.0 if quick else 10.0),
        timeout=args.timeout or (30.0 if quick else 120.0),
        official=not args.no_official,
    )


def build_settings_from(args: argparse.Namespace) -> BuildSettings:
    return BuildSettings(
        repeats=max(args.repeats or (1 if args.quick else 3), 1),
        warm=2 if args.quick else 3,
        timeout=args.timeout or 180.0,
    )


def run_settings_from(args: argparse.Namespace) -> RunSettings:
    return RunSettings(
        rounds=max(args.rounds or (2 if args.quick else 3), 1),
        round_seconds=max(args.round_seconds or 1.0, 0.1),
        cold_starts=max(args.cold_starts or (3 if args.quick else 5), 1),
        wrk=not args.no_wrk,
        timeout=args.timeout or 60.0,
    )


def build_rows(lc: ServerResult, off: ServerResult) -> list[Row]:
    """The table: one row per figure; a row whose localcloud run lost messages fails."""
    lt, ot = lc.throughput, off.throughput
    t_row = Row(
        "throughput",
        "msg/s",
        lt.rate if lt else None,
        ot.rate if ot else None,
        f">= {THROUGHPUT_TARGET:g}x official",
        None,
    )
    if lt is None or not lt.complete:
        t_row.ok = False
    elif t_row.ratio is not None:
        t_row.ok = t_row.ratio >= THROUGHPUT_TARGET
    rows = [t_row]
    ll, ol = lc.latency, off.latency
    for label, attr, target in (
        ("latency p50", "p50_ms", f"< {P50_TARGET_MS:g} ms"),
        ("latency p99", "p99_ms", ""),
        ("latency max", "max_ms", ""),
    ):
        value: float | None = getattr(ll, attr) if ll else None
        ok: bool | None = None
        if ll is None or not ll.complete:
            ok = False
        elif target:
            ok = getattr(ll, attr) < P50_TARGET_MS
        rows.append(Row(label, "ms", value, getattr(ol, attr) if ol else None, target, ok))
    return rows


def cloud_build_rows(r: BuildResult) -> list[Row]:
    """Per case: end to end through the client, and the build's own start→finish, each
    against the irreducible work; cold cases add the builder's overhead (judged), warm
    source-only rebuilds are judged on their end-to-end time. A case with a failed build
    (or a dependency not taken from the cache) fails."""
    rows = []
    for key in build.CASES:
        case = r.cases[key]
        judged = key in ("warm-source", "deps-source")
        for label, value in (("", case.client_s), (", start→finish", case.server_s)):
            row = Row(f"build {key}{label}", "s", value, case.irreducible_s, "", None, "build")
            if not case.complete or value is None:
                row.ok = False
            elif judged and not label:
                row.target = f"< {WARM_TARGET_S:g} s"
                row.ok = value < WARM_TARGET_S
            rows.append(row)
        if key in build.COLD_CASES:
            overhead = case.overhead
            rows.append(
                Row(
                    f"build {key}, builder overhead",
                    "%",
                    None if overhead is None else overhead * 100,
                    None,
                    f"< {BUILD_OVERHEAD_TARGET:.0%}",
                    case.complete and overhead is not None and overhead < BUILD_OVERHEAD_TARGET,
                    "build",
                )
            )
    return rows


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.3f}"
    if unit == "%":
        return f"{value:+.1f}"
    if unit in ("msg/s", "req/s", "µs", "steps/s", "n"):
        return f"{value:,.0f}"
    return f"{value:.2f}"


def verdict(ok: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: "-"}[ok]


def table(rows: list[Row], reference: str = "official") -> str:
    header = ("scenario", "localcloud", reference, "ratio", "target", "result")
    lines = [
        (
            f"{r.scenario} ({r.unit})",
            fmt(r.localcloud, r.unit),
            fmt(r.official, r.unit),
            "-" if r.ratio is None else f"{r.ratio:.2f}x",
            r.target or "-",
            verdict(r.ok),
        )
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        padded = (
            c.ljust(w) if i in (0, 4, 5) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(x) for x in lines)])


def notes(s: Settings, results: tuple[ServerResult, ServerResult]) -> list[str]:
    """What the table cannot say: counts, settings, errors and skipped servers."""
    out = [
        f"throughput: {s.messages:,} messages of {s.size} B, default publisher batching, "
        "first publish to last receipt; subscribe() FlowControl("
        f"max_messages={pubsub.FLOW.max_messages})",
        f"latency: {s.rate:g} msg/s for {s.duration:g} s, publisher BatchSettings(max_latency="
        f"{pubsub.LATENCY_BATCH.max_latency * 1000:g} ms) on both servers; ratio = localcloud / "
        "official (for latency, lower is better)",
    ]
    for r in results:
        if r.skipped:
            out.append(f"{r.server}: not run: {r.skipped}")
            continue
        if t := r.throughput:
            out.append(
                f"{r.server} throughput: {t.received:,}/{t.expected:,} received in "
                f"{t.seconds:.2f} s ({t.sent:,} publishes confirmed in {t.publish_seconds:.2f} s)"
            )
        if lat := r.latency:
            out.append(
                f"{r.server} latency: {lat.received:,}/{lat.expected:,} received, "
                f"offered {lat.offered_rate:.0f} msg/s, "
                f"publish confirmed p50 {lat.publish_p50_ms:.2f} ms"
            )
        out.extend(f"{r.server} {name}: ERROR {err}" for name, err in r.errors.items())
        out.extend(
            f"{r.server} {name}: WARNING: other processes used {cores:.2f} cores meanwhile; "
            "the figures are skewed by other work on this machine"
            for name, cores in r.other_cores.items()
            if cores > NOISY_CORES
        )
    return out


def markdown(s: Settings, rows: list[Row], official_ran: bool, when: str, quick: bool) -> str:
    """The README snippet: the same rows, with how and where they were measured."""
    lines = [
        "| Pub/Sub, official Python client, StreamingPull | localcloud | official emulator "
        "| localcloud / official | target |",
        "|---|---:|---:|---:|---|",
    ]
    labels = {
        "throughput": f"Throughput, {s.messages:,} messages of {s.size} B, publish → receive + ack",
        "latency p50": f"Publish → receive latency p50 at {s.rate:g} msg/s",
        "latency p99": f"Publish → receive latency p99 at {s.rate:g} msg/s",
        "latency max": f"Publish → receive latency max at {s.rate:g} msg/s",
    }

    def cell(value: float | None, unit: str) -> str:
        return "-" if value is None else f"{fmt(value, unit)} {unit}"

    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        lines.append(
            f"| {labels[r.scenario]} | {cell(r.localcloud, r.unit)} "
            f"| {cell(r.official, r.unit)} | {ratio} | {r.target or '-'} |"
        )
    reference = "the official emulator in the same run" if official_ran else "no reference"
    lines.append("")
    if quick:
        lines.append("(A --quick run: the published figures come from a full `make bench`.)")
    lines.append(
        f"Measured by `make bench` on {when} ({os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}), against {reference}. localcloud commits every publish "
        "and ack to SQLite before answering; the latency publisher uses "
        f"`BatchSettings(max_latency={pubsub.LATENCY_BATCH.max_latency:g})` for both servers."
    )
    return "\n".join(lines)


def server_json(r: ServerResult) -> dict[str, Any]:
    data = dataclasses.asdict(r)
    if isinstance(r.throughput, Throughput):
        data["throughput"].update(rate=r.throughput.rate, complete=r.throughput.complete)
    if isinstance(r.latency, Latency):
        data["latency"]["complete"] = r.latency.complete
    return data


def build_notes(bs: BuildSettings, r: BuildResult) -> list[str]:
    """How the build rows were measured, the overheads, and where each case's time goes."""
    out = [
        f"build: {bs.repeats} repetition(s), each on a fresh localcloud data dir (one cold "
        f"build each), {bs.warm} builds of every other kind per repetition; medians. "
        "localcloud = create_build() until operation.result() (polling every 20-50 ms); "
        "start→finish = the build's own start_time/finish_time",
        "build: irreducible = unzip + pip install --target (the buildpack's flags; "
        f"{buildpack.FRAMEWORK}=={buildpack.FRAMEWORK_VERSION} for a cold build, the "
        f"requirements with a dependency) + compileall (unchecked-hash) + tar.gz (level "
        f"{build.GZIP_LEVEL}) of the trees, "
        "done directly in the same run; warm cases: unzip + compileall + tar.gz of the source; the "
        f"dependency is a hand-made pure-Python wheel ({build.DEPENDENCY[0]}) in a local "
        "wheelhouse, each deps-first build with its own requirements.txt",
        "build: builder overhead = ((build - pip) - (irreducible - pip)) / irreducible, end to "
        "end, pip's run (start to last line of output) taken out of both sides: it is the "
        "same command, but it reaches PyPI and its time varies by ±30% from run to run",
    ]
    for key, what in build.CASES.items():
        case = r.cases[key]
        works = case.work
        line = f"build {key}: {what}: {len(case.ok_builds())}/{len(case.builds)} builds ok"
        irr = case.irreducible_s
        if works and irr:
            line += (
                f"; irreducible {irr:.3f} s = unzip "
                f"{build.median([w.unzip_s for w in works]):.3f} + pip "
                f"{build.median([w.pip_s for w in works]):.3f} + compileall "
                f"{build.median([w.compile_s for w in works]):.3f} + tar.gz "
                f"{build.median([w.tar_s for w in works]):.3f}"
            )
        if key in build.COLD_CASES and irr:
            parts = [
                f"{(value - irr) / irr:+.1%} {label}"
                for label, value in (("end to end", case.client_s), ("start→finish", case.server_s))
                if value is not None
            ]
            built_rest, irr_rest = case.outside_pip()
            if case.overhead is not None:
                parts.append(
                    f"{case.overhead:+.1%} outside pip's run ({built_rest:.3f} s vs {irr_rest:.3f} s)"
                )
            line += "; overhead " + ", ".join(parts)
            inside, direct = case.pip_runs()
            if inside is not None and direct is not None:
                line += f"; pip's run {inside:.3f} s in the builds, {direct:.3f} s directly"
            line += (
                "; the buildpack's own code on the same input: archive.extract "
                f"{build.median([w.extract_s for w in works]):.3f} s, layers.write_layer "
                f"{build.median([w.write_layer_s for w in works]):.3f} s "
                f"({build.median([float(w.layer_bytes) for w in works]) or 0:,.0f} B; tarfile "
                f"{build.median([float(w.tar_bytes) for w in works]) or 0:,.0f} B)"
            )
        out.append(line)
        if case.ok_builds():
            phases = ", ".join(f"{n} {v:.3f}" for n, v in case.phase_medians().items())
            spans = ", ".join(f"{n} {v:.3f}" for n, v in case.span_medians().items())
            out.append(f"build {key} phases (s, median, from the live build log): {phases}")
            out.append(f"build {key} build.timing (s, median): {spans}")
        for b in case.builds:
            if not b.ok:
                out.append(f"build {key}: {b.build_id} ended {b.status}: {b.detail}")
            elif key == "deps-source" and not b.cached_deps:
                out.append(f"build {key}: {b.build_id} did not take the dependencies from cache")
    if r.pip_flags_match is False:
        out.append(
            "build: WARNING: the buildpack ran pip with other flags than the irreducible "
            f"measurement ({' '.join(build.PIP_FLAGS)}); update benchmarks/build.py"
        )
    out.extend(f"build: ERROR {err}" for err in r.errors)
    if r.other_cores is not None and r.other_cores > NOISY_CORES:
        out.append(
            f"build: WARNING: other processes used {r.other_cores:.2f} cores meanwhile; "
            "the figures are skewed by other work on this machine"
        )
    out.append(f"build: {r.seconds:.1f} s in all")
    return out


def build_markdown(bs: BuildSettings, r: BuildResult) -> str:
    """The README snippet for Cloud Build: one line a case, both build times, the overhead."""
    lines = [
        "| Cloud Build, official Python client, `gcloud builds submit --pack` step "
        "| localcloud, end to end | build start → finish | irreducible work "
        "| end to end / irreducible | builder overhead | target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    labels = {
        "cold": "Cold build, no dependencies (functions-framework layer installed)",
        "warm-same": "Warm rebuild, same source",
        "warm-source": "Warm rebuild, source-only change",
        "deps-first": "First build with one dependency (framework layer cached)",
        "deps-source": "Rebuild with one dependency, source-only change (cached)",
    }
    rows = {row.scenario: row for row in cloud_build_rows(r)}

    def cell(value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"

    for key, label in labels.items():
        case, row = r.cases[key], rows[f"build {key}"]
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
        overhead = rows.get(f"build {key}, builder overhead")
        if overhead is not None:
            share = "-" if overhead.localcloud is None else f"{overhead.localcloud:+.1f}%"
            target = overhead.target
        else:
            share, target = "-", row.target or "-"
        lines.append(
            f"| {label} | {cell(case.client_s)} | {cell(case.server_s)} "
            f"| {cell(case.irreducible_s)} | {ratio} | {share} | {target} |"
        )
    lines += [
        "",
        "Irreducible work: what any builder has to do for the same tree, done directly in the "
        "same run: unzip, `pip install --target` with the buildpack's flags "
        "(functions-framework for a cold build, the requirements with a dependency), "
        "`compileall` (unchecked-hash byte code, as the layers carry it) and tar.gz of "
        "the trees. Builder overhead: (build - irreducible) / irreducible with pip's own run "
        "taken out of both sides (the same command, whose time varies with the network). "
        f"Medians of {bs.repeats} fresh data directories ({bs.warm} builds of every other kind "
        "in each); pip reaches PyPI through its cache, the dependency is a local pure-Python "
        "wheel.",
    ]
    return "\n".join(lines)


def build_json(bs: BuildSettings, r: BuildResult) -> dict[str, Any]:
    cases = {}
    for key, case in r.cases.items():
        data = dataclasses.asdict(case)
        data.update(
            description=build.CASES[key],
            complete=case.complete,
            client_s=case.client_s,
            server_s=case.server_s,
            irreducible_s=case.irreducible_s,
            outside_pip=dict(zip(("build_s", "irreducible_s"), case.outside_pip(), strict=True)),
            overhead=case.overhead,
            pip_runs=dict(zip(("in_builds_s", "direct_s"), case.pip_runs(), strict=True)),
            phases=case.phase_medians(),
            spans=case.span_medians(),
        )
        for work in data["work"]:
            work["total_s"] = work["unzip_s"] + work["pip_s"] + work["compile_s"] + work["tar_s"]
        cases[key] = data
    return {
        "settings": dataclasses.asdict(bs),
        "cases": cases,
        "errors": r.errors,
        "other_cores": r.other_cores,
        "seconds": r.seconds,
        "pip_flags_match": r.pip_flags_match,
    }


def run_rows(r: RunResult) -> list[Row]:
    """Cloud Run: per concurrency, the judged client's requests/s and p50/p99 through the
    ingress against the same instance called directly; the cold start against a bare
    functions-framework start. Throughput is judged at the highest concurrency (at 1 it is
    1 / latency, judged as the added p50), the added p50 at concurrency 1; a comparison
    with failed requests, or not on one process, fails."""
    rows: list[Row] = []
    trusted = r.same_process is not False
    low, high = min(cloud_run.CONCURRENCIES), max(cloud_run.CONCURRENCIES)
    for client in r.clients:
        judged = client == r.client
        suffix = "" if judged else f", {client} client"
        for c in cloud_run.CONCURRENCIES:
            d, i = r.summary(client, "direct", c), r.summary(client, "ingress", c)
            clean = d is not None and i is not None and not d.errors and not i.errors
            target = f">= {RUN_THROUGHPUT_TARGET:g}x direct" if judged and c == high else ""
            row = Row(
                f"run c={c} throughput{suffix}",
                "req/s",
                i.rate if i else None,
                d.rate if d else None,
                target,
                None,
                "run",
            )
            if judged and not (clean and trusted):
                row.ok = False
            elif target and row.ratio is not None:
                row.ok = row.ratio >= RUN_THROUGHPUT_TARGET
            rows.append(row)
            added = i.p50_ms - d.p50_ms if i and d else None
            target = f"< {RUN_ADDED_P50_MS:g} ms" if judged and c == low else ""
            ok = None
            if judged and not (clean and trusted):
                ok = False
            elif target and added is not None:
                ok = added < RUN_ADDED_P50_MS
            rows.append(
                Row(f"run c={c} added latency p50{suffix}", "ms", added, None, target, ok, "run")
            )
            if judged:  # what each request costs: steadier than wall time on a busy machine
                rows.append(
                    Row(
                        f"run c={c} ingress CPU per request",
                        "µs",
                        i.cpu_us.get("server") if i else None,
                        d.cpu_us.get("instance") if d else None,
                        "",
                        None,
                        "run",
                    )
                )
            for label, attr in (("p50", "p50_ms"), ("p99", "p99_ms")):
                if judged or label == "p50":
                    rows.append(
                        Row(
                            f"run c={c} latency {label}{suffix}",
                            "ms",
                            getattr(i, attr) if i else None,
                            getattr(d, attr) if d else None,
                            "",
                            None,
                            "run",
                        )
                    )
    if r.client is not None:
        for c in cloud_run.CONCURRENCIES:
            i, p = r.summary(r.client, "ingress", c), r.summary(r.client, "previous", c)
            judged = c == high
            row = Row(
                f"run c={c} ingress throughput, contained / previous sandbox",
                "req/s",
                i.rate if i else None,
                p.rate if p else None,
                f">= {1 - CONTAINMENT_TARGET:g}x previous" if judged else "",
                None,
                "run",
            )
            if judged:
                clean = i is not None and p is not None and not i.errors and not p.errors
                row.ok = clean and row.ratio is not None and row.ratio >= 1 - CONTAINMENT_TARGET
            rows.append(row)
            rows.append(
                Row(
                    f"run c={c} ingress latency p50, contained / previous sandbox",
                    "ms",
                    i.p50_ms if i else None,
                    p.p50_ms if p else None,
                    "",
                    None,
                    "run",
                )
            )
    # Cold starts are judged on the best of each kind (as timeit does: other processes
    # only ever add time, and on a small shared machine they add a lot), medians shown.
    cold = r.cold
    row = Row(
        "run cold start, best",
        "s",
        min(cold.ingress_s, default=None),
        min(cold.bare_s, default=None),
        f"<= {RUN_COLD_TARGET:g}x bare",
        None,
        "run",
    )
    row.ok = row.ratio is not None and row.ratio <= RUN_COLD_TARGET
    rows.append(row)
    rows.append(
        Row(
            "run cold start, median",
            "s",
            cloud_run.median(cold.ingress_s),
            cloud_run.median(cold.bare_s),
            "",
            None,
            "run",
        )
    )
    rows.append(
        Row(
            "run cold start, bwrap only, best",
            "s",
            min(cold.bwrap_s, default=None),
            min(cold.bare_s, default=None),
            "",
            None,
            "run",
        )
    )
    row = Row(
        "run cold start, bwrap only, contained / previous sandbox, best",
        "s",
        min(cold.bwrap_s, default=None),
        min(cold.previous_s, default=None),
        f"<= {1 + CONTAINMENT_TARGET:g}x previous",
        None,
        "run",
    )
    row.ok = row.ratio is not None and row.ratio <= 1 + CONTAINMENT_TARGET
    rows.append(row)
    if not r.clients:  # the hot part never started: say so in a failing row
        rows.insert(0, Row("run hot", "req/s", None, None, "", False, "run"))
    return rows


def run_notes(rs: RunSettings, r: RunResult) -> list[str]:
    """How the Cloud Run rows were measured, each side's figures and where the CPU goes."""
    clients = " and ".join(r.clients) or "none"
    out = [
        f"run: one function instance (max_instance_request_concurrency "
        f"{cloud_run.CONCURRENCY}, max instances 1) on port {r.instance_port}, loaded directly "
        f"and through the service URL in alternating rounds ({rs.rounds} a side, "
        f"{rs.round_seconds:g} s each, keep-alive, closed loop), client(s): {clients} "
        f"(judged: {r.client}); same process both ways: {r.same_process}",
        "run: throughput is judged at the highest concurrency; at concurrency 1 it is "
        "1 / latency, judged as the added p50 (ingress p50 - direct p50); p50/p99 are the "
        "medians of the rounds'; ingress CPU per request: the localcloud server's CPU time "
        "through the ingress / requests, against the function's own (direct)",
    ]
    for client in r.clients:
        for c in cloud_run.CONCURRENCIES:
            parts = []
            for side in cloud_run.SIDES:
                m = r.summary(client, side, c)
                if m is None:
                    continue
                cpu = ", ".join(f"{k} {v:.0f}" for k, v in m.cpu_us.items())
                parts.append(
                    f"{side} {m.rate:,.0f} req/s, p50 {m.p50_ms:.2f} ms, p99 {m.p99_ms:.2f} ms, "
                    f"{m.requests:,} ok, {m.errors} errors (CPU µs/request: {cpu})"
                )
            out.append(f"run {client} c={c}: " + "; ".join(parts))
    cold = r.cold

    def series(values: list[float]) -> str:
        return ", ".join(f"{v:.3f}" for v in values) or "-"

    out.append(
        f"run cold starts (s): through the ingress {series(cold.ingress_s)}; functions-framework "
        f"by hand {series(cold.bare_s)}; sandbox.start (bwrap) alone {series(cold.bwrap_s)}; "
        f"the same with the previous, filesystem-only sandbox {series(cold.previous_s)}; "
        f"first request after localcloud restarted: "
        f"{'-' if cold.after_restart_s is None else f'{cold.after_restart_s:.3f}'}; idle "
        f"period {cloud_run.IDLE_MS} ms; bare = spawn to first 200, polled every "
        f"{cloud_run.POLL * 1000:g} ms"
    )
    if r.build_s is not None:
        out.append(f"run: Cloud Build {r.build_s:.1f} s, deploy {r.deploy_s or 0:.1f} s")
    out.extend(f"run: {note}" for note in r.notes)
    out.extend(f"run: ERROR {err}" for err in r.errors)
    if r.other_cores is not None and r.other_cores > NOISY_CORES:
        out.append(
            f"run: WARNING: other processes used {r.other_cores:.2f} cores meanwhile; "
            "the figures are skewed by other work on this machine"
        )
    out.append(f"run: {r.seconds:.1f} s in all")
    return out


def run_markdown(rs: RunSettings, r: RunResult) -> str:
    """The README snippet for Cloud Run: the judged client's figures and the cold start."""
    client = r.client or "-"
    lines = [
        f"| Cloud Run, one functions-framework instance, `{client}` keep-alive closed loop "
        "| through localcloud's ingress | functions-framework directly | ingress / direct "
        "| target |",
        "|---|---:|---:|---:|---|",
    ]
    rows = {row.scenario: row for row in run_rows(r)}

    def ms(row: Row | None, attr: str) -> str:
        value = getattr(row, attr) if row else None
        return "-" if value is None else f"{value:.2f} ms"

    for c in cloud_run.CONCURRENCIES:
        t = rows.get(f"run c={c} throughput")
        if t is None:
            continue
        ratio = "-" if t.ratio is None else f"{t.ratio:.2f}x"
        cells = "-" if t.localcloud is None else f"{t.localcloud:,.0f} req/s"
        ref = "-" if t.official is None else f"{t.official:,.0f} req/s"
        lines.append(
            f"| Requests/s, concurrency {c} | {cells} | {ref} | {ratio} | {t.target or '-'} |"
        )
        p50, p99 = rows[f"run c={c} latency p50"], rows[f"run c={c} latency p99"]
        added = rows[f"run c={c} added latency p50"]
        plus = "-" if added.localcloud is None else f"{added.localcloud:+.2f} ms"
        lines.append(
            f"| Latency p50 / p99, concurrency {c} | {ms(p50, 'localcloud')} / "
            f"{ms(p99, 'localcloud')} | {ms(p50, 'official')} / {ms(p99, 'official')} "
            f"| {plus} (p50) | {added.target or '-'} |"
        )
    for c in cloud_run.CONCURRENCIES:
        cpu = rows.get(f"run c={c} ingress CPU per request")
        if cpu is not None and cpu.localcloud is not None and cpu.official:
            lines.append(
                f"| CPU per request, concurrency {c}: the ingress, against the function's own "
                f"| {cpu.localcloud:,.0f} µs | {cpu.official:,.0f} µs | {cpu.ratio:.2f}x | - |"
            )

    def s(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    for key, label in (
        (
            "run cold start, best",
            "Cold start, best: first request to a service scaled to zero, against "
            "`python -m functions_framework` spawned by hand (to its first 200)",
        ),
        ("run cold start, median", "Cold start, median"),
        (
            "run cold start, bwrap only, best",
            "Cold start of the sandbox alone, best (bwrap, no autoscaler or ingress)",
        ),
        (
            "run cold start, bwrap only, contained / previous sandbox, best",
            "Cold start of the sandbox alone, contained, against the previous filesystem-only "
            "sandbox (best of each)",
        ),
    ):
        row = rows[key]
        ratio = "-" if row.ratio is None else f"{row.ratio:.2f}x"
        lines.append(
            f"| {label} | {s(row.localcloud)} | {s(row.official)} | {ratio} | {row.target or '-'} |"
        )
    for c in cloud_run.CONCURRENCIES:
        t = rows.get(f"run c={c} ingress throughput, contained / previous sandbox")
        if t is None or t.localcloud is None or t.official is None:
            continue
        ratio = "-" if t.ratio is None else f"{t.ratio:.2f}x"
        lines.append(
            f"| Requests/s through the ingress, concurrency {c}: contained instance, against the "
            f"previous filesystem-only sandbox | {t.localcloud:,.0f} req/s | "
            f"{t.official:,.0f} req/s | {ratio} | {t.target or '-'} |"
        )
    lines += [
        "",
        "The same function instance is measured both ways, in alternating rounds "
        f"({rs.rounds} of {rs.round_seconds:g} s a side); the load generator shares the "
        "machine's cores with both. Throughput is judged at the highest concurrency (at "
        "concurrency 1 it is 1 / latency, judged as the added p50). Cold starts: "
        f"{rs.cold_starts} of each kind, in turns, each after the autoscaler stopped the idle "
        "instance; judged on the best of each (other processes only add time).",
    ]
    return "\n".join(lines)


def run_json(rs: RunSettings, r: RunResult) -> dict[str, Any]:
    summaries = {
        f"{client} c={c} {side}": dataclasses.asdict(m)
        for client in r.clients
        for c in cloud_run.CONCURRENCIES
        for side in cloud_run.SIDES
        if (m := r.summary(client, side, c)) is not None
    }
    data = dataclasses.asdict(r)
    data.update(settings=dataclasses.asdict(rs), judged_client=r.client, summaries=summaries)
    return data


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The run part starts sandboxed instances in this process, as localcloud's server does.
    stage.isolate()
    s = settings_from(args)
    bs = build_settings_from(args)
    rs = run_settings_from(args)
    began = time.monotonic()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    results = pubsub.run(s) if args.only in (None, "pubsub") else None
    built = build.run(bs) if args.only in (None, "build") else None
    ran = cloud_run.run(rs) if args.only in (None, "run") else None
    es = events_bench.EventSettings.for_run(args.quick)
    events = events_bench.run(es) if args.only in (None, "eventarc") else None
    ws = workflows_bench.WorkflowSettings.for_run(args.quick)
    flows = workflows_bench.run(ws) if args.only in (None, "workflows") else None
    ps = pipeline_bench.PipelineSettings.for_run(args.quick)
    piped = pipeline_bench.run(ps) if args.only in (None, "pipeline") else None
    cs = recovery_bench.RecoverySettings.for_run(args.quick)
    recovered = recovery_bench.run(cs) if args.only in (None, "recovery") else None
    ims = iam_bench.IamSettings.for_run(args.quick, args.messages)
    iamed = iam_bench.run(ims) if args.only in (None, "iam") else None
    rss = rest_bench.RestSettings.for_run(args.quick, args.messages, not args.no_official)
    rested = rest_bench.run(rss) if args.only in (None, "rest") else None
    css = console_bench.ConsoleSettings.for_run(args.quick)
    consoled = console_bench.run(css) if args.only in (None, "console") else None
    cos = cold_bench.ColdSettings.for_run(args.quick, args.cold_starts)
    colded = cold_bench.run(cos) if args.only in (None, "coldstart") else None
    wall = time.monotonic() - began
    rows = build_rows(*results) if results else []
    b_rows = cloud_build_rows(built) if built else []
    r_rows = run_rows(ran) if ran else []
    e_rows = [Row(*x, group="eventarc") for x in events_bench.rows(events)] if events else []
    w_rows = [Row(*x, group="workflows") for x in workflows_bench.rows(ws, flows)] if flows else []
    p_rows = [Row(*x, group="pipeline") for x in pipeline_bench.rows(piped)] if piped else []
    c_rows = (
        [Row(*x, group="recovery") for x in recovery_bench.rows(recovered)] if recovered else []
    )
    i_rows = [Row(*x, group="iam") for x in iam_bench.rows(iamed)] if iamed else []
    s_rows = [Row(*x, group="rest") for x in rest_bench.rows(rested)] if rested else []
    o_rows = [Row(*x, group="console") for x in console_bench.rows(consoled)] if consoled else []
    k_rows = [Row(*x, group="coldstart") for x in cold_bench.rows(colded)] if colded else []
    official_ran = results is not None and results[1].skipped is None
    passed = (
        all(r.ok is not False for r in rows + b_rows + r_rows)
        and not (built and built.errors)
        and not (ran and ran.errors)
    )
    passed = passed and all(r.ok is not False for r in e_rows)
    passed = passed and (events is None or events_bench.passed(events))
    passed = passed and all(r.ok is not False for r in w_rows)
    passed = passed and (flows is None or workflows_bench.passed(flows))
    passed = passed and all(r.ok is not False for r in p_rows)
    passed = passed and (piped is None or pipeline_bench.passed(piped))
    passed = passed and all(r.ok is not False for r in c_rows)
    passed = passed and (recovered is None or recovery_bench.passed(recovered))
    passed = passed and (iamed is None or iam_bench.passed(iamed))
    passed = passed and (rested is None or rest_bench.passed(rested))
    passed = passed and (consoled is None or console_bench.passed(consoled))
    passed = passed and (colded is None or cold_bench.passed(colded))

    print()
    if results:
        print(table(rows))
        print()
    if built:
        print(table(b_rows, reference="irreducible"))
        print()
    if ran:
        print(table(r_rows, reference="direct/bare"))
        print()
    if events:
        print(table(e_rows, reference="push alone"))
        print()
    if flows:
        print(table(w_rows, reference="emulator/direct"))
        print()
    if piped:
        print(table(p_rows, reference="directly"))
        print()
    if recovered:
        print(table(c_rows, reference="not killed"))
        print()
    if iamed:
        print(table(i_rows, reference="iam off"))
        print()
    if rested:
        print(table(s_rows, reference="official"))
        print()
    if consoled:
        print(table(o_rows, reference="-"))
        print()
    if colded:
        print(table(k_rows, reference="fresh/bare"))
        print()
    for note in (
        (notes(s, results) if results else [])
        + (build_notes(bs, built) if built else [])
        + (run_notes(rs, ran) if ran else [])
    ):
        print(f"  {note}")
    for note in events_bench.notes(es, events) if events else []:
        print(f"  {note}")
    for note in workflows_bench.notes(ws, flows) if flows else []:
        print(f"  {note}")
    for note in pipeline_bench.notes(ps, piped) if piped else []:
        print(f"  {note}")
    for note in recovery_bench.notes(cs, recovered) if recovered else []:
        print(f"  {note}")
    for note in iam_bench.notes(ims, iamed) if iamed else []:
        print(f"  {note}")
    for note in rest_bench.notes(rss, rested) if rested else []:
        print(f"  {note}")
    for note in console_bench.notes(css, consoled) if consoled else []:
        print(f"  {note}")
    for note in cold_bench.notes(cos, colded) if colded else []:
        print(f"  {note}")
    print(f"  wall time: {wall:.1f} s; result: {'PASS' if passed else 'FAIL'}")
    print("\ndocs/performance.md snippet:\n")
    snippets = []
    if results:
        snippets.append(markdown(s, rows, official_ran, when, args.quick))
    if built:
        snippets.append(build_markdown(bs, built))
    if ran:
        snippets.append(run_markdown(rs, ran))
    if events:
        snippets.append(events_bench.markdown(events))
    if flows:
        snippets.append(workflows_bench.markdown(ws, flows))
    if piped:
        snippets.append(pipeline_bench.markdown(ps, piped))
    if recovered:
        snippets.append(recovery_bench.markdown(cs, recovered))
    if iamed:
        snippets.append(iam_bench.markdown(ims, iamed))
    if rested:
        snippets.append(rest_bench.markdown(rss, rested))
    if consoled:
        snippets.append(console_bench.markdown(css, consoled))
    if colded:
        snippets.append(cold_bench.markdown(cos, colded))
    if snippets and not results:  # the Pub/Sub snippet says where and when; say it here
        snippets[-1] += (
            f" Measured by `make bench` on {when} ({os.cpu_count()} CPUs, Python "
            f"{platform.python_version()})."
        )
    print("\n\n".join(snippets))

    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "generated_at": when,
        "wall_seconds": wall,
        "quick": args.quick,
        "only": args.only,
        "settings": dataclasses.asdict(s),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "servers": {r.server: server_json(r) for r in results or ()},
        "build": build_json(bs, built) if built else None,
        "run": run_json(rs, ran) if ran else None,
        "eventarc": events_bench.to_json(es, events) if events else None,
        "workflows": workflows_bench.to_json(ws, flows) if flows else None,
        "pipeline": pipeline_bench.to_json(ps, piped) if piped else None,
        "recovery": recovery_bench.to_json(cs, recovered) if recovered else None,
        "iam": iam_bench.to_json(ims, iamed) if iamed else None,
        "rest": rest_bench.to_json(rss, rested) if rested else None,
        "console": console_bench.to_json(css, consoled) if consoled else None,
        "coldstart": cold_bench.to_json(cos, colded) if colded else None,
        "rows": [
            dataclasses.asdict(r) | {"ratio": r.ratio}
            for r in rows
            + b_rows
            + r_rows
            + e_rows
            + w_rows
            + p_rows
            + c_rows
            + i_rows
            + s_rows
            + o_rows
            + k_rows
        ],
        "passed": passed,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.output}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

"""``python -m benchmarks`` (``make bench``): run every benchmark, print a table, save JSON.

The figures that matter are ratios against a reference measured in the same run on the
same machine: for Pub/Sub, Google's official emulator (plus localcloud's absolute p50
latency); for Cloud Build, the irreducible work of each build (unzip, pip install, tar.gz)
done directly (plus the absolute time of a warm source-only rebuild). The markdown
snippet printed at the end is what goes into the README, so the README's figures always
come from this command. The exit code is 1 when a row fails its target, loses messages
or a build fails, so a regression is visible to whoever runs it. ``--only build`` or
``--only pubsub`` runs one of them.
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
from benchmarks.build import BuildResult, BuildSettings
from benchmarks.pubsub import Latency, ServerResult, Settings, Throughput
from localcloud.build import buildpack

ROOT = Path(__file__).resolve().parent.parent
P50_TARGET_MS = 10.0
NOISY_CORES = 0.25  # other processes using more than this during a scenario: say so
THROUGHPUT_TARGET = 2.0
BUILD_OVERHEAD_TARGET = 0.20  # cold builds: (build - irreducible) / irreducible
WARM_TARGET_S = 1.0  # a warm rebuild of a source-only change


@dataclass
class Row:
    scenario: str
    unit: str
    localcloud: float | None
    official: float | None
    target: str
    ok: bool | None  # None: nothing to judge (informational, or no reference)
    group: str = "pubsub"  # for "build", ``official`` is the irreducible work

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
        "--only", choices=("build", "pubsub"), help="run only the Cloud Build or Pub/Sub part"
    )
    parser.add_argument(
        "--repeats", type=int, help="build: fresh localcloud data dirs, each cold (3; quick 1)"
    )
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
    return f"{value:,.0f}" if unit == "msg/s" else f"{value:.2f}"


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
        lines.append("(A --quick run: the README's figures come from a full `make bench`.)")
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
        f"requirements with a dependency) + tar.gz (level {build.GZIP_LEVEL}) of the trees, "
        "done directly in the same run; warm cases: unzip + tar.gz of the source; the "
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
                f"{build.median([w.pip_s for w in works]):.3f} + tar.gz "
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
        "(functions-framework for a cold build, the requirements with a dependency), tar.gz of "
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
            work["total_s"] = work["unzip_s"] + work["pip_s"] + work["tar_s"]
        cases[key] = data
    return {
        "settings": dataclasses.asdict(bs),
        "cases": cases,
        "errors": r.errors,
        "other_cores": r.other_cores,
        "seconds": r.seconds,
        "pip_flags_match": r.pip_flags_match,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = settings_from(args)
    bs = build_settings_from(args)
    began = time.monotonic()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    results = pubsub.run(s) if args.only != "build" else None
    built = build.run(bs) if args.only != "pubsub" else None
    wall = time.monotonic() - began
    rows = build_rows(*results) if results else []
    b_rows = cloud_build_rows(built) if built else []
    official_ran = results is not None and results[1].skipped is None
    passed = all(r.ok is not False for r in rows + b_rows) and not (built and built.errors)

    print()
    if results:
        print(table(rows))
        print()
    if built:
        print(table(b_rows, reference="irreducible"))
        print()
    for note in (notes(s, results) if results else []) + (build_notes(bs, built) if built else []):
        print(f"  {note}")
    print(f"  wall time: {wall:.1f} s; result: {'PASS' if passed else 'FAIL'}")
    print("\nREADME snippet:\n")
    snippets = []
    if results:
        snippets.append(markdown(s, rows, official_ran, when, args.quick))
    if built:
        snippets.append(build_markdown(bs, built))
        if not results:  # the Pub/Sub snippet says where and when; say it here instead
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
        "rows": [dataclasses.asdict(r) | {"ratio": r.ratio} for r in rows + b_rows],
        "passed": passed,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.output}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

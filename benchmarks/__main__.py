"""``python -m benchmarks`` (``make bench``): run every benchmark, print a table, save JSON.

The figures that matter are ratios against Google's official emulator measured in the
same run on the same machine, plus localcloud's absolute p50 latency. The markdown
snippet printed at the end is what goes into the README, so the README's figures always
come from this command. The exit code is 1 when a row fails its target or loses
messages, so a regression is visible to whoever runs it.
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

from benchmarks import pubsub
from benchmarks.pubsub import Latency, ServerResult, Settings, Throughput

ROOT = Path(__file__).resolve().parent.parent
P50_TARGET_MS = 10.0
NOISY_CORES = 0.25  # other processes using more than this during a scenario: say so
THROUGHPUT_TARGET = 2.0


@dataclass
class Row:
    scenario: str
    unit: str
    localcloud: float | None
    official: float | None
    target: str
    ok: bool | None  # None: nothing to judge (informational, or no reference)

    @property
    def ratio(self) -> float | None:
        """localcloud / official, whatever the unit (for latency, lower is better)."""
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
    parser.add_argument("--output", type=Path, help="JSON results (.bench/results.json)")
    args = parser.parse_args(argv)
    if args.output is None:  # a quick run must not overwrite the figures the README quotes
        name = "results-quick.json" if args.quick else "results.json"
        args.output = ROOT / ".bench" / name
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


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if unit == "msg/s" else f"{value:.2f}"


def verdict(ok: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: "-"}[ok]


def table(rows: list[Row]) -> str:
    header = ("scenario", "localcloud", "official", "ratio", "target", "result")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = settings_from(args)
    began = time.monotonic()
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    results = pubsub.run(s)
    wall = time.monotonic() - began
    rows = build_rows(*results)
    official_ran = results[1].skipped is None
    passed = all(r.ok is not False for r in rows)

    print()
    print(table(rows))
    print()
    for note in notes(s, results):
        print(f"  {note}")
    print(f"  wall time: {wall:.1f} s; result: {'PASS' if passed else 'FAIL'}")
    print("\nREADME snippet:\n")
    print(markdown(s, rows, official_ran, when, args.quick))

    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "generated_at": when,
        "wall_seconds": wall,
        "quick": args.quick,
        "settings": dataclasses.asdict(s),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "servers": {r.server: server_json(r) for r in results},
        "rows": [dataclasses.asdict(r) | {"ratio": r.ratio} for r in rows],
        "passed": passed,
    }
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.output}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

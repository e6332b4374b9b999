"""Python cold start (issue 19): a deployed service scaled to zero, from the request to the
first 200, against a bare ``functions-framework`` start of the same source from a fresh
copy, which has to compile it; side by side in one run, alternating rounds.

The service is built by Cloud Build (so its layers carry the byte code compiled at build
time) and deployed on a localcloud whose autoscaler scales it to zero 200 ms after each
request. Each round times, in turn (each kind first in turn, each on a quiet machine: no
instance left):

- **instance**: the first request through the ingress to the scaled-to-zero service
  (autoscaler, sandbox, interpreter, imports, readiness, proxy);
- **fresh**: the image's tree (``/workspace`` and ``/layers``) copied without its byte code
  into a new temporary directory (outside the clock), then ``python -S -m
  functions_framework`` spawned there with the image's Env, until its first 200: what
  starting the same function by hand costs when nothing is compiled yet;
- **bare**: the same by hand on the image's tree as unpacked, byte code included: the
  instance minus the sandbox, autoscaler and ingress;
- **sandbox**: the same instance started by ``sandbox.start`` alone (bwrap, namespaces,
  cgroup, seccomp; no autoscaler or ingress);
- **interpreter**: ``python -S -c pass`` with the image's Env, to the exit.

The judged ratio is instance / fresh, best to best (other processes only ever add time),
with medians beside it; the other kinds say where the instance's time goes.
"""

from __future__ import annotations

import dataclasses
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import run as cloud_run
from benchmarks.pubsub import log, run_guarded
from localcloud import testing
from localcloud.run.images import UnpackedImage

TARGET = 0.6  # instance / fresh (issue 19)
KINDS = ("instance", "fresh", "bare", "sandbox", "interpreter")
NOISY_CORES = 0.25
Row = tuple[str, str, float | None, float | None, str, bool | None]


@dataclass(frozen=True)
class ColdSettings:
    rounds: int = 7  # cold starts of each kind
    timeout: float = 60.0  # per start and setup step

    @classmethod
    def for_run(cls, quick: bool, rounds: int | None = None) -> ColdSettings:
        return cls(rounds=max(rounds or (3 if quick else 7), 1))


@dataclass
class ColdResult:
    starts: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    pyc_files: int | None = None  # byte code files in the image's tree
    build_s: float | None = None
    errors: list[str] = field(default_factory=list)
    other_cores: float | None = None
    seconds: float = 0.0

    def best(self, kind: str) -> float | None:
        return min(self.starts[kind], default=None)

    def median(self, kind: str) -> float | None:
        values = self.starts[kind]
        return statistics.median(values) if values else None


def fresh_copy(image: UnpackedImage, scratch: Path) -> UnpackedImage:
    """The image's tree copied into a new directory without byte code: a fresh checkout."""
    root = Path(tempfile.mkdtemp(prefix="fresh-", dir=scratch))
    for top in image.rootfs.iterdir():
        if top.is_dir() and not top.is_symlink():
            shutil.copytree(top, root / top.name, symlinks=True, ignore=_no_bytecode)
    return dataclasses.replace(image, rootfs=root)


def _no_bytecode(_directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n == "__pycache__" or n.endswith(".pyc")}


def interpreter_start(image: UnpackedImage) -> float:
    """``python -S -c pass`` with the image's Env: the interpreter alone, spawn to exit."""
    argv, env, cwd = cloud_run.bare_command(image, 0)
    t0 = time.perf_counter()
    subprocess.run([argv[0], "-S", "-c", "pass"], env=env, cwd=cwd, check=True, timeout=30)
    return time.perf_counter() - t0


def bench(s: ColdSettings, result: ColdResult, scratch: Path) -> None:
    settings = cloud_run.RunSettings(timeout=s.timeout, wrk=False)
    helper = cloud_run.Bench(settings, cloud_run.RunResult(), scratch)
    log(f"coldstart: localcloud with LOCALCLOUD_RUN_IDLE_MS={cloud_run.IDLE_MS} ...")
    # The deploy goes to the run benchmark's project: localcloud's own project, so that its
    # default build account is granted what builds need (testing.start does that).
    env = {
        "LOCALCLOUD_RUN_IDLE_MS": str(cloud_run.IDLE_MS),
        "LOCALCLOUD_PROJECT": cloud_run.PROJECT,
    }
    instance = testing.start(helper.data_dir, extra_env=env)
    try:
        digest, service, revision = helper.deploy_on(instance)
        result.build_s = helper.result.build_s
        revision_id = revision.name.rsplit("/", 1)[-1]
        image = cloud_run.load_image(helper.data_dir, digest)
        result.pyc_files = sum(1 for _ in image.rootfs.rglob("*.pyc"))
        port = int(service.uri.rsplit(":", 1)[1].strip("/"))
        log_file = scratch / "by-hand.log"

        def through_ingress() -> float:
            t0 = time.perf_counter()
            status = cloud_run.status_of(port, s.timeout)
            if status != 200:
                raise RuntimeError(f"the cold request to {service.uri} answered {status}")
            return time.perf_counter() - t0

        def fresh() -> float:
            copy = fresh_copy(image, scratch)
            try:
                return cloud_run.bare_start(copy, log_file, s.timeout)
            finally:
                shutil.rmtree(copy.rootfs, ignore_errors=True)

        starts = {
            "instance": through_ingress,
            "fresh": fresh,
            "bare": lambda: cloud_run.bare_start(image, log_file, s.timeout),
            "sandbox": lambda: cloud_run.bwrap_start(image, log_file, s.timeout),
            "interpreter": lambda: interpreter_start(image),
        }
        through_ingress()  # the first start after deploying: not a cold start like the others
        log(f"coldstart: {s.rounds} rounds of {', '.join(KINDS)} ...")
        for i in range(s.rounds):
            shift = i % len(KINDS)
            for kind in KINDS[shift:] + KINDS[:shift]:
                helper.wait_for_zero(revision_id)  # also a quiet moment before each start
                result.starts[kind].append(starts[kind]())
        log("coldstart: medians " + ", ".join(f"{k} {result.median(k) or 0:.3f} s" for k in KINDS))
    finally:
        instance.stop()


def run(s: ColdSettings) -> ColdResult:
    """Errors are kept, not raised: the rows without figures fail."""
    result = ColdResult()
    return run_guarded("coldstart", result, lambda scratch: bench(s, result, scratch))


def rows(r: ColdResult) -> list[Row]:
    """(scenario, unit, localcloud, reference, target, ok): instance / fresh judged on the
    best of each; medians and the parts of the start alongside."""
    judged: Row = (
        "Python cold start / fresh bare start, best",
        "s",
        r.best("instance"),
        r.best("fresh"),
        f"<= {TARGET:g}x fresh",
        None,
    )
    best_i, best_f = r.best("instance"), r.best("fresh")
    ok = not r.errors and best_i is not None and bool(best_f) and best_i / best_f <= TARGET
    return [
        (*judged[:5], ok),
        (
            "Python cold start / fresh bare start, median",
            "s",
            r.median("instance"),
            r.median("fresh"),
            "",
            None,
        ),
        ("Python cold start / bare start with byte code, best", "s", best_i, r.best("bare"), "", None),
        ("sandbox.start alone / bare start with byte code, best", "s", r.best("sandbox"), r.best("bare"), "", None),
        ("interpreter start (python -S -c pass), best", "s", r.best("interpreter"), None, "", None),
    ]  # fmt: skip


def passed(r: ColdResult) -> bool:
    return all(ok is not False for *_, ok in rows(r))


def notes(s: ColdSettings, r: ColdResult) -> list[str]:
    out = [
        f"coldstart: {s.rounds} rounds, each kind first in turn, each start after the service "
        f"scaled to zero and {cloud_run.SETTLE:g} s of quiet; the image has {r.pyc_files} "
        f".pyc files (built in {r.build_s or 0:.1f} s)",
    ]
    for kind in KINDS:
        values = ", ".join(f"{v:.3f}" for v in r.starts[kind])
        out.append(f"coldstart {kind}: {values or '-'} s")
    parts = {k: r.best(k) for k in KINDS}
    if all(v is not None for v in parts.values()):
        i, f, b, x, p = (parts[k] or 0.0 for k in KINDS)
        out.append(
            f"coldstart where the instance's time goes (best of each): interpreter {p:.3f} s, "
            f"functions-framework start with byte code (bare - interpreter) {b - p:.3f} s, "
            f"sandbox set-up (sandbox - bare) {x - b:+.3f} s, autoscaler and ingress "
            f"(instance - sandbox) {i - x:+.3f} s; compiling saved (fresh - bare) {f - b:.3f} s"
        )
    out.extend(f"coldstart: ERROR {e}" for e in r.errors)
    if r.other_cores is not None and r.other_cores > NOISY_CORES:
        out.append(
            f"coldstart: WARNING: other processes used {r.other_cores:.2f} cores meanwhile; "
            "the figures are skewed by other work on this machine"
        )
    out.append(f"coldstart: wall time {r.seconds:.0f} s")
    return out


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def markdown(s: ColdSettings, r: ColdResult) -> str:
    def ratio(a: float | None, b: float | None) -> str:
        return "-" if a is None or not b else f"{a / b:.2f}x"

    bi, bf, mi, mf = r.best("instance"), r.best("fresh"), r.median("instance"), r.median("fresh")
    lines = [
        "| Python cold start, scaled to zero → first 200 | localcloud | bare "
        "`functions-framework`, fresh copy | localcloud / bare | target |",
        "|---|---:|---:|---:|---|",
        f"| Best of {s.rounds} | {_s(bi)} | {_s(bf)} | {ratio(bi, bf)} | <= {TARGET:g}x |",
        f"| Median of {s.rounds} | {_s(mi)} | {_s(mf)} | {ratio(mi, mf)} | - |",
        "",
        f"Where the instance's time goes (best of {s.rounds}): interpreter start "
        f"{_s(r.best('interpreter'))}; functions-framework started by hand on the image's "
        f"tree with its byte code {_s(r.best('bare'))}; the same instance by `sandbox.start` "
        f"alone {_s(r.best('sandbox'))}; through the autoscaler and ingress {_s(bi)}. "
        "Alternating rounds in one run; the fresh copy is the image's tree without its "
        "byte code in a new temporary directory each time, started with the image's Env "
        "(so it compiles, and writes nothing).",
    ]
    return "\n".join(lines)


def to_json(s: ColdSettings, r: ColdResult) -> dict[str, Any]:
    return {
        "settings": asdict(s),
        "starts": r.starts,
        "best": {k: r.best(k) for k in KINDS},
        "median": {k: r.median(k) for k in KINDS},
        "pyc_files": r.pyc_files,
        "build_s": r.build_s,
        "errors": r.errors,
        "other_cores": r.other_cores,
        "seconds": r.seconds,
    }

"""Python and Node.js cold starts (issue 19): a deployed service scaled to zero, from the
request to the first 200, against a bare ``functions-framework`` start of the same source
from a fresh copy; side by side in one run, alternating rounds.

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

The Node.js function (``examples/hello-node``: one dependency, escape-html, from its lock
file) is built and deployed the same way, on the same localcloud, and its kinds take their
turns in the same rounds:

- **node-instance**: its first request through the ingress, scaled to zero;
- **npx**: the image's ``/workspace`` (the source and its ``node_modules``) with the
  framework's packages added to that ``node_modules``, as a user who ran ``npm install
  @google-cloud/functions-framework`` has it, copied into a new temporary directory
  (outside the clock), then ``npx functions-framework --target=... --signature-type=http``
  spawned there with the host's PATH and HOME, until its first 200: what the issue calls
  a bare start;
- **node-bare**: the image's entrypoint (``node .../functions-framework/build/src/main.js``)
  by hand on the image's tree with its Env: the instance minus the sandbox, autoscaler
  and ingress (and npx's own start);
- **node-sandbox**: ``sandbox.start`` alone;
- **node-interpreter**: ``node -e 0``, to the exit.

The localcloud of these kinds runs with ``LOCALCLOUD_RUN_SPARES=false``: each instance
is started anew, as on Google Cloud. With spares (the default), an instance of an image
whose base started within the last 300 s takes over a sandbox of that base waiting with
its framework loaded (``localcloud/run/prestart.py``); a second localcloud, with the same
two services, times that too:

- **spare** and **node-spare**: the first request to the scaled-to-zero service, a spare
  of its base waiting (started after the instance before).

The judged ratios are instance / fresh (Python) and node-instance / npx (Node.js), best to
best (other processes only ever add time), with medians beside them; the other kinds say
where the instance's time goes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
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
from localcloud.run import sandbox
from localcloud.run.images import UnpackedImage

TARGET = 0.6  # instance / fresh (issue 19)
NODE_TARGET = 1.2  # node-instance / npx (issue 19)
KINDS = ("instance", "fresh", "bare", "sandbox", "interpreter")
NODE_KINDS = ("node-instance", "npx", "node-bare", "node-sandbox", "node-interpreter")
SPARE_KINDS = ("spare", "node-spare")
ALL_KINDS = KINDS + NODE_KINDS + SPARE_KINDS
SPARE_SETTLE_S = 0.5  # after a start with spares: the next spare's own start ends
NODE_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hello-node"
NODE_FILES = ("index.js", "package.json", "package-lock.json")
NODE_TARGET_NAME = "hello_node"
# nodejs20: the host's ``node``, which ``npx`` (and the program it starts) runs on, so
# both sides run the same Node.js.
NODE_BUILD_ENV = {
    "GOOGLE_RUNTIME": "nodejs20",
    "GOOGLE_FUNCTION_TARGET": NODE_TARGET_NAME,
    "GOOGLE_FUNCTION_SIGNATURE_TYPE": "http",
}
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
    starts: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in ALL_KINDS})
    pyc_files: int | None = None  # byte code files in the image's tree
    build_s: float | None = None
    node_build_s: float | None = None
    node_files: int | None = None  # files in the npx side's fresh copy
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


def node_template(image: UnpackedImage, scratch: Path) -> Path:
    """The Node.js function's directory as its author has it after ``npm install`` with the
    framework as a dependency: the image's ``/workspace`` (source and ``node_modules``)
    with the framework layer's packages added to that ``node_modules``."""
    root = Path(tempfile.mkdtemp(prefix="node-template-", dir=scratch)) / "app"
    shutil.copytree(image.rootfs / "workspace", root, symlinks=True)
    framework = image.rootfs / "layers" / "nodejs" / "functions-framework" / "node_modules"
    shutil.copytree(framework, root / "node_modules", symlinks=True, dirs_exist_ok=True)
    program = root / "node_modules" / ".bin" / "functions-framework"
    if not program.exists():
        raise RuntimeError(f"the framework layer has no {program.relative_to(root)}")
    return root


def timed_start(
    argv: list[str], env: dict[str, str], cwd: Path, port: int, log_file: Path, timeout: float
) -> float:
    """Spawn to first 200 on ``port``, in seconds; the process group is stopped afterwards."""
    with open(log_file, "ab") as out:
        t0 = time.perf_counter()
        process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True,
        )  # fmt: skip
    try:
        t1 = cloud_run.first_answer(
            port, time.monotonic() + timeout, lambda: process.poll() is None
        )
        return t1 - t0
    finally:
        cloud_run.stop_group(process)


def npx_start(template: Path, scratch: Path, log_file: Path, timeout: float) -> float:
    """``npx functions-framework`` in a fresh copy of ``template`` (copied outside the clock),
    with the host's PATH and HOME as a user's shell has them."""
    copy = Path(tempfile.mkdtemp(prefix="npx-", dir=scratch)) / "app"
    shutil.copytree(template, copy, symlinks=True)
    try:
        port = testing.free_port()
        argv = ["npx", "functions-framework", f"--target={NODE_TARGET_NAME}"]
        argv += ["--signature-type=http", f"--port={port}"]
        env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
        return timed_start(argv, env, copy, port, log_file, timeout)
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)


def node_command(image: UnpackedImage, port: int) -> tuple[list[str], dict[str, str], Path]:
    """The image's entrypoint run by hand: the node the sandbox binds, the image's Env with
    its paths (``/workspace``, ``/layers``) moved into the unpacked rootfs."""
    node = sandbox.find_node(image.runtime or image.env.get("GOOGLE_RUNTIME", ""))
    tops = ["/" + p.name for p in image.rootfs.iterdir()]

    def host(path: str) -> str:
        inside = any(path == t or path.startswith(t + "/") for t in tops)
        return str(image.rootfs) + path if inside else path

    env = {**image.env, "PORT": str(port)}
    if "NODE_PATH" in env:
        env["NODE_PATH"] = ":".join(host(p) for p in env["NODE_PATH"].split(":") if p)
    argv = [node.executable, *(host(a) for a in image.entrypoint[1:])]
    return argv, env, Path(host(image.working_dir or "/workspace"))


def node_bare_start(image: UnpackedImage, log_file: Path, timeout: float) -> float:
    port = testing.free_port()
    argv, env, cwd = node_command(image, port)
    return timed_start(argv, env, cwd, port, log_file, timeout)


def node_interpreter_start(image: UnpackedImage) -> float:
    """``node -e 0`` with the image's Env: the runtime alone, spawn to exit."""
    argv, env, cwd = node_command(image, 0)
    t0 = time.perf_counter()
    subprocess.run([argv[0], "-e", "0"], env=env, cwd=cwd, check=True, timeout=30)
    return time.perf_counter() - t0


def node_source() -> dict[str, str]:
    return {name: (NODE_EXAMPLE / name).read_text() for name in NODE_FILES}


def bench(s: ColdSettings, result: ColdResult, scratch: Path) -> None:
    settings = cloud_run.RunSettings(timeout=s.timeout, wrk=False)
    helper = cloud_run.Bench(settings, cloud_run.RunResult(), scratch)
    log(
        f"coldstart: two localclouds, spares off and on, LOCALCLOUD_RUN_IDLE_MS={cloud_run.IDLE_MS}"
    )
    # The deploy goes to the run benchmark's project: localcloud's own project, so that its
    # default build account is granted what builds need (testing.start does that).
    env = {
        "LOCALCLOUD_RUN_IDLE_MS": str(cloud_run.IDLE_MS),
        "LOCALCLOUD_PROJECT": cloud_run.PROJECT,
    }
    spares_helper = cloud_run.Bench(settings, cloud_run.RunResult(), scratch / "spares")
    with contextlib.ExitStack() as running:  # each localcloud stopped, whatever fails
        instance = testing.start(
            helper.data_dir, extra_env={**env, "LOCALCLOUD_RUN_SPARES": "false"}
        )
        running.callback(instance.stop)
        with_spares = testing.start(spares_helper.data_dir, extra_env=env)
        running.callback(with_spares.stop)
        measure(s, result, scratch, helper, spares_helper, instance, with_spares)


def measure(
    s: ColdSettings,
    result: ColdResult,
    scratch: Path,
    helper: cloud_run.Bench,
    spares_helper: cloud_run.Bench,
    instance: testing.Instance,
    with_spares: testing.Instance,
) -> None:
    """Deploy both services on both localclouds, then time the rounds."""
    _, spare_service, spare_revision = spares_helper.deploy_on(with_spares)
    _, node_spare_service, node_spare_revision = spares_helper.deploy_on(
        with_spares, node_source(), NODE_BUILD_ENV, "bench-cold-node"
    )
    digest, service, revision = helper.deploy_on(instance)
    result.build_s = helper.result.build_s
    node_digest, node_service, node_revision = helper.deploy_on(
        instance, node_source(), NODE_BUILD_ENV, "bench-cold-node"
    )
    result.node_build_s = helper.result.build_s
    all_revisions = (revision, node_revision, spare_revision, node_spare_revision)
    revisions = [r.name.rsplit("/", 1)[-1] for r in all_revisions]
    node_image = cloud_run.load_image(helper.data_dir, node_digest)
    template = node_template(node_image, scratch)
    result.node_files = sum(1 for _ in template.rglob("*") if _.is_file())
    image = cloud_run.load_image(helper.data_dir, digest)
    result.pyc_files = sum(1 for _ in image.rootfs.rglob("*.pyc"))
    log_file = scratch / "by-hand.log"

    def through_ingress(uri: str) -> float:
        port = int(uri.rsplit(":", 1)[1].strip("/"))
        t0 = time.perf_counter()
        status = cloud_run.status_of(port, s.timeout)
        if status != 200:
            raise RuntimeError(f"the cold request to {uri} answered {status}")
        return time.perf_counter() - t0

    def with_spare(uri: str) -> float:
        seconds = through_ingress(uri)
        time.sleep(SPARE_SETTLE_S)
        return seconds

    def fresh() -> float:
        copy = fresh_copy(image, scratch)
        try:
            return cloud_run.bare_start(copy, log_file, s.timeout)
        finally:
            shutil.rmtree(copy.rootfs, ignore_errors=True)

    starts = {
        "instance": lambda: through_ingress(service.uri),
        "fresh": fresh,
        "bare": lambda: cloud_run.bare_start(image, log_file, s.timeout),
        "sandbox": lambda: cloud_run.bwrap_start(image, log_file, s.timeout),
        "interpreter": lambda: interpreter_start(image),
        "node-instance": lambda: through_ingress(node_service.uri),
        "npx": lambda: npx_start(template, scratch, log_file, s.timeout),
        "node-bare": lambda: node_bare_start(node_image, log_file, s.timeout),
        "node-sandbox": lambda: cloud_run.bwrap_start(node_image, log_file, s.timeout),
        "node-interpreter": lambda: node_interpreter_start(node_image),
        "spare": lambda: with_spare(spare_service.uri),
        "node-spare": lambda: with_spare(node_spare_service.uri),
    }
    # The first start after deploying: not a cold start like the others.
    for uri in (service.uri, node_service.uri, spare_service.uri, node_spare_service.uri):
        through_ingress(uri)
    log(f"coldstart: {s.rounds} rounds of {', '.join(ALL_KINDS)} ...")
    for i in range(s.rounds):
        shift = i % len(ALL_KINDS)
        for kind in ALL_KINDS[shift:] + ALL_KINDS[:shift]:
            for rid in revisions:  # also a quiet moment before each start
                helper.wait_for_zero(rid)
            result.starts[kind].append(starts[kind]())
    log("coldstart: medians " + ", ".join(f"{k} {result.median(k) or 0:.3f} s" for k in ALL_KINDS))


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
    node_i, npx = r.best("node-instance"), r.best("npx")
    node_ok = not r.errors and node_i is not None and bool(npx) and node_i / npx <= NODE_TARGET
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
        ("Node.js cold start / bare npx functions-framework start, best", "s", node_i, npx, f"<= {NODE_TARGET:g}x npx", node_ok),
        ("Node.js cold start / bare npx start, median", "s", r.median("node-instance"), r.median("npx"), "", None),
        ("Node.js cold start / the image's entrypoint by hand, best", "s", node_i, r.best("node-bare"), "", None),
        ("Node.js sandbox.start alone / entrypoint by hand, best", "s", r.best("node-sandbox"), r.best("node-bare"), "", None),
        ("node start (node -e 0), best", "s", r.best("node-interpreter"), None, "", None),
        ("Python cold start, a spare of its base waiting / fresh, best", "s", r.best("spare"), best_f, "", None),
        ("Node.js cold start, a spare of its base waiting / npx, best", "s", r.best("node-spare"), npx, "", None),
    ]  # fmt: skip


def passed(r: ColdResult) -> bool:
    return all(ok is not False for *_, ok in rows(r))


def notes(s: ColdSettings, r: ColdResult) -> list[str]:
    out = [
        f"coldstart: {s.rounds} rounds, each kind first in turn, each start after the service "
        f"scaled to zero and {cloud_run.SETTLE:g} s of quiet; the image has {r.pyc_files} "
        f".pyc files (built in {r.build_s or 0:.1f} s)",
    ]
    out.append(
        f"coldstart Node.js: examples/hello-node built in {r.node_build_s or 0:.1f} s; the npx "
        f"side's fresh copy has {r.node_files} files"
    )
    for kind in ALL_KINDS:
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
    node = {k: r.best(k) for k in NODE_KINDS}
    if all(v is not None for v in node.values()):
        i, x, b, sb, p = (node[k] or 0.0 for k in NODE_KINDS)
        out.append(
            f"coldstart where the Node.js instance's time goes (best of each): node {p:.3f} s, "
            f"framework load and listen (node-bare - node) {b - p:.3f} s, sandbox set-up "
            f"(node-sandbox - node-bare) {sb - b:+.3f} s, autoscaler and ingress (instance - "
            f"sandbox) {i - sb:+.3f} s; npx's own start (npx - node-bare) {x - b:+.3f} s"
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
        f"| A spare of its base waiting, best of {s.rounds} | {_s(r.best('spare'))} | "
        f"{_s(bf)} | {ratio(r.best('spare'), bf)} | - |",
        f"| A spare of its base waiting, median of {s.rounds} | {_s(r.median('spare'))} | "
        f"{_s(mf)} | {ratio(r.median('spare'), mf)} | - |",
        "",
        f"Where the instance's time goes (best of {s.rounds}): interpreter start "
        f"{_s(r.best('interpreter'))}; functions-framework started by hand on the image's "
        f"tree with its byte code {_s(r.best('bare'))}; the same instance by `sandbox.start` "
        f"alone {_s(r.best('sandbox'))}; through the autoscaler and ingress {_s(bi)}. "
        "Alternating rounds in one run; the fresh copy is the image's tree without its "
        "byte code in a new temporary directory each time, started with the image's Env "
        "(so it compiles, and writes nothing).",
        "",
        "| Node.js cold start, scaled to zero → first 200 | localcloud | bare `npx "
        "functions-framework`, fresh copy | localcloud / bare | target |",
        "|---|---:|---:|---:|---|",
        f"| Best of {s.rounds} | {_s(r.best('node-instance'))} | {_s(r.best('npx'))} | "
        f"{ratio(r.best('node-instance'), r.best('npx'))} | <= {NODE_TARGET:g}x |",
        f"| Median of {s.rounds} | {_s(r.median('node-instance'))} | {_s(r.median('npx'))} | "
        f"{ratio(r.median('node-instance'), r.median('npx'))} | - |",
        f"| A spare of its base waiting, best of {s.rounds} | {_s(r.best('node-spare'))} | "
        f"{_s(r.best('npx'))} | {ratio(r.best('node-spare'), r.best('npx'))} | - |",
        f"| A spare of its base waiting, median of {s.rounds} | "
        f"{_s(r.median('node-spare'))} | {_s(r.median('npx'))} | "
        f"{ratio(r.median('node-spare'), r.median('npx'))} | - |",
        "",
        f"Where the Node.js instance's time goes (best of {s.rounds}): `node -e 0` "
        f"{_s(r.best('node-interpreter'))}; the image's entrypoint (the framework's "
        f"`main.js`) by hand on the image's tree {_s(r.best('node-bare'))}; the same instance "
        f"by `sandbox.start` alone {_s(r.best('node-sandbox'))}; through the autoscaler and "
        f"ingress {_s(r.best('node-instance'))}. The bare side: `examples/hello-node`'s "
        "`/workspace` from the image with the framework's packages added to its "
        "`node_modules` (as after `npm install @google-cloud/functions-framework`), copied "
        "anew each time outside the clock, `npx functions-framework --target=hello_node "
        "--signature-type=http` there, the host's node 20 on both sides.",
        "",
        "The first rows of each table are started anew (`LOCALCLOUD_RUN_SPARES=false`, as "
        "on Google Cloud); the spare rows are from a second localcloud with spares on (the "
        "default), where the instance takes over a sandbox of its image's base, waiting "
        "with the framework loaded since the instance before it started.",
    ]
    return "\n".join(lines)


def to_json(s: ColdSettings, r: ColdResult) -> dict[str, Any]:
    return {
        "settings": asdict(s),
        "starts": r.starts,
        "best": {k: r.best(k) for k in ALL_KINDS},
        "median": {k: r.median(k) for k in ALL_KINDS},
        "node_build_s": r.node_build_s,
        "node_files": r.node_files,
        "pyc_files": r.pyc_files,
        "build_s": r.build_s,
        "errors": r.errors,
        "other_cores": r.other_cores,
        "seconds": r.seconds,
    }

"""Cloud Build benchmarks: localcloud's buildpack against the irreducible work of a build.

A build is submitted as ``gcloud builds submit --pack`` writes it, through the official
``google-cloud-build`` client, with its source zip in localcloud's Cloud Storage. Its time
is taken end to end (``create_build`` until ``operation.result()`` returns) and from the
build's own ``start_time``/``finish_time``.

There is no other Cloud Build to compare with, so the reference is the work no builder can
avoid, measured directly in the same run on the same tree, one step after the other: unzip
the archive, ``pip install --target`` the same requirements with the buildpack's flags
(functions-framework as well for a cold build), and tar.gz the resulting trees. The
builder's overhead is (build time - irreducible) / irreducible; as both sides run the
same pip command, whose time varies with the network by far more than the builder's own
work, the judged figure takes pip's run (its start to its last line of output, seen the
same way on both sides) out of both (``Case.overhead``); the plain ratio is shown too.

Each repetition starts localcloud on a fresh data directory, so its first build has to
pip-install the functions-framework layer (cold). Then it builds the same source again and
source-only changes (warm: every layer but the source comes from the cache), and a function
with one dependency, a pure-Python wheel made here and served from a local wheelhouse
(``LOCALCLOUD_WHEELHOUSE``): first builds (each with its own requirements.txt, so each
installs) and source-only changes (the dependencies layer must come from the cache).

Each build log (``<data_dir>/logs/builds/<id>.log``, one line per phase, written live) is
watched while the build runs, so every line gets an arrival time: the phase profile.

Every wait is bounded: a build that fails or stalls fails its row and says why.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.api_core import exceptions
from google.api_core.future import polling
from google.cloud.devtools import cloudbuild_v1

from benchmarks.pubsub import cpu_snapshot, log, other_cores
from localcloud import testing
from localcloud.cloudbuild import archive, buildpack, layers
from localcloud.testing import pack_build, write_wheel, zip_tree
from orchestrator.clients import Clients, Environment

PROJECT = "bench-project"
REGION = "us-central1"
SETUP_TIMEOUT = 30.0
# The default LRO polling sleeps up to 1 s, then 1.5 s, ...: it would measure the client's
# back-off, not the build. Poll every 20-50 ms instead (a GetOperation each time).
POLLING = polling.DEFAULT_POLLING.with_delay(initial=0.02, maximum=0.05, multiplier=1.5)
LOG_POLL = 0.005  # how often the build log is read for new lines
# buildpack.pip_install's flags, after ``install --target DIR``; checked against the log.
PIP_FLAGS = [
    "--no-compile",
    "--disable-pip-version-check",
    "--no-input",
    "--no-warn-script-location",
    "--progress-bar",
    "off",
]
GZIP_LEVEL = 6  # the level the buildpack's layers use
DEPENDENCY = ("localcloud_benchdep", "0.1.0")
DEPENDENCY_MODULE = 'def greet(name):\n    return f"hello, {name}, from a local wheel"\n'
NO_DEPS_MAIN = "def hello(request):\n    return 'hello from a benchmark'\n"
DEPS_MAIN = (
    f"import {DEPENDENCY[0]}\n\n\ndef hello(request):\n"
    f"    return {DEPENDENCY[0]}.greet('benchmark')\n"
)
FUNCTION_ENV = {"GOOGLE_FUNCTION_TARGET": "hello"}

# Cases, in the order they run and are shown: (key, what it is).
CASES = {
    "cold": "cold build, no dependencies (functions-framework layer installed)",
    "warm-same": "warm rebuild, same source",
    "warm-source": "warm rebuild, source-only change",
    "deps-first": "first build with a dependency (framework cached, dependency installed)",
    "deps-source": "rebuild with a dependency, source-only change (dependency cached)",
}
COLD_CASES = ("cold", "deps-first")  # judged on overhead; the others on absolute time


@dataclass(frozen=True)
class BuildSettings:
    repeats: int = 3  # fresh data directories, each with one cold build
    warm: int = 3  # builds of every other case per data directory
    timeout: float = 180.0  # per build, and per irreducible-work step


@dataclass
class BuildRun:
    """One build through the official client."""

    build_id: str
    status: str
    client_s: float  # create_build() until operation.result() returned
    server_s: float | None  # the build's start_time to finish_time
    queued_s: float | None  # create_time to start_time
    spans: dict[str, float] = field(default_factory=dict)  # build.timing: FETCHSOURCE, ...
    phases: dict[str, float] = field(default_factory=dict)  # from the live build log
    log: list[tuple[float, str]] = field(default_factory=list)  # (s after create, line)
    detail: str = ""
    cached_deps: bool | None = None  # deps cases: the layer came from the cache
    pip_command: str = ""  # the first pip command the build ran

    @property
    def ok(self) -> bool:
        return self.status == "SUCCESS"


@dataclass
class Work:
    """The irreducible work for one source, measured directly (seconds)."""

    unzip_s: float
    pip_s: float  # the whole pip process
    tar_s: float
    tar_bytes: int
    pip_output_s: float = 0.0  # pip's start to its last line of output (as the log shows it)
    # compileall of the trees (unchecked-hash byte code, as the layers carry it; the stdlib
    # command, not the buildpack's code): an instance that is not to compile needs it done.
    compile_s: float = 0.0
    # Not part of the total: the buildpack's own code on the same input, timed afterwards
    # (archive.extract's checked unpacking, layers.write_layer's reproducible tar.gz).
    extract_s: float = 0.0
    write_layer_s: float = 0.0
    layer_bytes: int = 0

    @property
    def total_s(self) -> float:
        return self.unzip_s + self.pip_s + self.compile_s + self.tar_s


@dataclass
class Case:
    key: str
    builds: list[BuildRun] = field(default_factory=list)
    work: list[Work] = field(default_factory=list)

    def ok_builds(self) -> list[BuildRun]:
        return [b for b in self.builds if b.ok]

    @property
    def client_s(self) -> float | None:
        return median([b.client_s for b in self.ok_builds()])

    @property
    def server_s(self) -> float | None:
        return median([b.server_s for b in self.ok_builds() if b.server_s is not None])

    @property
    def irreducible_s(self) -> float | None:
        return median([w.total_s for w in self.work])

    @property
    def complete(self) -> bool:
        """Every build succeeded (and, with dependencies, the source-only ones hit the cache)."""
        if not self.builds or len(self.ok_builds()) != len(self.builds):
            return False
        return not (self.key == "deps-source" and not all(b.cached_deps for b in self.builds))

    def outside_pip(self) -> tuple[float | None, float | None]:
        """(build end to end, irreducible) minus pip's run (its start to its last line of
        output, on both sides): pip's time varies with the network from run to run, what
        remains is the work around it, so the difference is a steadier overhead figure."""
        return (
            median([b.client_s - b.phases.get("pip", 0.0) for b in self.ok_builds()]),
            median([w.total_s - w.pip_output_s for w in self.work]),
        )

    @property
    def overhead(self) -> float | None:
        """The builder's own overhead, (build - irreducible) / irreducible, with pip's run
        taken out of both sides (``outside_pip``); None without figures."""
        built, rest = self.outside_pip()
        total = self.irreducible_s
        if built is None or rest is None or not total:
            return None
        return (built - rest) / total

    def pip_runs(self) -> tuple[float | None, float | None]:
        """pip's run (start to last line of output) inside the builds and done directly:
        the same command, so they should agree; ``overhead`` relies on that."""
        return (
            median([b.phases["pip"] for b in self.ok_builds() if "pip" in b.phases]),
            median([w.pip_output_s for w in self.work if w.pip_output_s]),
        )

    def phase_medians(self) -> dict[str, float]:
        names: list[str] = []
        for b in self.ok_builds():
            names += [n for n in b.phases if n not in names]
        return {n: median([b.phases.get(n, 0.0) for b in self.ok_builds()]) or 0.0 for n in names}

    def span_medians(self) -> dict[str, float]:
        names = ("FETCHSOURCE", "BUILD", "PUSH")
        return {
            n: median([b.spans[n] for b in self.ok_builds() if n in b.spans]) or 0.0 for n in names
        }


@dataclass
class BuildResult:
    cases: dict[str, Case]
    errors: list[str] = field(default_factory=list)
    other_cores: float | None = None
    seconds: float = 0.0
    pip_flags_match: bool | None = None  # PIP_FLAGS == what the builder ran


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# -- sources -----------------------------------------------------------------------------
def no_deps_source(version: int) -> bytes:
    return zip_tree({"main.py": NO_DEPS_MAIN + f"\n# source version {version}\n"})


def deps_source(version: int, requirements: str = "") -> bytes:
    """With ``requirements``, a comment in requirements.txt: a new dependencies layer."""
    return zip_tree(
        {
            "main.py": DEPS_MAIN + f"\n# source version {version}\n",
            "requirements.txt": f"{DEPENDENCY[0]}=={DEPENDENCY[1]}\n"
            + (f"# {requirements}\n" if requirements else ""),
        }
    )


# -- the irreducible work ----------------------------------------------------------------
def irreducible(
    source: bytes, pip_args: list[str], wheelhouse: Path | None, scratch: Path, timeout: float
) -> Work:
    """Unzip, ``pip install --target`` (when ``pip_args``), tar.gz every tree: timed apart.

    ``pip_args`` may name ``{tree}``, the unpacked source (for ``-r {tree}/requirements.txt``).
    """
    work = Path(tempfile.mkdtemp(prefix="irreducible-", dir=scratch))
    last = 0.0
    try:
        zip_path = work / "source.zip"
        zip_path.write_bytes(source)
        tree = work / "tree"
        t0 = time.perf_counter()
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(tree)
        t1 = time.perf_counter()
        trees = [(tree, buildpack.WORKSPACE.strip("/"))]
        if pip_args:
            lib = work / "lib"
            lib.mkdir()
            cmd = [sys.executable, "-m", "pip", "install", "--target", str(lib), *PIP_FLAGS]
            if wheelhouse is not None:
                cmd += ["--find-links", str(wheelhouse)]
            cmd += [a.format(tree=tree) for a in pip_args]
            last, code, output = run_pip(cmd, timeout)
            if code != 0:
                raise RuntimeError(f"pip install failed ({code}): {output[-2000:]}")
            trees.append((lib, "layers/python/lib"))
        t2 = time.perf_counter()
        compile_cmd = [sys.executable, "-m", "compileall", "-q", "--invalidation-mode"]
        compile_cmd += ["unchecked-hash", *(str(root) for root, _ in trees)]
        subprocess.run(compile_cmd, check=False, timeout=timeout, capture_output=True)
        t_compiled = time.perf_counter()
        size = 0
        for i, (root, prefix) in enumerate(trees):
            out = work / f"layer{i}.tar.gz"
            with tarfile.open(out, "w:gz", compresslevel=GZIP_LEVEL) as tar:
                tar.add(root, arcname=prefix)
            size += out.stat().st_size
        t3 = time.perf_counter()
        archive.extract(zip_path, work / "checked")
        t4 = time.perf_counter()
        made = [
            layers.write_layer(root, prefix, work / f"oci{i}.tar.gz", "bench")
            for i, (root, prefix) in enumerate(trees)
        ]
        t5 = time.perf_counter()
        return Work(
            unzip_s=t1 - t0,
            pip_s=t2 - t1,
            pip_output_s=(last - t1) if pip_args else 0.0,
            compile_s=t_compiled - t2,
            tar_s=t3 - t_compiled,
            tar_bytes=size,
            extract_s=t4 - t3,
            write_layer_s=t5 - t4,
            layer_bytes=sum(layer.size for layer in made),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_pip(cmd: list[str], timeout: float) -> tuple[float, int, str]:
    """Run pip as the buildpack does (output read line by line, ``PIP_TARGET*`` dropped);
    (when its last line arrived, exit code, output). Killed after ``timeout`` seconds."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_TARGET")}
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killer = threading.Timer(timeout, process.kill)
    killer.start()
    lines: list[bytes] = []
    last = time.perf_counter()
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            lines.append(raw)
            last = time.perf_counter()
        code = process.wait()
    finally:
        killer.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    return last, code, b"".join(lines).decode(errors="replace")


# -- builds through the official client ----------------------------------------------------
class LogWatcher(threading.Thread):
    """Reads a build log as it grows; each new line is stamped with when it was seen."""

    def __init__(self, path: Path, t0: float) -> None:
        super().__init__(daemon=True, name=f"watch {path.name}")
        self.path, self.t0 = path, t0
        self.lines: list[tuple[float, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        pos, pending = 0, b""
        while True:
            stopping = self.halt.is_set()
            try:
                with open(self.path, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
            except OSError:
                chunk = b""
            if chunk:
                now = time.perf_counter() - self.t0
                pos += len(chunk)
                *complete, pending = (pending + chunk).split(b"\n")
                self.lines += [(now, c.decode(errors="replace")) for c in complete]
            if stopping:
                return
            self.halt.wait(LOG_POLL)

    def stop(self) -> list[tuple[float, str]]:
        self.halt.set()
        self.join(5)
        return self.lines


def phase_of(line: str, in_pip: bool) -> str:
    """The phase that ends when ``line`` is written (the log has one line per step)."""
    if line.startswith("starting build"):
        return "create+queue"
    if line.startswith("unpacked "):
        return "fetch+unpack"
    if line.startswith("runtime "):
        return "detect"
    if line.startswith(("functions-framework layer", "dependencies layer")):
        return "cache lookup" if "(cached)" in line else "layer tar.gz"
    if line.startswith("source layer"):
        return "source tar.gz"
    if ": digest: " in line:
        return "push"
    return "pip" if in_pip else "other"


def phases(lines: list[tuple[float, str]], end: float) -> dict[str, float]:
    """Seconds per phase: each gap between log lines is charged to the later line's phase
    (pip's own output is ``pip``; the gap from pip's last line to the layer line is pip's
    exit plus the tar.gz); from the last line to the client's return is ``finish`` (log
    upload, the operation's result, the client's next poll)."""
    out: dict[str, float] = {}
    prev, in_pip = 0.0, False
    for at, line in lines:
        name = phase_of(line, in_pip)
        out[name] = out.get(name, 0.0) + (at - prev)
        prev = at
        if line.startswith("$ "):
            in_pip = True
        elif name == "layer tar.gz":
            in_pip = False
    out["finish"] = end - prev
    return out


def seconds(start: Any, end: Any) -> float | None:
    """``end - start`` for two proto timestamps (DatetimeWithNanoseconds), when both are set."""
    if not start or not end:
        return None
    return (end - start).total_seconds()


def submit(
    clients: Clients, log_dir: Path, source: tuple[str, str, int], image: str, timeout: float
) -> BuildRun:
    build = pack_build(source, image, FUNCTION_ENV)
    t0 = time.perf_counter()
    operation = clients.cloud_build.create_build(
        project_id=PROJECT, build=build, timeout=SETUP_TIMEOUT
    )
    build_id = operation.metadata.build.id
    watcher = LogWatcher(log_dir / f"{build_id}.log", t0)
    watcher.start()
    detail = ""
    try:
        operation.result(timeout=timeout, polling=POLLING)
    except exceptions.GoogleAPICallError as exc:  # a failed build fails its operation
        detail = str(exc)
    except concurrent.futures.TimeoutError:
        detail = f"no result within {timeout:g}s"
        with contextlib.suppress(exceptions.GoogleAPICallError):
            clients.cloud_build.cancel_build(project_id=PROJECT, id=build_id, timeout=10)
    client_s = time.perf_counter() - t0
    lines = watcher.stop()
    got = clients.cloud_build.get_build(project_id=PROJECT, id=build_id, timeout=SETUP_TIMEOUT)
    status = cloudbuild_v1.Build.Status(got.status).name
    text = [line for _, line in lines]
    deps = [line for line in text if line.startswith("dependencies layer")]
    return BuildRun(
        build_id=build_id,
        status=status,
        client_s=client_s,
        server_s=seconds(got.start_time, got.finish_time),
        queued_s=seconds(got.create_time, got.start_time),
        spans={
            name: s
            for name, span in got.timing.items()
            if (s := seconds(span.start_time, span.end_time)) is not None
        },
        phases=phases(lines, client_s),
        log=lines,
        detail=got.status_detail or detail,
        cached_deps=("(cached)" in deps[0] and not any(t.startswith("$ ") for t in text))
        if deps
        else None,
        pip_command=next((t[2:] for t in text if t.startswith("$ ")), ""),
    )


def pip_flags_of(command: str) -> list[str] | None:
    """The flags between ``--target DIR`` and ``--find-links``/the requirements, as run."""
    words = command.split()
    if "--target" not in words:
        return None
    rest = words[words.index("--target") + 2 :]
    end = rest.index("--find-links") if "--find-links" in rest else len(rest) - 1
    return rest[:end]


# -- the run -----------------------------------------------------------------------------
class Bench:
    """One repetition: a fresh localcloud, every case once (warm ones ``warm`` times)."""

    def __init__(self, s: BuildSettings, cases: dict[str, Case], scratch: Path, rep: int):
        self.s, self.cases, self.scratch, self.rep = s, cases, scratch, rep
        self.wheelhouse = scratch / "wheelhouse"
        self.wheelhouse.mkdir(exist_ok=True)
        write_wheel(self.wheelhouse, *DEPENDENCY, DEPENDENCY_MODULE)
        self.commands: list[str] = []

    def run(self) -> None:
        data_dir = Path(tempfile.mkdtemp(prefix=f"data-{self.rep}-", dir=self.scratch))
        log(f"build: repetition {self.rep + 1}: starting localcloud on a fresh data dir ...")
        # LOCALCLOUD_PROJECT: testing.start grants the default build account of localcloud's
        # own project what builds need, and the builds run in PROJECT.
        env = {"LOCALCLOUD_WHEELHOUSE": str(self.wheelhouse), "LOCALCLOUD_PROJECT": PROJECT}
        instance = testing.start(data_dir, extra_env=env)
        try:
            # The storage client reads STORAGE_EMULATOR_HOST from the environment itself.
            with instance.client_env():
                self.clients = Clients(Environment.from_env(instance.env))
                self.log_dir = data_dir / "logs" / "builds"
                self.cases_run()
        finally:
            instance.stop()
            shutil.rmtree(data_dir, ignore_errors=True)

    def upload(self, data: bytes) -> tuple[str, str, int]:
        blob = self.bucket.blob(f"{uuid.uuid4().hex[:8]}.zip")
        blob.upload_from_string(data, timeout=SETUP_TIMEOUT)
        return self.bucket.name, blob.name, blob.generation

    def build(self, key: str, source: tuple[str, str, int], image: str) -> BuildRun:
        run = submit(self.clients, self.log_dir, source, image, self.s.timeout)
        self.cases[key].builds.append(run)
        if run.pip_command:
            self.commands.append(run.pip_command)
        log(
            f"build: {key}: {run.status} in {run.client_s:.2f} s "
            f"(start→finish {run.server_s or 0:.2f} s)"
        )
        return run

    def measure(self, key: str, source: bytes, pip_args: list[str], wheelhouse: bool) -> None:
        work = irreducible(
            source,
            pip_args,
            self.wheelhouse if wheelhouse else None,
            self.scratch,
            self.s.timeout,
        )
        self.cases[key].work.append(work)
        log(
            f"build: {key}: irreducible {work.total_s:.2f} s (unzip {work.unzip_s:.3f}, "
            f"pip {work.pip_s:.2f}, tar.gz {work.tar_s:.2f})"
        )

    def cases_run(self) -> None:
        self.bucket = self.clients.storage.create_bucket(
            f"bench-build-{uuid.uuid4().hex[:8]}", timeout=SETUP_TIMEOUT
        )
        warm = range(1, self.s.warm + 1)
        plain = {v: no_deps_source(v) for v in (0, *warm)}
        # deps-first: its own requirements.txt each time (a comment), so each one installs.
        firsts = {k: deps_source(0, f"first build {self.rep}-{k}") for k in warm}
        deps = {v: deps_source(v, f"first build {self.rep}-1") for v in warm}
        uploaded = {
            data: self.upload(data) for data in (*plain.values(), *firsts.values(), *deps.values())
        }
        image = f"{REGION}-docker.pkg.dev/{PROJECT}/functions/bench"
        framework = [f"{buildpack.FRAMEWORK}=={buildpack.FRAMEWORK_VERSION}"]
        requirements = ["-r", "{tree}/requirements.txt"]

        def paired(key: str, data: bytes, pip_args: list[str], image: str, n: int) -> None:
            """The build and the irreducible work, in turns, so neither side always meets
            a warmer pip cache or page cache."""
            if (self.rep + n) % 2 == 0:
                self.measure(key, data, pip_args, wheelhouse=True)
            self.build(key, uploaded[data], image)
            if (self.rep + n) % 2 == 1:
                self.measure(key, data, pip_args, wheelhouse=True)

        paired("cold", plain[0], framework, f"{image}-plain", 0)
        for _ in warm:
            self.build("warm-same", uploaded[plain[0]], f"{image}-plain")
        for v in warm:
            paired("warm-source", plain[v], [], f"{image}-plain", v)
        self.cases["warm-same"].work = list(self.cases["warm-source"].work)
        for k in warm:
            paired("deps-first", firsts[k], requirements, f"{image}-deps", k)
        for v in warm:
            paired("deps-source", deps[v], [], f"{image}-deps", v)


def run(s: BuildSettings) -> BuildResult:
    """``s.repeats`` repetitions, each on a fresh localcloud; errors are kept, not raised."""
    cases = {key: Case(key) for key in CASES}
    result = BuildResult(cases)
    began = time.monotonic()
    before = cpu_snapshot()
    commands: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-build-") as scratch:
        for rep in range(s.repeats):
            bench = Bench(s, cases, Path(scratch), rep)
            try:
                bench.run()
            except Exception as exc:
                result.errors.append(f"repetition {rep + 1}: {type(exc).__name__}: {exc}")
                log(f"build: repetition {rep + 1} failed: {exc}")
            commands += bench.commands
    result.other_cores = other_cores(before)
    result.seconds = time.monotonic() - began
    flags = [pip_flags_of(c) for c in commands]
    if flags:
        result.pip_flags_match = all(f == PIP_FLAGS for f in flags)
    return result

"""Cloud Run benchmarks: localcloud's ingress against functions-framework called directly.

One trivial HTTP function (it answers ``hello <id>``, ``id`` made once per process) is
built by localcloud's Cloud Build and deployed through the official Cloud Run client with
``max_instance_request_concurrency=80`` and at most one instance, public (``allUsers``
invoker), in a fresh localcloud. Both sides of every comparison then run exactly one
functions-framework process:

- hot: the very instance the ingress proxies to is found (the revision's ``log_uri`` says
  which port each instance of the revision was started on; the answer's ``id`` proves it is
  the same process) and loaded directly and through the service's URL in alternating rounds
  (direct, ingress, ingress, direct, ...), so a drift of the machine meets both sides
  alike; at concurrency 1 and 32, by a bounded closed-loop client (each of ``c``
  connections sends its next request when the last answer arrived, keep-alive): ``wrk``
  when it is installed (a C client: little CPU taken from the two sides), and always the
  Python client (aiohttp, connector limit ``c``), which shares the cores with what it
  measures. The CPU each process used in a round (the localcloud server, i.e. the ingress;
  the instance; the client) is read from ``/proc``, per request: where the time goes.
- cold: localcloud is restarted on the same data directory with a short idle period
  (``LOCALCLOUD_RUN_IDLE_MS``), so the autoscaler scales the service to zero soon after
  each request; the time of the first request to the scaled-to-zero service (sandbox
  start, functions-framework start, readiness, proxy) is compared with a bare
  ``python -S -m functions_framework --target hello --source main.py --port P`` started
  by hand on the same host Python with the image's layers on ``PYTHONPATH`` and the
  image's Env (spawn to first 200 answer, polled every 2 ms), and with the same instance
  started by the sandbox alone (``sandbox.start``, bwrap, no autoscaler or ingress); the
  three kinds take turns, each on a quiet machine (no instance left), and are compared
  best to best (other processes only ever add time) as well as median to median.

Every wait is bounded; every process started here is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from google.cloud import run_v2
from google.iam.v1 import policy_pb2

from benchmarks import build
from benchmarks.pubsub import cpu_snapshot, log, other_cores
from localcloud import testing
from localcloud.run import network, sandbox
from localcloud.run.images import META, UnpackedImage
from orchestrator.clients import Clients, Environment

PROJECT = "bench-project"
REGION = "us-central1"
PARENT = f"projects/{PROJECT}/locations/{REGION}"
TARGET = "hello"
MAIN = (
    "import uuid\n\nINSTANCE = uuid.uuid4().hex[:8]  # one per process\n\n\n"
    f"def {TARGET}(request):\n    return 'hello ' + INSTANCE\n"
)
CONCURRENCIES = (1, 32)
CONCURRENCY = 80  # the service's max_instance_request_concurrency
IDLE_MS = 200  # LOCALCLOUD_RUN_IDLE_MS for the cold starts
SETUP_TIMEOUT = 60.0
REQUEST_TIMEOUT = 30.0
POLL = 0.002  # how often a starting process is asked for its first answer
SETTLE = 0.2  # quiet time before a cold start, after the previous instance is gone
# "previous": the ingress of a second localcloud whose instances run in the earlier,
# filesystem-only sandbox (LOCALCLOUD_RUN_ISOLATION=filesystem): what containment costs.
SIDES = ("direct", "ingress", "previous")
# wrk's summary, one line at the end (latencies in microseconds).
WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK-RESULT %d %d %d %d %d %d\\n", summary.requests,
    summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class RunSettings:
    rounds: int = 3  # per side, concurrency and client
    round_seconds: float = 1.0  # wrk rounds are whole seconds (at least 1)
    cold_starts: int = 5  # of each kind
    wrk: bool = True  # use wrk when it is installed
    timeout: float = 60.0  # per setup step


@dataclass
class Load:
    """One round of one client against one side at one concurrency."""

    client: str  # "wrk" or "python"
    side: str  # "direct" or "ingress"
    concurrency: int
    requests: int  # answered 200
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_s: dict[str, float] = field(default_factory=dict)  # server, instance, client

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Summary:
    """One client, side and concurrency over all its rounds: total requests / total
    seconds, the median of the rounds' percentiles, CPU microseconds per request."""

    rounds: int
    requests: int
    errors: int
    rate: float
    p50_ms: float
    p99_ms: float
    cpu_us: dict[str, float]


@dataclass
class ColdStarts:
    ingress_s: list[float] = field(default_factory=list)  # first request, scaled to zero
    bare_s: list[float] = field(default_factory=list)  # functions-framework by hand
    bwrap_s: list[float] = field(default_factory=list)  # sandbox.start, no autoscaler
    previous_s: list[float] = field(default_factory=list)  # the same, filesystem sandbox only
    after_restart_s: float | None = None  # first request after localcloud restarted


@dataclass
class RunResult:
    loads: list[Load] = field(default_factory=list)
    cold: ColdStarts = field(default_factory=ColdStarts)
    clients: list[str] = field(default_factory=list)  # judged one first
    same_process: bool | None = None  # direct and ingress answered from one process
    instance_port: int | None = None
    build_s: float | None = None
    deploy_s: float | None = None
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    other_cores: float | None = None
    seconds: float = 0.0

    @property
    def client(self) -> str | None:
        """The load generator whose figures are judged (wrk when it ran)."""
        return self.clients[0] if self.clients else None

    def summary(self, client: str, side: str, concurrency: int) -> Summary | None:
        loads = [
            x
            for x in self.loads
            if x.client == client and x.side == side and x.concurrency == concurrency
        ]
        if not loads:
            return None
        requests = sum(x.requests for x in loads)
        seconds = sum(x.seconds for x in loads)
        cpu = {k: sum(x.cpu_s.get(k, 0.0) for x in loads) for k in loads[0].cpu_s}
        return Summary(
            rounds=len(loads),
            requests=requests,
            errors=sum(x.errors for x in loads),
            rate=requests / seconds if seconds > 0 else 0.0,
            p50_ms=statistics.median(x.p50_ms for x in loads),
            p99_ms=statistics.median(x.p99_ms for x in loads),
            cpu_us={k: v / requests * 1e6 for k, v in cpu.items()} if requests else {},
        )


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# -- processes and their CPU ---------------------------------------------------------------
def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, CPU ticks used) of a live process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[1]), int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def _table() -> dict[int, tuple[int, int]]:
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            found[int(entry.name)] = stat
    return found


def _argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def sandboxes(revision_id: str) -> list[int]:
    """The revision's running instances: their outer bwrap processes (whose argv sets
    K_REVISION; bwrap forks, and its child in the new namespaces has the same argv)."""
    table, found = _table(), set()
    for pid in table:
        argv = _argv(pid)
        if argv and os.path.basename(argv[0]) == "bwrap":
            triples = zip(argv, argv[1:], argv[2:], strict=False)
            if ("--setenv", "K_REVISION", revision_id) in triples:
                found.add(pid)
    return sorted(pid for pid in found if table[pid][0] not in found)


def inner_pid(outer: int) -> int:
    """The sandbox's init (bwrap's child, in the instance's namespaces) of an outer bwrap."""
    table = _table()
    children = [pid for pid, (ppid, _) in table.items() if ppid == outer]
    if not children:
        raise RuntimeError(f"bwrap {outer} has no sandbox process")
    return min(children)


def in_network_of(pid: int | None, work: Any) -> Any:
    """Run ``work()`` on a thread inside the network namespace of ``pid`` (the host's when
    None): a contained instance's port exists only there, so the direct side goes in."""
    if pid is None or os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net"):
        return work()
    box: dict[str, Any] = {}

    def run() -> None:
        namespace = network.Namespace(pid)
        try:
            with namespace.entered():
                box["value"] = work()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc
        finally:
            namespace.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def tree_ticks(root: int, table: dict[int, tuple[int, int]]) -> int:
    """CPU ticks of ``root`` and its descendants."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += table[pid][1] if pid in table else 0
        todo += children.get(pid, [])
    return total


class CpuMeter:
    """CPU seconds of the localcloud server (itself only: its children are the instances),
    the instance's process tree and the client, over one round."""

    def __init__(self, server_pid: int, instance_pid: int | None) -> None:
        self.server_pid, self.instance_pid = server_pid, instance_pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def snapshot(self) -> dict[str, float]:
        table = _table()
        own = time.process_time()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once waited for
        return {
            "server": table.get(self.server_pid, (0, 0))[1] / self.tick,
            "instance": (
                tree_ticks(self.instance_pid, table) / self.tick if self.instance_pid else 0.0
            ),
            "client": own + children.ru_utime + children.ru_stime,
        }

    @staticmethod
    def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: max(after[k] - before[k], 0.0) for k in before}


# -- load generators -----------------------------------------------------------------------
def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


async def _python_load(url: str, concurrency: int, seconds: float) -> tuple[int, int, float, list]:
    """``concurrency`` workers on one keep-alive session for ``seconds``: (ok, errors,
    elapsed, sorted latencies in ms). Each connection is opened before the clock starts."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> bool:
            try:
                async with session.get(url) as response:
                    await response.read()
                    return response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        await asyncio.gather(*(one() for _ in range(concurrency)))  # warm the connections
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                ok = await one()
                if ok:
                    latencies.append((time.perf_counter() - t0) * 1000)
                else:
                    errors += 1

        began = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(worker() for _ in range(concurrency))), seconds + REQUEST_TIMEOUT
        )
        elapsed = time.perf_counter() - began
    return len(latencies), errors, elapsed, sorted(latencies)


def python_round(
    url: str, concurrency: int, seconds: float
) -> tuple[int, int, float, float, float]:
    ok, errors, elapsed, ordered = asyncio.run(_python_load(url, concurrency, seconds))
    return ok, errors, elapsed, percentile(ordered, 0.50), percentile(ordered, 0.99)


def wrk_round(
    wrk: str, script: Path, url: str, concurrency: int, seconds: float, prefix: list[str]
) -> tuple[int, int, float, float, float]:
    """``prefix``: e.g. ``nsenter --net=...`` to load an instance from inside its network."""
    duration = max(math.ceil(seconds), 1)
    cmd = [*prefix, wrk, "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", "10s"]
    out = subprocess.run(
        [*cmd, "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=duration + REQUEST_TIMEOUT,
        check=False,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK-RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {(out.stdout + out.stderr)[-500:]}")
    requests, duration_us, p50, p99, socket_errors, status_errors = map(int, line.split()[1:])
    ok = requests - status_errors
    return ok, socket_errors + status_errors, duration_us / 1e6, p50 / 1000, p99 / 1000


# -- starting functions-framework by hand -------------------------------------------------
def get(url: str, timeout: float = REQUEST_TIMEOUT) -> tuple[int, str]:
    try:
        with NO_PROXY.open(url, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def status_of(port: int, timeout: float) -> int | None:
    """One ``GET /`` on a new connection, written by hand: the answer's status, or None
    when nothing listens yet. Cheap (a refused connect costs microseconds), so polling a
    starting process every ``POLL`` seconds takes no CPU it would need."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None
    parts = data.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def first_answer(port: int, deadline: float, alive: Any = None) -> float:
    """perf_counter() when ``port`` first answered 200; polled every ``POLL`` seconds.
    A connection the process accepted (bound, not yet serving) waits for its answer."""
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError("the process exited before answering")
        if status_of(port, max(deadline - time.monotonic(), 0.01)) == 200:
            return time.perf_counter()
        time.sleep(POLL)
    raise RuntimeError(f"port {port} did not answer 200 in time")


def load_image(data_dir: Path, digest: str) -> UnpackedImage:
    slot = data_dir / "run" / "images" / digest.removeprefix("sha256:")
    return UnpackedImage.from_json(json.loads((slot / META).read_text()), slot / "rootfs")


def bare_command(image: UnpackedImage, port: int) -> tuple[list[str], dict[str, str], Path]:
    """functions-framework started by hand: the host Python the sandbox binds, the image's
    Env with its paths (``/workspace``, ``/layers``) moved into the unpacked rootfs. ``-S``:
    the host's site-packages stay out, as the sandbox hides them (they may hold ``.pth``
    files that run at every start: the reference must not pay for what the instance
    doesn't)."""
    python = sandbox.find_python(image.runtime or image.env.get("GOOGLE_RUNTIME", ""))
    tops = ["/" + p.name for p in image.rootfs.iterdir()]

    def host(path: str) -> str:
        inside = any(path == t or path.startswith(t + "/") for t in tops)
        return str(image.rootfs) + path if inside else path

    env = {**image.env, "PORT": str(port)}
    env["PYTHONPATH"] = ":".join(host(p) for p in env.get("PYTHONPATH", "").split(":") if p)
    workspace = Path(host(image.working_dir or "/workspace"))
    argv = [python.executable, "-S", "-m", "functions_framework", "--target", TARGET]
    argv += ["--source", str(workspace / "main.py"), "--port", str(port)]
    return argv, env, workspace


def bare_start(image: UnpackedImage, log_file: Path, timeout: float) -> float:
    """Spawn to first 200, in seconds; the process group is stopped afterwards."""
    port = testing.free_port()
    argv, env, cwd = bare_command(image, port)
    with open(log_file, "ab") as out:
        t0 = time.perf_counter()
        process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            start_new_session=True,
        )  # fmt: skip
    try:
        t1 = first_answer(port, time.monotonic() + timeout, lambda: process.poll() is None)
        return t1 - t0
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


async def _bwrap_start(
    image: UnpackedImage, log_file: Path, timeout: float, contained: bool = True
) -> float:
    port = testing.free_port()
    spec = sandbox.InstanceSpec(
        image=image,
        env={"K_SERVICE": "bench", "K_REVISION": "bench-bwrap", "K_CONFIGURATION": "bench"},
        port=port,
        log_path=log_file,
        contained=contained,
    )
    t0 = time.perf_counter()
    instance = await sandbox.start(spec)
    try:

        def poll() -> float:
            return first_answer(port, time.monotonic() + timeout, lambda: instance.running)

        if instance.netns is not None:  # the port exists only inside the instance
            namespace = instance.netns

            def poll_inside() -> float:
                with namespace.entered():
                    return poll()

            t1 = await asyncio.to_thread(poll_inside)
        else:
            t1 = await asyncio.to_thread(poll)
        return t1 - t0
    finally:
        await instance.stop(grace=5)


def bwrap_start(
    image: UnpackedImage, log_file: Path, timeout: float, contained: bool = True
) -> float:
    """The same instance the autoscaler would start, by ``sandbox.start`` alone."""
    return asyncio.run(_bwrap_start(image, log_file, timeout, contained))


# -- the run -------------------------------------------------------------------------------
def instance_port(log_uri: str) -> int:
    """The port of the revision's latest instance, from the revision's log."""
    ports = [
        int(line.split("port ", 1)[1].split(")", 1)[0])
        for line in Path(log_uri).read_text(errors="replace").splitlines()
        if line.startswith("[localcloud] starting (")
    ]
    if not ports:
        raise RuntimeError(f"no instance start in {log_uri}")
    return ports[-1]


def close(clients: Clients) -> None:
    """Close the channels and sessions the clients opened (they are cached properties)."""
    for name in ("cloud_build", "run_services", "run_revisions"):
        if name in vars(clients):
            with contextlib.suppress(Exception):
                vars(clients)[name].transport.close()
    if "storage" in vars(clients):
        with contextlib.suppress(Exception):
            clients.storage.close()


class Bench:
    def __init__(self, s: RunSettings, result: RunResult, scratch: Path) -> None:
        self.s, self.result, self.scratch = s, result, scratch
        self.netns_pid: int | None = None  # the instance's sandbox init, for direct calls
        self.data_dir = scratch / "data"
        self.wrk = shutil.which("wrk") if s.wrk else None
        self.script = scratch / "report.lua"
        scratch.mkdir(parents=True, exist_ok=True)
        self.script.write_text(WRK_SCRIPT)
        result.clients = ["wrk", "python"] if self.wrk else ["python"]
        if s.wrk and not self.wrk:
            result.notes.append("wrk is not installed: only the Python client ran")

    def run(self) -> None:
        log("run: starting two localclouds on fresh data dirs (contained, previous sandbox) ...")
        # The default idle period (5 min) keeps the instances up between rounds.
        # LOCALCLOUD_PROJECT: testing.start grants localcloud's own project's default build
        # account what builds need, and the builds run in PROJECT (else refused their source).
        hot_env = {"LOCALCLOUD_RUN_IDLE_MS": "300000", "LOCALCLOUD_PROJECT": PROJECT}
        instance = testing.start(self.data_dir, extra_env=hot_env)
        previous = testing.start(
            self.scratch / "previous",
            extra_env={**hot_env, "LOCALCLOUD_RUN_ISOLATION": "filesystem"},
        )
        try:
            digest, service, revision = self.deploy_on(instance)
            _, previous_service, previous_revision = self.deploy_on(previous)
            revision_id = revision.name.rsplit("/", 1)[-1]
            try:
                port = instance_port(revision.log_uri)
                self.hot(
                    {"": service.uri, "previous": previous_service.uri},
                    port,
                    {"": instance.process.pid, "previous": previous.process.pid},
                    {"": revision_id, "previous": previous_revision.name.rsplit("/", 1)[-1]},
                )
            except Exception as exc:  # the cold starts can still be measured
                self.result.errors.append(f"hot: {type(exc).__name__}: {exc}")
                log(f"run: hot part failed: {exc}")
            previous.stop()
            instance.stop()
            log(f"run: restarting localcloud with LOCALCLOUD_RUN_IDLE_MS={IDLE_MS} ...")
            # Each cold start started anew: with spares, the instance would take over a
            # sandbox of its base waiting since the one before (measured by coldstart.py).
            cold_env = {"LOCALCLOUD_RUN_IDLE_MS": str(IDLE_MS), "LOCALCLOUD_PROJECT": PROJECT}
            instance = testing.start(
                self.data_dir,
                config=instance.config,
                extra_env={**cold_env, "LOCALCLOUD_RUN_SPARES": "false"},
            )
            self.cold(service.uri, revision_id, load_image(self.data_dir, digest))
        finally:
            previous.stop()
            instance.stop()

    def deploy_on(
        self,
        instance: testing.Instance,
        files: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        name: str = "bench-run",
    ) -> tuple[str, Any, Any]:
        with instance.client_env():
            clients = Clients(Environment.from_env(instance.env))
            try:
                return self.deploy(clients, files, env, name)
            finally:
                close(clients)

    def deploy(
        self,
        clients: Clients,
        files: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        name: str = "bench-run",
    ) -> tuple[str, Any, Any]:
        """Build with Cloud Build, deploy public with one instance at most: (image digest,
        the service, its revision). ``files`` and ``env`` (the build's): the Python
        function answering ``hello <id>`` unless given (the cold start benchmark deploys a
        Node.js one too)."""
        bucket = clients.storage.create_bucket(
            f"bench-run-{uuid.uuid4().hex[:8]}", timeout=SETUP_TIMEOUT
        )
        blob = bucket.blob("function.zip")
        source = build.zip_tree(files or {"main.py": MAIN})
        blob.upload_from_string(source, timeout=SETUP_TIMEOUT)
        image = f"{REGION}-docker.pkg.dev/{PROJECT}/functions/{name}"
        t0 = time.perf_counter()
        operation = clients.cloud_build.create_build(
            project_id=PROJECT,
            build=build.pack_build(
                (bucket.name, blob.name, blob.generation),
                image,
                env or {"GOOGLE_FUNCTION_TARGET": TARGET},
            ),
            timeout=SETUP_TIMEOUT,
        )
        built = operation.result(timeout=180, polling=build.POLLING)
        digest = built.results.images[0].digest
        self.result.build_s = time.perf_counter() - t0
        log(f"run: built {image}@{digest[:19]} in {self.result.build_s:.1f} s")
        t0 = time.perf_counter()
        service = clients.run_services.create_service(
            parent=PARENT,
            service_id=f"bench-{uuid.uuid4().hex[:6]}",
            service=run_v2.Service(
                template=run_v2.RevisionTemplate(
                    containers=[run_v2.Container(image=f"{image}@{digest}")],
                    max_instance_request_concurrency=CONCURRENCY,
                    scaling=run_v2.RevisionScaling(max_instance_count=1),
                )
            ),
            timeout=SETUP_TIMEOUT,
        ).result(timeout=self.s.timeout)
        policy = clients.run_services.get_iam_policy(request={"resource": service.name})
        policy.bindings.append(policy_pb2.Binding(role="roles/run.invoker", members=["allUsers"]))
        clients.run_services.set_iam_policy(request={"resource": service.name, "policy": policy})
        self.result.deploy_s = time.perf_counter() - t0
        log(f"run: deployed {service.uri} in {self.result.deploy_s:.1f} s")
        revision = clients.run_revisions.get_revision(name=service.latest_ready_revision)
        return digest, service, revision

    def hot(
        self, uris: dict[str, str], port: int, servers: dict[str, int], revisions: dict[str, str]
    ) -> None:
        """``uris``, ``servers``, ``revisions``: "" for the contained localcloud, "previous"
        for the one with the earlier sandbox."""
        direct = f"http://127.0.0.1:{port}/"
        urls = {
            "direct": direct,
            "ingress": uris[""].rstrip("/") + "/",
            "previous": uris["previous"].rstrip("/") + "/",
        }
        self.result.instance_port = port
        outer = sandboxes(revisions[""])
        if len(outer) != 1:
            raise RuntimeError(f"expected one instance of {revisions['']}, found {outer}")
        self.netns_pid = inner_pid(outer[0])
        before = {side: self.get(side, url) for side, url in urls.items()}
        if any(status != 200 for status, _ in before.values()):
            raise RuntimeError(f"the function does not answer 200: {before}")
        meters = {
            side: CpuMeter(servers[key], pids[0] if len(pids) == 1 else None)
            for side, key in (("direct", ""), ("ingress", ""), ("previous", "previous"))
            for pids in [sandboxes(revisions[key])]
        }
        for side, url in urls.items():  # warm every path (and the instances' threads)
            self.side(side, lambda url=url: python_round(url, max(CONCURRENCIES), 0.3))
        for client in self.result.clients:
            for c in CONCURRENCIES:
                log(f"run: {client} client, concurrency {c}: {self.s.rounds} rounds a side ...")
                for i in range(self.s.rounds):
                    shift = i % len(SIDES)
                    for side in SIDES[shift:] + SIDES[:shift]:
                        self.round(client, side, urls[side], c, meters[side])
        after = {side: self.get(side, url) for side, url in urls.items() if side != "previous"}
        answers = {body for key, (_, body) in before.items() if key != "previous"} | {
            body for _, body in after.values()
        }
        self.result.same_process = len(answers) == 1
        if not self.result.same_process:
            self.result.notes.append(
                f"direct and ingress answers came from different processes: {sorted(answers)}"
            )

    def side(self, side: str, work: Any) -> Any:
        """Direct calls go inside the instance's network; the ingress sides from the host."""
        return in_network_of(self.netns_pid if side == "direct" else None, work)

    def get(self, side: str, url: str) -> tuple[int, str]:
        return self.side(side, lambda: get(url))

    def round(self, client: str, side: str, url: str, c: int, meter: CpuMeter) -> None:
        t0 = meter.snapshot()
        if client == "wrk":
            assert self.wrk is not None
            prefix = []
            if side == "direct":  # wrk itself runs in the instance's network
                prefix = ["nsenter", f"--net=/proc/{self.netns_pid}/ns/net"]
            ok, errors, seconds, p50, p99 = wrk_round(
                self.wrk, self.script, url, c, self.s.round_seconds, prefix
            )
        else:
            ok, errors, seconds, p50, p99 = self.side(
                side, lambda: python_round(url, c, self.s.round_seconds)
            )
        cpu = meter.delta(t0, meter.snapshot())
        self.result.loads.append(Load(client, side, c, ok, errors, seconds, p50, p99, cpu))

    def wait_for_zero(self, revision_id: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while sandboxes(revision_id):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service did not scale to zero in {timeout:g}s")
            time.sleep(0.02)
        time.sleep(SETTLE)

    def cold(self, uri: str, revision_id: str, image: UnpackedImage) -> None:
        cold, port = self.result.cold, int(uri.rsplit(":", 1)[1].strip("/"))
        log_file = self.scratch / "by-hand.log"

        def timed() -> float:
            """The first request, written as the references' (the ingress listens)."""
            t0 = time.perf_counter()
            status = status_of(port, self.s.timeout)
            if status != 200:
                raise RuntimeError(f"the cold request to {uri} answered {status}")
            return time.perf_counter() - t0

        cold.after_restart_s = timed()  # the pool made anew, the image read from disk
        log(f"run: {self.s.cold_starts} cold starts of each kind ...")
        kinds = [
            (cold.ingress_s, timed),
            (cold.bare_s, lambda: bare_start(image, log_file, self.s.timeout)),
            (cold.bwrap_s, lambda: bwrap_start(image, log_file, self.s.timeout)),
            (cold.previous_s, lambda: bwrap_start(image, log_file, self.s.timeout, False)),
        ]
        for i in range(self.s.cold_starts):
            shift = i % len(kinds)
            for samples, start in kinds[shift:] + kinds[:shift]:  # each kind first in turn
                self.wait_for_zero(revision_id)  # also SETTLE: a quiet machine to start on
                samples.append(start())
        log(
            f"run: cold start {median(cold.ingress_s) or 0:.3f} s through the ingress, "
            f"{median(cold.bare_s) or 0:.3f} s by hand, {median(cold.bwrap_s) or 0:.3f} s bwrap, "
            f"{median(cold.previous_s) or 0:.3f} s bwrap with the previous flags"
        )


def run(s: RunSettings) -> RunResult:
    """Errors are kept, not raised: the rows without figures fail."""
    result = RunResult()
    began = time.monotonic()
    before = cpu_snapshot()
    with tempfile.TemporaryDirectory(prefix="bench-run-") as scratch:
        try:
            Bench(s, result, Path(scratch)).run()
        except Exception as exc:
            result.errors.append(f"{type(exc).__name__}: {exc}")
            log(f"run: failed: {exc}")
    result.other_cores = other_cores(before)
    result.seconds = time.monotonic() - began
    return result

"""Cloud Workflows benchmarks: step rate next to the PyPI ``workflows-emulator``, memory per
execution, and the overhead of an ``http.post`` step.

- Step rate: one workflow file, a ``for`` loop of N iterations of assign + switch (the
  switch's matching case assigns too), run by localcloud and by ``workflows-emulator`` in
  the same run. Steps are counted the same way for both: 2 per iteration plus the init,
  the ``for`` and the return steps (2N + 3; localcloud's own step counter agrees). localcloud
  is driven through the official client (create_execution, then get_execution every few ms)
  and timed by the execution's own start_time → end_time; the emulator is imported in a
  virtual environment of its own (``.bench/workflows-emulator-venv``: it pins an old
  FastAPI), its ``execute_workflow()`` timed in-process around the call alone (the file is
  loaded and validated before the clock starts, logging is off): the least overhead it can
  have. Both results are checked against the expected value.
- Memory: the localcloud server process's VmRSS (``/proc/<pid>/status``) before and after
  starting M executions that sleep (``sys.sleep``), all ACTIVE at once, divided by M; a few
  executions run first so that one-time allocations are not counted.
- ``http.post``: a workflow doing K sequential ``http.post`` calls to an aiohttp endpoint in
  this process, against K POSTs from aiohttp (one keep-alive session) in a child process of
  its own (as localcloud's client is) to the same endpoint, in alternating rounds; the
  overhead of a step = (execution start → end - direct) / K, best round against best round
  (on a shared machine other processes only add time; the medians are reported too).

Every wait is bounded; the localcloud started here is stopped at the end. The emulator's
venv is created once (``python3 -m venv`` + ``pip install workflows-emulator``) and reused;
when it cannot be installed or run, the reason is reported and localcloud's figures stand
alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from google.cloud.workflows import executions_v1
from google.cloud.workflows_v1 import types as wf

from benchmarks.pubsub import cpu_snapshot, log, other_cores
from localcloud import testing
from orchestrator.clients import Clients, Environment

ROOT = Path(__file__).resolve().parent.parent
PARENT = "projects/local-project/locations/us-central1"
EMULATOR = "workflows-emulator"
EMULATOR_VENV = ROOT / ".bench" / "workflows-emulator-venv"
INSTALL_TIMEOUT = 600.0  # the one-time venv install (not part of the run's two minutes)
STEP_RATE_TARGET = 20.0  # localcloud steps/s / emulator steps/s
HTTP_OVERHEAD_TARGET_MS = 1.0  # per http.post step, beyond the HTTP call itself
State = executions_v1.Execution.State

LOOP = """\
main:
  steps:
    - init:
        assign:
          - total: 0
          - threes: 0
    - loop:
        for:
          value: i
          range: [1, {n}]
          steps:
            - add:
                assign:
                  - total: ${{total + i}}
            - check:
                switch:
                  - condition: ${{i % 3 == 0}}
                    assign:
                      - threes: ${{threes + 1}}
    - done:
        return: ${{[total, threes]}}
"""
SLEEP = """\
main:
  steps:
    - wait:
        call: sys.sleep
        args:
          seconds: 300
    - done:
        return: "woke"
"""
POSTS = """\
main:
  steps:
    - init:
        assign:
          - response: null
    - loop:
        for:
          value: i
          range: [1, {k}]
          steps:
            - post:
                call: http.post
                args:
                  url: {url}
                  body:
                    n: ${{i}}
                result: response
    - done:
        return: ${{response.body.n}}
"""
# Runs in the emulator's venv: one JSON request a line on stdin ({"label", "path"}), one JSON
# line back for each, the execution timed around execute_workflow() alone.
RUNNER = """\
import json, logging, sys, time
logging.disable(logging.CRITICAL)
from workflows_emulator.main import execute_workflow, load_workflow
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    config = load_workflow(request["path"])
    began, cpu = time.perf_counter(), time.process_time()
    try:
        out, error = execute_workflow(config, {}), None
    except Exception as exc:
        out, error = None, f"{type(exc).__name__}: {exc}"
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    print(json.dumps({"seconds": seconds, "cpu": cpu, "result": out, "error": error}),
          flush=True)
"""

# The reference for http.post: K sequential POSTs from aiohttp (one keep-alive session) in a
# process of its own, as localcloud's are, to the same endpoint; {"url", "k"} in, seconds out.
DIRECT = """\
import asyncio, json, sys, time
import aiohttp

async def main():
    async with aiohttp.ClientSession() as session:
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            request = json.loads(line)
            began = time.perf_counter()
            for i in range(1, request["k"] + 1):
                async with session.post(request["url"], json={"n": i}) as response:
                    response.raise_for_status()
                    await response.json()
            print(json.dumps({"seconds": time.perf_counter() - began}), flush=True)

asyncio.run(main())
"""


def loop_steps(n: int) -> int:
    return 2 * n + 3


def loop_result(n: int) -> list[int]:
    return [n * (n + 1) // 2, n // 3]


@dataclass(frozen=True)
class WorkflowSettings:
    iterations: int = 10_000  # localcloud's loop
    emulator_iterations: int = 10_000  # the same file; fewer in a quick run (it is slow)
    runs: int = 5  # localcloud executions of the loop (best and median reported)
    emulator_runs: int = 2
    concurrent: int = 100  # sleeping executions for the memory figure
    posts: int = 200  # http.post calls per execution (and direct POSTs per round)
    rounds: int = 7  # direct / workflow rounds, alternating
    timeout: float = 60.0  # any one execution or emulator run
    emulator: bool = True

    @classmethod
    def for_run(cls, quick: bool) -> WorkflowSettings:
        if quick:
            return cls(emulator_iterations=2_000, runs=3, emulator_runs=1, posts=100, rounds=3)
        return cls()


@dataclass
class WorkflowResult:
    localcloud_s: list[float] = field(default_factory=list)  # start → end of each loop run
    localcloud_client_s: list[float] = field(default_factory=list)  # create → seen done
    emulator_s: list[float] = field(default_factory=list)
    localcloud_cpu_s: list[float] = field(default_factory=list)  # server CPU, create → done
    emulator_cpu_s: list[float] = field(default_factory=list)
    emulator_skipped: str | None = None
    emulator_http_ms: float | None = None  # per http.post call, informational
    rss_before_kb: int | None = None
    rss_after_kb: int | None = None
    active: int = 0  # executions ACTIVE when the RSS was read
    cancel_s: float | None = None
    direct_ms: list[float] = field(default_factory=list)  # per POST, each round
    workflow_ms: list[float] = field(default_factory=list)  # per http.post step, each round
    install_s: float | None = None
    errors: list[str] = field(default_factory=list)
    other_cores: float | None = None
    seconds: float = 0.0

    def rate(self, seconds: list[float], iterations: int) -> float | None:
        return loop_steps(iterations) / min(seconds) if seconds and min(seconds) > 0 else None

    @property
    def memory_kb(self) -> float | None:
        if self.rss_before_kb is None or self.rss_after_kb is None or not self.active:
            return None
        return (self.rss_after_kb - self.rss_before_kb) / self.active

    @property
    def overhead_ms(self) -> float | None:
        """Best against best: on a shared machine other processes only add time."""
        if not self.direct_ms or not self.workflow_ms:
            return None
        return min(self.workflow_ms) - min(self.direct_ms)

    @property
    def overhead_median_ms(self) -> float | None:
        if not self.direct_ms or not self.workflow_ms:
            return None
        return statistics.median(self.workflow_ms) - statistics.median(self.direct_ms)


# -- the endpoint ---------------------------------------------------------------------------
class Endpoint:
    """An aiohttp server on its own loop in a thread: echoes ``{"n": ...}`` back."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner: web.AppRunner | None = None
        self.url = self.call(self._start(), 10)

    def call(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> str:
        async def echo(request: web.Request) -> web.Response:
            return web.json_response({"n": (await request.json())["n"]})

        app = web.Application()
        app.router.add_post("/echo", echo)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/echo"

    async def _close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self._close(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# -- the emulator ---------------------------------------------------------------------------
def emulator_python(result: WorkflowResult) -> Path | None:
    """The emulator venv's python, installing it the first time; None (and why) if not."""
    python = EMULATOR_VENV / "bin" / "python"
    check = [str(python), "-c", "import workflows_emulator.main"]
    if python.exists() and subprocess.run(check, capture_output=True, timeout=60).returncode == 0:
        return python
    base = shutil.which("python3") or sys.executable
    log(f"workflows: installing {EMULATOR} into {EMULATOR_VENV} (once) ...")
    began = time.monotonic()
    try:
        subprocess.run(
            [base, "-m", "venv", "--clear", str(EMULATOR_VENV)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", EMULATOR],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
        )
        result.install_s = time.monotonic() - began
        if pip.returncode != 0:
            said = (pip.stderr or pip.stdout).strip().splitlines()
            tail = [x for x in said if x.startswith("ERROR")][-2:] or said[-3:]
            result.emulator_skipped = f"pip install {EMULATOR} failed: " + " / ".join(tail)
            return None
        if subprocess.run(check, capture_output=True, timeout=60).returncode != 0:
            result.emulator_skipped = f"{EMULATOR} installed but does not import"
            return None
    except (OSError, subprocess.SubprocessError) as exc:
        result.emulator_skipped = f"could not install {EMULATOR}: {type(exc).__name__}: {exc}"
        return None
    return python


class Child:
    """A Python child process that answers one JSON line for each JSON line it is sent."""

    def __init__(self, python: Path | str, script: str, cwd: Path, timeout: float) -> None:
        self.name = Path(python).parent.parent.name
        self.timeout = timeout
        self.process = subprocess.Popen(
            [str(python), "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,  # no stray .env is picked up
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain, daemon=True).start()
        self._next(60.0)  # {"ready": true}: imported

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr = [*self.stderr[-9:], line.rstrip()]

    def _next(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.name} did not answer in {timeout:g} s") from None
        if line is None:
            self.process.wait(5)
            tail = " / ".join(self.stderr[-3:])
            raise RuntimeError(f"{self.name} exited {self.process.returncode}: {tail}")
        return json.loads(line)

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._next(self.timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_emulator(s: WorkflowSettings, result: WorkflowResult, scratch: Path) -> Child | None:
    if not s.emulator:
        result.emulator_skipped = "disabled"
        return None
    try:
        python = emulator_python(result)
        if python is not None:
            return Child(python, RUNNER, scratch, s.timeout)
    except Exception as exc:
        result.emulator_skipped = f"{type(exc).__name__}: {exc}"
    log(f"workflows: {EMULATOR} not run: {result.emulator_skipped}")
    return None


# -- localcloud -----------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux), in seconds; 10 ms resolution."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Bench:
    def __init__(
        self, s: WorkflowSettings, result: WorkflowResult, scratch: Path, emulator: Child | None
    ) -> None:
        self.s, self.result, self.scratch, self.emulator = s, result, scratch, emulator
        self.pid = 0  # localcloud's

    def emulate(self, label: str, source: str) -> dict[str, Any] | None:
        """One execution by the emulator, or None (it is dropped at its first failure)."""
        if self.emulator is None:
            return None
        path = self.scratch / f"{label}.yaml"
        path.write_text(source)
        try:
            answer = self.emulator.ask({"path": str(path)})
        except Exception as exc:
            self.result.emulator_skipped = str(exc)
            self.emulator.close()
            self.emulator = None
            return None
        if answer["error"]:
            self.result.errors.append(f"{EMULATOR} {label}: {answer['error']}")
            return None
        return answer

    def run(self, endpoint: Endpoint) -> None:
        log("workflows: starting localcloud on a fresh data dir ...")
        instance = testing.start(self.scratch / "data")
        clients = Clients(Environment.from_env(instance.env))
        self.pid = instance.process.pid
        try:
            self.step_rate(clients)
            self.memory(clients, instance.process.pid)
            self.http(clients, endpoint)
        finally:
            for name in ("workflows", "executions"):
                if name in vars(clients):
                    with contextlib.suppress(Exception):
                        vars(clients)[name].transport.close()
            instance.stop()

    def deploy(self, clients: Clients, source: str) -> wf.Workflow:
        return clients.workflows.create_workflow(
            parent=PARENT,
            workflow_id=f"bench-{uuid.uuid4().hex[:8]}",
            workflow=wf.Workflow(source_contents=source),
        ).result(timeout=30)

    def execute(self, clients: Clients, workflow: wf.Workflow) -> tuple[Any, float]:
        """One execution to its end: (the execution, create → seen done in s)."""
        began = time.perf_counter()
        execution = clients.executions.create_execution(
            parent=workflow.name, execution=executions_v1.Execution()
        )
        deadline = time.monotonic() + self.s.timeout
        pause = 0.005  # growing: a poll costs the server (and this process) CPU meanwhile
        while execution.state == State.ACTIVE:
            if time.monotonic() > deadline:
                with contextlib.suppress(Exception):
                    clients.executions.cancel_execution(name=execution.name)
                raise RuntimeError(f"execution still ACTIVE after {self.s.timeout:g} s")
            time.sleep(pause)
            pause = min(pause * 1.5, 0.1)
            execution = clients.executions.get_execution(name=execution.name)
        seen = time.perf_counter() - began
        if execution.state != State.SUCCEEDED:
            raise RuntimeError(f"execution {execution.state.name}: {execution.error.payload}")
        return execution, seen

    @staticmethod
    def server_seconds(execution: Any) -> float:
        start, end = execution.start_time, execution.end_time
        return (end - start).total_seconds()

    def step_rate(self, clients: Clients) -> None:
        """localcloud's and the emulator's runs alternate: a drift of this (shared) machine
        meets both alike."""
        n, en = self.s.iterations, self.s.emulator_iterations
        log(
            f"workflows: loop: localcloud {self.s.runs} x {n:,} iterations, {EMULATOR} "
            f"{self.s.emulator_runs} x {en:,}, alternating ..."
        )
        workflow = self.deploy(clients, LOOP.format(n=n))
        self.execute(clients, self.deploy(clients, LOOP.format(n=10)))  # warm the path
        self.emulate("warm", LOOP.format(n=10))
        for i in range(max(self.s.runs, self.s.emulator_runs)):
            if i < self.s.runs:
                cpu = cpu_seconds(self.pid)
                execution, seen = self.execute(clients, workflow)
                self.result.localcloud_cpu_s.append(cpu_seconds(self.pid) - cpu)
                if json.loads(execution.result) != loop_result(n):
                    raise RuntimeError(f"loop: unexpected result {execution.result}")
                self.result.localcloud_s.append(self.server_seconds(execution))
                self.result.localcloud_client_s.append(seen)
            if i < self.s.emulator_runs and (answer := self.emulate("loop", LOOP.format(n=en))):
                if answer["result"] != loop_result(en):
                    self.result.errors.append(f"{EMULATOR} loop: result {answer['result']}")
                else:
                    self.result.emulator_s.append(answer["seconds"])
                    self.result.emulator_cpu_s.append(answer["cpu"])
        if self.emulator is not None and not self.result.emulator_s:
            self.result.emulator_skipped = f"{EMULATOR} produced no valid loop run"

    def memory(self, clients: Clients, pid: int) -> None:
        m = self.s.concurrent
        log(f"workflows: {m} concurrent sleeping executions ...")
        workflow = self.deploy(clients, SLEEP)
        warm = [
            clients.executions.create_execution(parent=workflow.name, execution={})
            for _ in range(5)
        ]
        for one in warm:
            clients.executions.cancel_execution(name=one.name)
        time.sleep(0.5)
        self.result.rss_before_kb = rss_kb(pid)
        made = [
            clients.executions.create_execution(parent=workflow.name, execution={})
            for _ in range(m)
        ]
        time.sleep(0.5)  # every task has reached its sys.sleep
        active = [clients.executions.get_execution(name=e.name) for e in made]
        self.result.rss_after_kb = rss_kb(pid)
        self.result.active = sum(
            e.state == State.ACTIVE and e.status.current_steps[-1].step == "wait"
            for e in active
            if e.status.current_steps
        )
        began = time.perf_counter()
        for one in made:
            clients.executions.cancel_execution(name=one.name)
        self.result.cancel_s = time.perf_counter() - began

    def http(self, clients: Clients, endpoint: Endpoint) -> None:
        k = self.s.posts
        log(f"workflows: {self.s.rounds} rounds of {k} http.post steps / direct POSTs ...")
        workflow = self.deploy(clients, POSTS.format(k=k, url=endpoint.url))
        self.execute(clients, self.deploy(clients, POSTS.format(k=5, url=endpoint.url)))
        direct = Child(sys.executable, DIRECT, self.scratch, self.s.timeout)
        try:
            direct.ask({"url": endpoint.url, "k": 20})  # warm its connection
            for _ in range(self.s.rounds):
                seconds = direct.ask({"url": endpoint.url, "k": k})["seconds"]
                self.result.direct_ms.append(seconds * 1000 / k)
                execution, _seen = self.execute(clients, workflow)
                if json.loads(execution.result) != k:
                    raise RuntimeError(f"posts: unexpected result {execution.result}")
                self.result.workflow_ms.append(self.server_seconds(execution) * 1000 / k)
        finally:
            direct.close()
        answer = self.emulate("posts", POSTS.format(k=k, url=endpoint.url))
        if answer and answer["result"] == k:
            self.result.emulator_http_ms = answer["seconds"] * 1000 / k


def run(s: WorkflowSettings) -> WorkflowResult:
    """Errors are kept, not raised: the rows without figures fail."""
    result = WorkflowResult()
    began = time.monotonic()
    endpoint = Endpoint()
    emulator = None
    try:
        with tempfile.TemporaryDirectory(prefix="bench-workflows-") as scratch:
            emulator = start_emulator(s, result, Path(scratch))
            before = cpu_snapshot()  # after the (one-time) install
            bench = Bench(s, result, Path(scratch), emulator)
            try:
                bench.run(endpoint)
            except Exception as exc:
                result.errors.append(f"localcloud: {type(exc).__name__}: {exc}")
                log(f"workflows: failed: {exc}")
            finally:
                if bench.emulator is not None:
                    bench.emulator.close()
            result.other_cores = other_cores(before)
    finally:
        endpoint.close()
    result.seconds = time.monotonic() - began - (result.install_s or 0.0)
    return result


# -- reporting (benchmarks/__main__.py turns rows() into its Row) ---------------------------
def rows(
    s: WorkflowSettings, r: WorkflowResult
) -> list[tuple[str, str, float | None, float | None, str, bool | None]]:
    """(scenario, unit, localcloud, reference, target, ok): the step rate against the
    emulator's (without it nothing to judge, unless localcloud's own run failed), memory per
    execution, and the http.post step against a direct POST, its overhead judged."""
    lc = r.rate(r.localcloud_s, s.iterations)
    em = r.rate(r.emulator_s, s.emulator_iterations)
    ok: bool | None = None
    if lc is None:
        ok = False
    elif em:
        ok = lc / em >= STEP_RATE_TARGET
    out: list[tuple[str, str, float | None, float | None, str, bool | None]] = [
        ("workflows loop step rate", "steps/s", lc, em, f">= {STEP_RATE_TARGET:g}x emulator", ok),
        (
            "workflows loop step rate, CPU time",
            "steps/s",
            r.rate(r.localcloud_cpu_s, s.iterations),
            r.rate(r.emulator_cpu_s, s.emulator_iterations),
            "",
            None,
        ),
        ("workflows memory per sleeping execution", "KB", r.memory_kb, None, "", None),
    ]
    if r.memory_kb is None or r.active < s.concurrent:
        out[-1] = (*out[-1][:5], False)
    wf_ms = min(r.workflow_ms) if r.workflow_ms else None
    direct = min(r.direct_ms) if r.direct_ms else None
    out.append(("workflows http.post step (direct: one POST)", "ms", wf_ms, direct, "", None))
    overhead = r.overhead_ms
    out.append(
        (
            "workflows http.post overhead per step",
            "ms",
            overhead,
            None,
            f"< {HTTP_OVERHEAD_TARGET_MS:g} ms",
            overhead is not None and overhead < HTTP_OVERHEAD_TARGET_MS,
        )
    )
    return out


def passed(r: WorkflowResult) -> bool:
    return not r.errors


def notes(s: WorkflowSettings, r: WorkflowResult) -> list[str]:
    def series(values: list[float], scale: float = 1.0) -> str:
        return ", ".join(f"{v * scale:.3f}" for v in values) or "-"

    out = [
        f"workflows: loop = for over range [1, N] of assign + switch (a case assigns), "
        f"2N + 3 steps counted for both; localcloud N = {s.iterations:,}, {EMULATOR} "
        f"N = {s.emulator_iterations:,}; best of the runs; localcloud timed start_time → "
        f"end_time through the official client (polled at growing intervals), {EMULATOR} "
        "around execute_workflow() in-process (logging off); the two alternate",
        f"workflows: localcloud loop runs (s, start → end): {series(r.localcloud_s)}; "
        f"server CPU (s, create → seen done, polls included): {series(r.localcloud_cpu_s)}; "
        f"create → seen done (polling, coarse): {series(r.localcloud_client_s)}",
    ]
    if r.emulator_skipped:
        out.append(f"workflows: {EMULATOR}: not run: {r.emulator_skipped}")
    else:
        out.append(
            f"workflows: {EMULATOR} loop runs (s): {series(r.emulator_s)}; CPU (s): "
            f"{series(r.emulator_cpu_s)}"
        )
    if r.emulator_http_ms is not None:
        out.append(
            f"workflows: {EMULATOR} http.post: {r.emulator_http_ms:.2f} ms per step "
            "(a new requests session per call), informational"
        )
    if r.rss_before_kb is not None and r.rss_after_kb is not None:
        out.append(
            f"workflows memory: server VmRSS {r.rss_before_kb / 1024:.1f} → "
            f"{r.rss_after_kb / 1024:.1f} MiB with {r.active}/{s.concurrent} executions "
            f"ACTIVE in sys.sleep; cancelling them all took {r.cancel_s or 0:.2f} s"
        )
    out.append(
        f"workflows http.post: {s.rounds} alternating rounds of {s.posts} sequential calls "
        f"to an aiohttp endpoint in this process; per call (ms), direct (aiohttp, keep-alive, "
        f"in a child process): {series(r.direct_ms)}; workflow (start → end / K): "
        f"{series(r.workflow_ms)}; overhead best - best {r.overhead_ms or 0:+.3f} ms, "
        f"median - median {r.overhead_median_ms or 0:+.3f} ms"
    )
    if r.install_s is not None:
        out.append(f"workflows: {EMULATOR} venv installed in {r.install_s:.1f} s (not counted)")
    out.extend(f"workflows: ERROR {err}" for err in r.errors)
    if r.other_cores is not None and r.other_cores > 0.25:
        out.append(
            f"workflows: WARNING: other processes used {r.other_cores:.2f} cores meanwhile; "
            "the figures are skewed by other work on this machine"
        )
    out.append(f"workflows: {r.seconds:.1f} s in all")
    return out


def markdown(s: WorkflowSettings, r: WorkflowResult) -> str:
    lc = r.rate(r.localcloud_s, s.iterations)
    em = r.rate(r.emulator_s, s.emulator_iterations)
    lc_cpu = r.rate(r.localcloud_cpu_s, s.iterations)
    em_cpu = r.rate(r.emulator_cpu_s, s.emulator_iterations)

    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f} steps/s"

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f} ms"

    wf_ms = min(r.workflow_ms) if r.workflow_ms else None
    direct = min(r.direct_ms) if r.direct_ms else None
    memory = "-" if r.memory_kb is None else f"{r.memory_kb:.0f} KB"
    lines = [
        f"| Cloud Workflows, official client | localcloud | {EMULATOR} / direct | ratio | target |",
        "|---|---:|---:|---:|---|",
        f"| Loop of assign + switch, {s.iterations:,} iterations (steps/s) | {rate(lc)} "
        f"| {rate(em)} | {f'{lc / em:.1f}x' if lc and em else '-'} "
        f"| >= {STEP_RATE_TARGET:g}x |",
        f"| The same loop, steps per CPU-second (server / emulator process) | {rate(lc_cpu)} "
        f"| {rate(em_cpu)} | {f'{lc_cpu / em_cpu:.1f}x' if lc_cpu and em_cpu else '-'} | - |",
        f"| Memory per sleeping execution ({s.concurrent} at once, server RSS) | {memory} "
        "| - | - | - |",
        f"| `http.post` step vs one direct aiohttp POST | {ms(wf_ms)} | {ms(direct)} "
        f"| {ms(r.overhead_ms)} added | < {HTTP_OVERHEAD_TARGET_MS:g} ms added |",
        "",
        f"Steps counted alike for both (2 per iteration + 3); localcloud timed by the "
        f"execution's start → end time, {EMULATOR} (its own venv) around `execute_workflow()` "
        f"in-process with logging off"
        + (
            f", on {s.emulator_iterations:,} iterations"
            if s.emulator_iterations != s.iterations
            else ""
        )
        + f"; best of {s.runs} / {s.emulator_runs} alternating runs. `http.post`: {s.posts} "
        "sequential calls to a local aiohttp endpoint from a workflow, against as many from "
        f"aiohttp in a process of its own (keep-alive); best of {s.rounds} alternating rounds.",
    ]
    return "\n".join(lines)


def to_json(s: WorkflowSettings, r: WorkflowResult) -> dict[str, Any]:
    data = {
        "settings": s.__dict__.copy(),
        "steps_per_run": {"localcloud": loop_steps(s.iterations)}
        | {EMULATOR: loop_steps(s.emulator_iterations)},
        "localcloud_steps_per_s": r.rate(r.localcloud_s, s.iterations),
        "emulator_steps_per_s": r.rate(r.emulator_s, s.emulator_iterations),
        "localcloud_steps_per_cpu_s": r.rate(r.localcloud_cpu_s, s.iterations),
        "emulator_steps_per_cpu_s": r.rate(r.emulator_cpu_s, s.emulator_iterations),
        "memory_kb_per_execution": r.memory_kb,
        "http_post_overhead_ms": r.overhead_ms,
        "http_post_overhead_median_ms": r.overhead_median_ms,
    }
    data.update(r.__dict__)
    return data

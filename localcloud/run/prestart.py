"""A new revision's first instance, started while its deployment is still on its way.

Cloud Run starts a revision's first instance once the revision exists, and a deploy
pipeline creates the revision only after its image is pushed and the steps between have
reported (issue 19: start it "while the previous step's work is still being reported").
Most of a Python function's start is importing its framework (functions-framework, Flask,
gunicorn: some 0.15 of a 0.2 s start), and that does not depend on the revision. So when
an image is unpacked ahead of its revision (``images.ImageCache.prepare``), one sandbox of
it is started that imports the framework and waits. A revision's first instance of that
image takes it over if it would have been started the same way: it is handed its
environment and goes on as ``python3 -m functions_framework`` does (imports the function,
listens on its ``PORT``); anything else starts anew, as before.

The same way means: the image (its digest), run by its entrypoint (the buildpack's
``python3 -m functions_framework``, no command or args of the service's own); the same
limits (the cgroup and ``/tmp`` are made at start), forwarded ports and isolation; and
every variable read while Python starts (``PYTHON*``, ``LC_*``, ``LANG``, ``TZ``,
``PATH``, ``HOME``, ``LD_*``) the same in the image as in the instance's environment.

Until it is taken over it runs none of the function's code, has no identity (a call it
made would be anonymous: ``core/peers.py`` knows only instances), writes no log and has
CPU only when nothing else of localcloud's wants it (the least cgroup weight: on two
cores, its imports at full weight slowed the deployment's own steps as much as they
saved); it is stopped when ``TTL`` passes unclaimed, and at most ``AT_ONCE`` wait at a
time. It needs the full sandbox with cgroups (a root localcloud): otherwise nothing is
started ahead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from localcloud.run import logs, sandbox
from localcloud.run.sandbox import InstanceSpec, SandboxError

if TYPE_CHECKING:
    from localcloud.run.sandbox import Instance, _Sandbox

LOG = logging.getLogger(__name__)
TTL = 60.0  # seconds a prestarted sandbox waits for its revision
AT_ONCE = 2
ENTRYPOINT = ["python3", "-m", "functions_framework"]
STARTUP_PREFIXES = ("PYTHON", "LC_", "LD_")
STARTUP_NAMES = frozenset({"LANG", "LANGUAGE", "TZ", "PATH", "HOME"})
MAX_MESSAGE = 60 * 1024  # the claim goes through a pipe (64 KiB) in one write

# What the sandbox runs: the framework imported, then, once told its environment, what
# ``python3 -m functions_framework`` runs (``-m`` puts the working directory first on
# sys.path; ``-c`` an empty string). The environment is the instance's, with what the
# start added to the one it was given kept (bwrap's PWD, Python's LC_CTYPE coercion, PEP
# 538), as a start with the instance's would have added it. EOF instead: it leaves.
SHIM = """\
def _prestarted():
    import json, os, sys
    started = dict(os.environ)
    try:
        import functions_framework._cli, functions_framework._http.gunicorn
        import gunicorn.arbiter, gunicorn.workers.gthread
    except BaseException:
        pass  # the start proper imports them again, and reports what fails
    line = sys.stdin.buffer.readline()
    if not line:
        os._exit(0)
    claim = json.loads(line)
    added = {k: v for k, v in started.items() if k not in claim["given"]}
    os.environ.clear()
    os.environ.update({**added, **claim["env"]})
    sys.path[0] = os.getcwd()
    import runpy
    return runpy
runpy = _prestarted()
del _prestarted
runpy._run_module_as_main("functions_framework")
"""


def _startup_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(STARTUP_PREFIXES) or k in STARTUP_NAMES}


def eligible(spec: InstanceSpec) -> bool:
    """Whether an instance of ``spec`` could be started ahead (before its revision)."""
    return (
        not spec.unsandboxed
        and spec.contained
        and sandbox.isolation().cgroups.enforced
        and spec.command is None
        and spec.args is None
        and sandbox.container_argv(spec) == ENTRYPOINT
        and sandbox.bwrap_available() is not None
    )


@dataclass(eq=False)
class Prestarted:
    """A sandbox of an image, its framework imported, waiting for its revision."""

    spec: InstanceSpec  # as it was started: the image, limits, forwarded ports, isolation
    sandbox: _Sandbox
    started: float
    expiry: asyncio.TimerHandle | None = None

    def fits(self, spec: InstanceSpec) -> str | None:
        """None when ``spec``'s instance may take this one over, else why not."""
        mine = self.spec
        if spec.image.digest != mine.image.digest:
            return "another image"
        if not eligible(spec):
            return "not started by its image's functions-framework entrypoint, sandboxed"
        if (spec.limits, spec.contained) != (mine.limits, mine.contained):
            return "other limits or isolation"
        if set(spec.forward_ports) != set(mine.forward_ports) or spec.port in mine.forward_ports:
            return "other forwarded ports"
        env = sandbox.instance_env(spec)
        if _startup_env(env) != _startup_env(mine.image.env):
            return "variables read at Python's start differ"
        if len(json.dumps({"env": env, "given": mine.image.env})) > MAX_MESSAGE:
            return "an environment too large to hand over"
        if self.sandbox.process.returncode is not None:
            return "it has exited"
        return None

    def claim(self, spec: InstanceSpec) -> Instance:
        """The instance of ``spec``: this sandbox, told its environment, logging to its
        revision's log from now on."""
        sb = self.sandbox
        if sb.group is not None:
            with contextlib.suppress(OSError):  # gone with its sandbox: the exit is reported
                sb.group.set_background(False)
        argv = sandbox.container_argv(spec)
        log = logs.revision_log(spec.log_path, spec.log_max_bytes)
        offset = sandbox._log_start(log, spec, "sandboxed, started ahead", argv)
        log.pump(sb.out, f"port {spec.port}")
        sb.out = -1
        env = sandbox.instance_env(spec)
        message = json.dumps({"env": env, "given": self.spec.image.env}).encode() + b"\n"
        try:
            os.write(sb.stdin, message)
        except OSError:
            pass  # it died meanwhile: the instance reports its exit as any other
        finally:
            os.close(sb.stdin)
            sb.stdin = -1
        LOG.info(
            "started instance pid %d (sandboxed, started ahead %.0f ms before) of %s on port %d",
            sb.process.pid,
            (time.monotonic() - self.started) * 1000,
            spec.image.digest,
            spec.port,
        )
        return sandbox._instance(sb, spec, argv, offset, log)

    async def discard(self) -> None:
        if self.expiry is not None:
            self.expiry.cancel()
        sb = self.sandbox
        for fd in (sb.out, sb.stdin):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        sb.out = sb.stdin = -1
        await sandbox._undo(sb.process, sb.group, sb.netns, sb.attaching)


class Prestarts:
    """The sandboxes started ahead, by image digest."""

    def __init__(self) -> None:
        self.waiting: dict[str, Prestarted] = {}
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._ending: set[asyncio.Task[None]] = set()
        self.closed = False

    def offer(self, spec: InstanceSpec) -> None:
        """Start a sandbox of ``spec.image`` ahead, if it qualifies and none is there yet."""
        digest = spec.image.digest
        if self.closed or digest in self.waiting or digest in self._starting:
            return
        if not eligible(spec):
            return
        task = asyncio.get_running_loop().create_task(self._start(spec))
        self._starting[digest] = task
        task.add_done_callback(lambda _: self._starting.pop(digest, None))

    async def _start(self, spec: InstanceSpec) -> None:
        image = spec.image
        try:
            runtime = image.runtime or image.env.get("GOOGLE_RUNTIME")
            interpreter = await asyncio.to_thread(sandbox.find_interpreter, runtime or "")
            bwrap = sandbox.bwrap_available()
            assert bwrap is not None  # eligible
            program = [ENTRYPOINT[0], "-c", SHIM]
            sb = await sandbox._spawn(
                bwrap,
                spec,
                interpreter,
                program=program,
                env=dict(image.env),
                stdin_pipe=True,
                background=True,
            )
        except (SandboxError, OSError) as exc:
            LOG.debug("not starting %s ahead: %s", image.digest, exc)
            return
        ready = Prestarted(spec, sb, time.monotonic())
        if self.closed:
            await ready.discard()
            return
        while len(self.waiting) >= AT_ONCE:  # the oldest makes room
            self._end(next(iter(self.waiting)))
        self.waiting[image.digest] = ready
        ready.expiry = asyncio.get_running_loop().call_later(TTL, self._end, image.digest)
        LOG.debug("started %s ahead of its revision (pid %d)", image.digest, sb.process.pid)

    def _end(self, digest: str) -> None:
        ready = self.waiting.pop(digest, None)
        if ready is not None:
            task = asyncio.get_running_loop().create_task(ready.discard())
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

    def take(self, spec: InstanceSpec) -> Instance | None:
        """``spec``'s instance, if a sandbox started ahead fits it (else None: start one)."""
        ready = self.waiting.get(spec.image.digest)
        if ready is None:
            return None
        why = ready.fits(spec)
        if why is not None:
            LOG.debug("not taking over %s's sandbox started ahead: %s", spec.image.digest, why)
            return None
        del self.waiting[spec.image.digest]
        if ready.expiry is not None:
            ready.expiry.cancel()
        return ready.claim(spec)

    async def start(self, spec: InstanceSpec) -> Instance:
        """An instance of ``spec``: the sandbox started ahead for it, else a new one."""
        return self.take(spec) or await sandbox.start(spec)

    async def close(self) -> None:
        self.closed = True
        for task in list(self._starting.values()):
            task.cancel()
        await asyncio.gather(*self._starting.values(), return_exceptions=True)
        for digest in list(self.waiting):
            self._end(digest)
        await asyncio.gather(*self._ending, return_exceptions=True)

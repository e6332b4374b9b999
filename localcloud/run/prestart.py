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

A sandbox started when the image is pushed starts only 0.06-0.09 s before its revision
exists, and on two cores the deployment's own steps want the CPU meanwhile. So once a
revision's first instance of an image *over a base* has started (``UnpackedImage.base``:
a buildpack image is its lower layers, the framework and the dependencies, plus the
source in ``/workspace``), a *spare* of that base is started a little later: a sandbox
of a hard-link copy of the base with an empty ``/workspace``, the framework imported, for
the next image over the same base (the user's next deploy of the function). Taking it
over first links the new image's ``/workspace`` into that copy, so the instance sees
exactly the image's tree; it owns the copy, removed when it exits. A spare waits
``SPARE_TTL``. If the image's ``/workspace`` has a module of the name of one the framework
imported (a ``http`` package, say), a start with that directory already there would have
imported the function's own, so the sandbox executes a start anew instead
(``python3 -m functions_framework``, in place, the same environment).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import stat
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from localcloud.run import images, logs, sandbox, stage
from localcloud.run.sandbox import InstanceSpec, SandboxError

if TYPE_CHECKING:
    from localcloud.run.images import UnpackedImage
    from localcloud.run.sandbox import Instance, _Sandbox

LOG = logging.getLogger(__name__)
TTL = 60.0  # seconds a prestarted sandbox waits for its revision
SPARE_TTL = 300.0  # seconds a spare of a base waits for the next image over it
SPARE_DELAY = 0.1  # seconds after an instance over a base started before its spare starts
AT_ONCE = 2
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
    env = {**added, **claim["env"]}
    here = os.getcwd()
    import importlib.machinery
    importlib.invalidate_caches()  # the directory may have been empty when it was listed
    for name, module in list(sys.modules.items()):
        # A module of the function's imported already (before it was told its environment),
        # or one the function has its own of: a start would have imported that one.
        origin = getattr(getattr(module, "__spec__", None), "origin", None) or ""
        if not origin.startswith("/"):
            continue
        if origin.startswith(here + "/") or (
            "." not in name and importlib.machinery.PathFinder.find_spec(name, [here])
        ):
            os.execvpe(claim["argv"][0], claim["argv"], env)  # start anew, in place
    os.environ.clear()
    os.environ.update(env)
    sys.path[0] = here
    import runpy
    return runpy
runpy = _prestarted()
del _prestarted
runpy._run_module_as_main("functions_framework")
"""


# The Node.js buildpack's entrypoint is ``node <the framework's main.js>``, which requires
# its modules (express and the rest: most of the start), then reads its options from
# process.argv and the environment when it runs. The sandbox runs ``node -e`` this, the
# program as its argument: main.js's modules required; then, told its environment, the
# program run as ``node <program>`` runs it (process.argv, execArgv and require.main as
# that start has them: ``Module.runMain``). Nothing of the function's is required before.
NODE_SHIM = """\
(() => {
  const fs = require("fs");
  const path = require("path");
  const started = Object.assign({}, process.env);
  const program = process.argv[1];
  for (const name of ["loader", "invoker", "server", "options", "logger"]) {
    try { require(path.join(path.dirname(program), name)); } catch (e) { break; }
  }
  const chunks = [];
  const buffer = Buffer.alloc(65536);
  for (;;) {
    let n;
    try { n = fs.readSync(0, buffer, 0, buffer.length, null); } catch (e) {
      if (e.code === "EAGAIN") { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5); continue; }
      throw e;
    }
    if (n === 0) break;
    chunks.push(Buffer.from(buffer.subarray(0, n)));
    if (buffer[n - 1] === 10) break;
  }
  const line = Buffer.concat(chunks).toString();
  if (!line.endsWith("\\n")) process.exit(0);
  const claim = JSON.parse(line);
  const env = {};
  for (const [k, v] of Object.entries(started)) if (!(k in claim.given)) env[k] = v;
  Object.assign(env, claim.env);
  for (const k of Object.keys(process.env)) delete process.env[k];
  Object.assign(process.env, env);
  process.argv = [process.execPath, path.resolve(claim.argv[1])];
  process.execArgv = [];
  require("module").runMain();
})();
"""


@dataclass(frozen=True)
class Starter:
    """How one language's functions are started ahead: which entrypoints, the program
    that waits, and the variables read as the interpreter and framework load (they must
    be the instance's already when it starts)."""

    name: str
    prefixes: tuple[str, ...]
    names: frozenset[str]

    def program(self, argv: list[str]) -> list[str] | None:
        """What the sandbox runs for the entrypoint ``argv``; None if not this language's."""
        if self.name == "python" and argv == ["python3", "-m", "functions_framework"]:
            return ["python3", "-c", SHIM]
        if self.name == "nodejs" and len(argv) == 2 and argv[0] == "node" and argv[1][:1] == "/":
            return ["node", "-e", NODE_SHIM, argv[1]]
        return None

    def startup_env(self, env: dict[str, str]) -> dict[str, str]:
        return {k: v for k, v in env.items() if k.startswith(self.prefixes) or k in self.names}


STARTERS = (
    Starter(
        "python",
        ("PYTHON", "LC_", "LD_"),
        frozenset({"LANG", "LANGUAGE", "TZ", "PATH", "HOME"}),
    ),
    # Node's own (NODE_OPTIONS, NODE_PATH...), and what the framework's modules read as
    # they load (debug: DEBUG*; depd: NO_DEPRECATION, TRACE_DEPRECATION).
    Starter(
        "nodejs",
        ("NODE_", "DEBUG", "UV_", "OPENSSL_", "SSL_CERT_", "LC_", "LD_"),
        frozenset({"NO_DEPRECATION", "TRACE_DEPRECATION", "LANG", "TZ", "PATH", "HOME"}),
    ),
)


def starter(spec: InstanceSpec) -> tuple[Starter, list[str]] | None:
    """The language of ``spec``'s entrypoint and the program started ahead for it."""
    try:
        argv = sandbox.container_argv(spec)
    except SandboxError:
        return None  # nothing to run: the revision reports it
    for each in STARTERS:
        program = each.program(argv)
        if program is not None:
            return each, program
    return None


def eligible(spec: InstanceSpec) -> bool:
    """Whether an instance of ``spec`` could be started ahead (before its revision)."""
    return (
        not spec.unsandboxed
        and spec.contained
        and sandbox.isolation().cgroups.enforced
        and spec.command is None
        and spec.args is None
        and starter(spec) is not None
        and sandbox.bwrap_available() is not None
    )


def _message(spec: InstanceSpec, given: dict[str, str]) -> bytes:
    """What the sandbox is told when ``spec``'s instance takes it over."""
    env = sandbox.instance_env(spec)
    claim = {"env": env, "given": given, "argv": sandbox.container_argv(spec)}
    return json.dumps(claim).encode() + b"\n"


def _fill(image: UnpackedImage, root: Path) -> None:
    """The spare's tree at ``root`` (a copy of ``image``'s base) made ``image``'s tree:
    what its last layer added, linked in, and the directories it wrote given their mode."""
    written = []
    for rel in image.added:
        source, dest = image.rootfs / rel, root / rel
        mode = os.lstat(source).st_mode
        if stat.S_ISDIR(mode):
            if not os.path.isdir(dest):
                os.mkdir(dest)
            written.append((source, dest))
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(source), dest)
        else:
            images._link_or_copy(str(source), str(dest))
    for source, dest in reversed(written):
        shutil.copystat(source, dest, follow_symlinks=False)


@dataclass(eq=False)
class Prestarted:
    """A sandbox, its framework imported, waiting for its revision: of one image, or (a
    spare, ``root`` set) of a base, on a copy of it at ``root`` with an empty top
    directory that the image taking it over fills."""

    spec: InstanceSpec  # as it was started: the image, limits, forwarded ports, isolation
    sandbox: _Sandbox
    started: float
    given: dict[str, str]  # the environment it was started with
    expiry: asyncio.TimerHandle | None = None
    root: Path | None = None

    def fits(self, spec: InstanceSpec) -> str | None:
        """None when ``spec``'s instance may take this one over, else why not."""
        mine = self.spec
        image = spec.image
        if self.root is None and image.digest != mine.image.digest:
            return "another image"
        if self.root is not None and (
            image.base is None
            or (image.base, image.top, image.working_dir, sandbox._runtime(image))
            != (
                mine.image.base,
                mine.image.top,
                mine.image.working_dir,
                sandbox._runtime(mine.image),
            )
        ):
            return "not an image over this base"
        if not eligible(spec):
            return "not started by its image's functions-framework entrypoint, sandboxed"
        if (spec.limits, spec.contained) != (mine.limits, mine.contained):
            return "other limits or isolation"
        if set(spec.forward_ports) != set(mine.forward_ports) or spec.port in mine.forward_ports:
            return "other forwarded ports"
        found, started = starter(spec), starter(mine)
        assert found is not None  # eligible
        if started is None or started[0].name != found[0].name:
            return "another language's framework"
        env = sandbox.instance_env(spec)
        if found[0].startup_env(env) != found[0].startup_env(self.given):
            return "variables read as the interpreter and framework load differ"
        if len(_message(spec, self.given)) > MAX_MESSAGE:
            return "an environment too large to hand over"
        if self.sandbox.process.returncode is not None:
            return "it has exited"
        return None

    def claim(self, spec: InstanceSpec) -> Instance:
        """The instance of ``spec``: this sandbox, told its environment, logging to its
        revision's log from now on (a spare's tree filled by the caller)."""
        sb = self.sandbox
        if sb.group is not None:
            with contextlib.suppress(OSError):  # gone with its sandbox: the exit is reported
                sb.group.set_background(False)
        argv = sandbox.container_argv(spec)
        log = logs.revision_log(spec.log_path, spec.log_max_bytes)
        offset = sandbox._log_start(log, spec, "sandboxed, started ahead", argv)
        log.pump(sb.out, f"port {spec.port}")
        sb.out = -1
        try:
            os.write(sb.stdin, _message(spec, self.given))
        except OSError:
            pass  # it died meanwhile: the instance reports its exit as any other
        finally:
            os.close(sb.stdin)
            sb.stdin = -1
        LOG.info(
            "started instance pid %d (sandboxed, started ahead %.0f ms before%s) of %s on port %d",
            sb.process.pid,
            (time.monotonic() - self.started) * 1000,
            ", from its base" if self.root is not None else "",
            spec.image.digest,
            spec.port,
        )
        instance = sandbox._instance(sb, spec, argv, offset, log)
        instance.scratch = self.root
        return instance

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
        if self.root is not None:
            await asyncio.to_thread(shutil.rmtree, self.root, True)


def spare_key(spec: InstanceSpec) -> str | None:
    """The spare an instance of ``spec`` could take over: of its image's base, with its
    limits (a Cloud Functions revision's 256M and a sixth of a CPU, next to a Cloud Run
    service's defaults, keep a spare each)."""
    image, limits = spec.image, spec.limits
    if image.base is None:
        return None
    return f"base:{image.base}:{limits.memory}:{limits.cpu}:{limits.pids}"


class Prestarts:
    """The sandboxes started ahead: by image digest, and spares by base and limits
    (:func:`spare_key`), the spares' trees under ``scratch`` (None: no spares)."""

    def __init__(self, scratch: Path | None = None) -> None:
        self.waiting: dict[str, Prestarted] = {}
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._planned: dict[str, asyncio.TimerHandle] = {}
        self._ending: set[asyncio.Task[None]] = set()
        self.closed = False
        self.scratch = (
            None if scratch is None else scratch / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        if scratch is not None:
            _remove_orphans(scratch)

    def offer(self, spec: InstanceSpec) -> None:
        """Start a sandbox of ``spec.image`` ahead, if it qualifies and none is there yet
        (nor a spare of its base)."""
        digest = spec.image.digest
        base = spare_key(spec)
        if self.closed or digest in self.waiting or digest in self._starting:
            return
        if base is not None and (base in self.waiting or base in self._starting):
            return
        if not eligible(spec):
            return
        self._launch(digest, spec, None)

    def _launch(self, key: str, spec: InstanceSpec, root: Path | None) -> None:
        task = asyncio.get_running_loop().create_task(self._start(key, spec, root))
        self._starting[key] = task
        task.add_done_callback(lambda _: self._starting.pop(key, None))

    def _plan_spare(self, spec: InstanceSpec) -> None:
        """A spare of ``spec``'s base, started ``SPARE_DELAY`` from now (after the instance
        just started has had the CPU for its own start)."""
        key, scratch = spare_key(spec), self.scratch
        if key is None or scratch is None or self.closed or not eligible(spec):
            return
        waiting = self.waiting.get(key)
        if waiting is not None and waiting.fits(spec) is not None:
            self._end(key)  # one that would not do now (other forwarded ports, ...): renewed
        if key in self.waiting or key in self._starting or key in self._planned:
            return

        def launch() -> None:
            del self._planned[key]
            if not self.closed and key not in self.waiting and key not in self._starting:
                self._launch(key, spec, scratch / uuid.uuid4().hex)

        self._planned[key] = asyncio.get_running_loop().call_later(SPARE_DELAY, launch)

    async def _start(self, key: str, spec: InstanceSpec, root: Path | None) -> None:
        image = spec.image
        ttl = TTL
        try:
            found = starter(spec)
            assert found is not None  # eligible
            # The image's environment; a spare's with what the instance that started before
            # it was started with of what loads with the interpreter (PYTHONHASHSEED...),
            # as the next instance of the service is likely to be.
            given = {**image.env, **found[0].startup_env(sandbox.instance_env(spec))}
            if root is not None:  # a spare: the base's tree, with its top directory empty
                assert image.base is not None and image.top is not None
                await asyncio.to_thread(
                    _spare_tree, Path(image.base), root, image.top, image.working_dir
                )
                image = replace(image, rootfs=root)
                spec = replace(spec, image=image, env={}, port=0, identity=None)
                ttl = SPARE_TTL
            runtime = sandbox._runtime(image)
            interpreter = await asyncio.to_thread(sandbox.find_interpreter, runtime or "")
            bwrap = sandbox.bwrap_available()
            assert bwrap is not None  # eligible
            sb = await sandbox._spawn(
                bwrap,
                spec,
                interpreter,
                program=found[1],
                env=given,
                stdin_pipe=True,
                background=True,
            )
        except asyncio.CancelledError:  # the loop ending: the spawn undid itself
            if root is not None:
                shutil.rmtree(root, ignore_errors=True)
            raise
        except Exception as exc:  # nothing left behind; only the unexpected logged loudly
            expected = isinstance(exc, (SandboxError, OSError))
            LOG.log(
                logging.DEBUG if expected else logging.ERROR,
                "not starting %s ahead: %s",
                key,
                exc,
                exc_info=not expected,
            )
            if root is not None:
                await asyncio.to_thread(shutil.rmtree, root, True)
            return
        ready = Prestarted(spec, sb, time.monotonic(), given, root=root)
        if self.closed:
            await ready.discard()
            return
        while len(self.waiting) >= AT_ONCE:  # the oldest makes room
            self._end(next(iter(self.waiting)))
        self.waiting[key] = ready
        ready.expiry = asyncio.get_running_loop().call_later(ttl, self._end, key)
        LOG.debug("started %s ahead (pid %d)", key, sb.process.pid)

    def _end(self, key: str) -> None:
        ready = self.waiting.pop(key, None)
        if ready is not None:
            task = asyncio.get_running_loop().create_task(ready.discard())
            self._ending.add(task)
            task.add_done_callback(self._ending.discard)

    async def take(self, spec: InstanceSpec) -> Instance | None:
        """``spec``'s instance, if a sandbox started ahead fits it: one of its image, else
        a spare of its base (else None: start one)."""
        keys = [spec.image.digest, spare_key(spec)]
        for key in [k for k in keys if k is not None]:
            ready = self.waiting.get(key)
            if ready is None:
                continue
            why = ready.fits(spec)
            if why is not None:
                LOG.debug(
                    "not taking over %s started ahead for %s: %s", key, spec.image.digest, why
                )
                continue
            del self.waiting[key]
            if ready.expiry is not None:
                ready.expiry.cancel()
            try:
                if ready.root is not None:
                    await asyncio.to_thread(_fill, spec.image, ready.root)
                return ready.claim(spec)
            except BaseException as exc:  # out of waiting: stopped here, whatever it was
                await asyncio.shield(ready.discard())
                if not isinstance(exc, OSError):
                    raise  # cancelled meanwhile, or not expected
                LOG.warning("could not use %s started ahead: %s", key, exc)
        return None

    async def start(self, spec: InstanceSpec) -> Instance:
        """An instance of ``spec``: a sandbox started ahead for it, else a new one; then,
        for an image over a base, a spare for the next image over it."""
        instance = await self.take(spec) or await sandbox.start(spec)
        self._plan_spare(spec)
        return instance

    async def close(self) -> None:
        self.closed = True
        for handle in self._planned.values():
            handle.cancel()
        self._planned.clear()
        # Those starting end by themselves once spawned (they see ``closed``): cancelled,
        # a spare's tree could still be being copied by its thread when removed.
        await asyncio.gather(*self._starting.values(), return_exceptions=True)
        for key in list(self.waiting):
            self._end(key)
        await asyncio.gather(*self._ending, return_exceptions=True)


def _spare_tree(base: Path, root: Path, top: str, working_dir: str | None = None) -> None:
    root.parent.mkdir(parents=True, exist_ok=True)
    stage.reachable(str(root.parent))  # staged once: the spares' trees under it add no mount
    images._clone(base, root)
    (root / top).mkdir(exist_ok=True)
    inside = (working_dir or "").strip("/")
    if inside.startswith(top + "/"):  # the sandbox starts there: made ahead of the fill
        (root / inside).mkdir(parents=True, exist_ok=True)


def _remove_orphans(scratch: Path) -> None:
    """Spares' trees of a localcloud no longer running (killed before it removed them)."""
    for child in scratch.glob("*-*"):
        pid = child.name.split("-", 1)[0]
        # this pid's: an earlier run given the same pid (a container's)
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            shutil.rmtree(child, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's
    return True

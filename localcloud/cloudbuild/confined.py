"""Run a build's tools (pip, npm, node) in bubblewrap, because they run the user's code.

pip builds a source distribution by running its ``setup.py`` or build backend; npm runs the
lifecycle scripts (``preinstall``, ``install``, ``postinstall``...) of the function's
``package.json`` and of its dependencies. Both come with the zip. Cloud Build runs each
step in a container (https://cloud.google.com/build/docs/overview); localcloud has no
container engine, so these tools get the sandbox Cloud Run instances get
(``localcloud/run/sandbox.py``), cut down to what an install needs:

- the host's system directories and the few files of ``/etc`` read-only
  (``sandbox.system_binds``), plus the tool's interpreter install and what the call reads
  (the wheelhouse, the source) read-only, each at its own path;
- writable: only this build's directories the tool writes (the install target, npm's
  project directory) and the tool's cache, ``build-cache/tools/<tool>`` under the data
  directory, shared by all builds so a repeated install downloads nothing;
- a private ``/tmp`` (also ``HOME``), its own ``/proc`` and ``/dev``, its own PID, IPC and
  UTS namespaces, a new session, and it dies with localcloud (``--die-with-parent``);
- no capabilities and, for a localcloud running as root, not root: bwrap sets the sandbox
  up as root (so it reaches paths under ``/root``), then ``setpriv`` drops to ``nobody``,
  every capability and the bounding set before the tool starts. What the tool writes is
  ``nobody``'s, and its connections to localcloud's APIs come from a socket no instance
  holds, which localcloud refuses (``core/peers.py``) instead of taking it for the local
  user. Another user's localcloud runs bwrap in a user namespace with ``--cap-drop ALL``;
- the default container seccomp filter (``run/seccomp.py``) when this machine has it;
- the host's network, kept: pip and npm reach PyPI and the npm registry.

Not hidden: the network (other services on the host's loopback included), and the tools'
caches are shared by every build, as ``~/.cache/pip`` and ``~/.npm`` were before. Without
bubblewrap, these tools run only when the user opts out of sandboxes explicitly
(``LOCALCLOUD_RUN_UNSANDBOXED=true``, which Cloud Run instances follow too).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from localcloud.core import procs
from localcloud.run import sandbox, seccomp

NOBODY = sandbox.NOBODY
NO_BWRAP = (
    "bubblewrap (bwrap) is not installed, and builds run pip and npm in it: install the Debian "
    "package bubblewrap (make deps) or set LOCALCLOUD_RUN_UNSANDBOXED=true to run them "
    "without a sandbox"
)
PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
# Which certificate authorities the machine trusts, where it names them in the environment
# (a TLS-inspecting proxy's CA, say): npm under a Node.js of another prefix does not read the
# host npm's global config, and pip and npm fail "self-signed certificate in chain" without
# them. They name files under /etc/ssl/certs, which the sandbox shows.
TRUST_VARS = ("NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "SSL_CERT_DIR", "PIP_CERT")


def base_env(path: Iterable[str] = ()) -> dict[str, str]:
    """What every tool starts from: no variable of localcloud's own (they may hold secrets),
    ``HOME`` and ``TMPDIR`` the private ``/tmp``, ``path`` first on ``PATH``, and the host's
    proxy and trust settings, which the way to PyPI and npm may need."""
    env = {
        "PATH": os.pathsep.join([*path, "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
    }
    env.update({k: os.environ[k] for k in (*PROXY_VARS, *TRUST_VARS) if k in os.environ})
    return env


def _give(path: Path) -> None:
    """Make ``path`` (and what it holds) ``nobody``'s, so a tool run as nobody writes it;
    a directory already nobody's (a cache: what is in it is) is left as it is."""
    if path.stat().st_uid == NOBODY:
        return
    os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), NOBODY, NOBODY, follow_symlinks=False)


@dataclass(frozen=True)
class Tools:
    """How this localcloud runs build tools: where their caches are, and whether it runs
    them unsandboxed (``LOCALCLOUD_RUN_UNSANDBOXED``)."""

    caches: Path
    unsandboxed: bool = False

    @property
    def as_nobody(self) -> bool:
        return os.geteuid() == 0 and not self.unsandboxed

    def cache(self, tool: str) -> Path:
        """``tool``'s cache directory, which every build's ``tool`` reads and writes."""
        path = self.caches / tool
        path.mkdir(parents=True, exist_ok=True)
        if self.as_nobody:
            _give(path)
        return path

    def argv(
        self,
        bwrap: str,
        command: list[str],
        cwd: Path,
        env: dict[str, str],
        writable: Iterable[Path],
        readable: Iterable[str],
        seccomp_fd: int | None,
    ) -> list[str]:
        """The bwrap command line that runs ``command`` (separate so it can be read)."""
        cmd = [bwrap, "--die-with-parent", "--new-session"]
        if not self.as_nobody:  # root inside a user namespace of this user, no capability
            cmd += ["--unshare-user", "--cap-drop", "ALL"]
        cmd += ["--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        system, bound = sandbox.system_binds()
        cmd += [*system, "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/tmp"]
        binds = [("--ro-bind", p) for p in readable if not sandbox.within(p, bound)]
        binds += [("--bind", str(p)) for p in writable]
        for option, path in sorted(binds, key=lambda b: len(b[1])):  # parents first
            cmd += [option, path, path]
        # bwrap makes the directories leading to a bind (/etc, /etc/ssl, /root...) 0700,
        # root's: nobody could not reach what is bound. They hold nothing else.
        targets = [*bound, *(p for p in sandbox.ETC_FILES if os.path.exists(p))]
        targets += [p for _, p in binds]
        above = {str(a) for p in targets for a in Path(p).parents} - {"/", "/tmp"}
        for path in sorted(a for a in above if not sandbox.within(a, targets)):
            cmd += ["--chmod", "0755", path]
        if seccomp_fd is not None:
            cmd += ["--seccomp", str(seccomp_fd)]
        cmd += ["--chdir", str(cwd), "--clearenv"]
        for key, value in env.items():
            cmd += ["--setenv", key, value]
        cmd.append("--")
        if self.as_nobody:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                raise sandbox.SandboxError(
                    "setpriv (Debian package util-linux) is needed to run builds as nobody"
                )
            cmd += [
                setpriv,
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
            ]
        return [*cmd, *command]

    async def run(
        self,
        command: list[str],
        cwd: Path,
        env: dict[str, str],
        *,
        writable: Iterable[Path] = (),
        readable: Iterable[str] = (),
        log: Callable[[str], None] | None = None,
    ) -> tuple[int, list[str]]:
        """Run ``command`` in ``cwd`` with exactly ``env``, confined; its exit code and its
        output (stdout and stderr) by line, each also given to ``log`` as it comes.

        ``writable``: the only directories it may change (besides its private /tmp and
        caches the caller passes); ``readable``: host paths it reads. SandboxError when
        this machine cannot confine it.
        """
        writable, readable = list(writable), list(readable)
        seccomp_fd: int | None = None
        if self.unsandboxed:
            if log is not None:
                log(f"running {command[0]} WITHOUT a sandbox (LOCALCLOUD_RUN_UNSANDBOXED)")
            cmd = command
        else:
            bwrap = sandbox.bwrap_available()
            if bwrap is None:
                raise sandbox.SandboxError(NO_BWRAP)
            if self.as_nobody:
                for path in writable:
                    await asyncio.to_thread(_give, path)
                for name in readable:
                    if os.stat(name).st_mode & 0o005 != 0o005:
                        raise sandbox.SandboxError(
                            f"{name} is not readable by others, and builds read it as nobody: "
                            f"make it readable (chmod o+rX {name})"
                        )
            with contextlib.suppress(seccomp.SeccompUnavailable, OSError):
                seccomp_fd = await asyncio.to_thread(seccomp.memfd)
            cmd = self.argv(bwrap, command, cwd, env, writable, readable, seccomp_fd)
        try:
            process = await procs.start_sandbox(  # a session of its own, to end as one
                *cmd,
                cwd=cwd if self.unsandboxed else "/",
                env=env if self.unsandboxed else {},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                pass_fds=(seccomp_fd,) if seccomp_fd is not None else (),
            )
        except OSError as exc:
            raise sandbox.SandboxError(f"cannot start {cmd[0]}: {exc}") from exc
        finally:
            if seccomp_fd is not None:
                os.close(seccomp_fd)
        lines: list[str] = []
        try:
            assert process.stdout is not None
            async for raw in process.stdout:
                line = raw.decode(errors="replace").rstrip()
                lines.append(line)
                if log is not None:
                    log(line)
            code = await process.wait()
        except asyncio.CancelledError:
            # Not process.kill(): a bwrap still setting up would leave its sandbox running,
            # and wait() would wait for it to let go of the output pipe.
            await procs.end_sandbox(process.pid)
            await process.wait()
            raise
        return code, lines

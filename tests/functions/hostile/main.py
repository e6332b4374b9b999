"""A function that tries what a hostile tenant would; each attempt reports what happened.

Deployed by tests/integration/test_run_containment.py: every ``do`` must fail (or be
contained) inside localcloud's sandbox, as on Cloud Run.
"""

import ctypes
import json
import os
import signal
import socket
import sys
import urllib.request


def _try(action):
    try:
        return {"ok": True, "value": action()}
    except OSError as exc:
        return {"ok": False, "errno": exc.errno, "error": str(exc)}


def _write(path, data):
    with open(path, "w") as f:
        f.write(data)
    return len(data)


def _read(path):
    with open(path) as f:
        return f.read()


def _connect(host, port):
    with socket.create_connection((host, int(port)), timeout=2):
        return "connected"


def _unshare_user():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return "unshared"


def _fork(limit):
    children, error = [], None
    try:
        for _ in range(limit):
            pid = os.fork()
            if pid == 0:  # a small process, so the process limit is met before the memory one
                os.execv("/usr/bin/sleep", ["sleep", "30"])
            children.append(pid)
    except OSError as exc:
        error = exc.errno
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return {"forked": len(children), "errno": error}


def _fill_tmp(mb):
    block = b"x" * (1 << 20)
    written = 0
    try:
        with open("/tmp/fill", "wb") as f:
            for _ in range(mb):
                f.write(block)
                written += 1
            f.flush()
        return {"written_mb": written, "errno": None}
    except OSError as exc:
        return {"written_mb": written, "errno": exc.errno}
    finally:
        if os.path.exists("/tmp/fill"):
            os.unlink("/tmp/fill")


def hostile(request):
    do = request.args.get("do", "")
    if do == "identity":
        status = _read("/proc/self/status")
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return json.dumps(
            {
                "uid": os.getuid(),
                "uid_map": _read("/proc/self/uid_map").split(),
                "no_new_privs": fields["NoNewPrivs"].strip(),
                "seccomp": fields["Seccomp"].strip(),
                "port": os.environ["PORT"],
                "unshare_user": _try(_unshare_user),
            }
        )
    if do == "sysctl":
        current = _read("/proc/sys/kernel/core_pattern")
        return json.dumps(
            {
                "core_pattern": _try(lambda: _write("/proc/sys/kernel/core_pattern", current)),
                "sysrq_trigger": _try(lambda: _write("/proc/sysrq-trigger", "h")),
                "hostname": _try(lambda: _write("/proc/sys/kernel/hostname", "x")),
            }
        )
    if do == "connect":
        host, port = request.args["host"], request.args["port"]
        return json.dumps({"result": _try(lambda: _connect(host, port))})
    if do == "listening":  # the ports this instance's network has in LISTEN state
        ports = set()
        for name in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in _read(name).splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        return json.dumps(sorted(ports))
    if do == "alloc":
        hog = bytearray(int(request.args["mb"]) << 20)
        for i in range(0, len(hog), 4096):
            hog[i] = 1
        return f"allocated {len(hog) >> 20} MiB"
    if do == "tmp":
        return json.dumps(_fill_tmp(int(request.args["mb"])))
    if do == "fork":
        return json.dumps(_fork(int(request.args["n"])))
    if do == "die":  # say it was entered (to the test's recorder), then kill its instance
        report = urllib.request.Request(
            request.args["report"],
            data=json.dumps({"entered": request.args.get("tag", "")}).encode(),
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(report, timeout=10).read()
        os.killpg(0, signal.SIGKILL)  # every process of the instance, this one included
    if do == "flood":
        line = ("y" * 1023 + "\n").encode()
        for _ in range(int(request.args["mb"]) * 1024):
            sys.stdout.buffer.write(line)
        sys.stdout.flush()
        return "flooded"
    return "unknown action", 400

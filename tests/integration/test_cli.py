"""``orch local up|status|env|logs|down`` as a user runs them, on their own ports and data dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from localcloud import testing

pytestmark = pytest.mark.slow


def orch(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orch.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def local_env(data: Path) -> tuple[dict[str, str], dict[str, str]]:
    """The environment of `orch local` on ``data`` with every port moved to a free one
    (a localcloud left running by `make demo` does not matter), and those ports."""
    ports = testing.port_env()
    env = {**os.environ, "LOCALCLOUD_DATA": str(data), **ports}
    for key in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "LOCALCLOUD_GRPC_HOST"):
        env.pop(key, None)
    return env, ports


def test_local_up_status_env_logs_down(tmp_path):
    env, ports = local_env(tmp_path)
    up = orch("local", "up", "--no-pipeline", env=env)
    try:
        assert up.returncode == 0, up.stderr
        assert "localcloud is up" in up.stdout
        assert f"127.0.0.1:{ports['LOCALCLOUD_GRPC_PORT']}" in up.stdout

        again = orch("local", "up", "--no-pipeline", env=env)
        assert again.returncode == 0
        assert "already running" in again.stdout

        status = orch("local", "status", env=env)
        assert status.returncode == 0, status.stdout
        for part in ("api", "storage", "registry"):
            assert part in status.stdout
        assert "sandbox    user" in status.stdout  # how instances are contained here

        printed = orch("local", "env", env=env).stdout.strip()
        assert printed.startswith("export ")
        assert f"PUBSUB_EMULATOR_HOST=127.0.0.1:{ports['LOCALCLOUD_GRPC_PORT']}" in printed
        assert (
            f"STORAGE_EMULATOR_HOST=http://127.0.0.1:{ports['LOCALCLOUD_STORAGE_PORT']}" in printed
        )
        assert f"LOCALCLOUD_GRPC_HOST=127.0.0.1:{ports['LOCALCLOUD_GRPC_PORT']}" in printed
        # What `eval "$(orch local env)"` gives a shell.
        shell = subprocess.run(
            ["bash", "-c", f'{printed}; echo "$PUBSUB_EMULATOR_HOST"'],
            capture_output=True,
            text=True,
        )
        assert shell.stdout.strip() == f"127.0.0.1:{ports['LOCALCLOUD_GRPC_PORT']}"

        logs = orch("local", "logs", "-n", "5", env=env)
        assert logs.returncode == 0
        assert "storage.log" in logs.stdout and "registry.log" in logs.stdout
        assert orch("local", "logs", "nonsense", env=env).returncode != 0
    finally:
        down = orch("local", "down", env=env)
    assert down.returncode == 0
    assert "stopped" in down.stdout
    status = orch("local", "status", env=env)
    assert status.returncode == 3
    assert "not running" in status.stdout


def test_local_up_right_after_a_sigkill_starts_a_new_one(tmp_path):
    """Issue 14: `up` right after the running localcloud was SIGKILLed goes by the data
    directory's lock, not by its state file (left behind) or its pid (still there: a
    zombie until its parent, here this test, reaps it): it starts a new one, no traceback."""
    instance = testing.start(tmp_path)
    env = {
        **local_env(tmp_path)[0],
        **{port.envvar: str(port.port) for port in instance.config.ports},
        "LOCALCLOUD_RUN_FIRST_PORT": str(instance.config.run_first_port),
    }
    os.kill(instance.process.pid, signal.SIGKILL)  # not reaped: its pid stays
    try:
        again = orch("local", "up", "--no-pipeline", env=env)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "Traceback" not in again.stderr
        assert "localcloud is up" in again.stdout, again.stdout
        assert json.loads((tmp_path / "state.json").read_text())["pid"] != instance.process.pid
        status = orch("local", "status", env=env)
        assert status.returncode == 0, status.stdout
    finally:
        down = orch("local", "down", env=env)
        instance.process.wait()
    assert down.returncode == 0, down.stderr

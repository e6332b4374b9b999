"""``orch local up|status|env|logs|down`` as a user runs them, on their own ports and data dir."""

from __future__ import annotations

import os
import subprocess
import sys

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


def test_local_up_status_env_logs_down(tmp_path):
    # Every port moved, so a localcloud left running by `make demo` does not matter.
    ports = testing.port_env()
    env = {**os.environ, "LOCALCLOUD_DATA": str(tmp_path), **ports}
    for key in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "LOCALCLOUD_GRPC_HOST"):
        env.pop(key, None)
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

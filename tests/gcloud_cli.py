"""The real ``gcloud`` run against localcloud through the configuration ``orch local gcloud``
writes, for the test modules that drive it (each skips where gcloud is not installed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from click.testing import CliRunner

from orch.cli import main


def configure(data_dir: Path, config_dir: Path) -> str:
    """Run ``orch local gcloud`` for the localcloud of ``data_dir`` into the gcloud config
    directory ``config_dir``; its output."""
    result = CliRunner().invoke(
        main,
        ["local", "gcloud", "--data", str(data_dir)],
        env={"CLOUDSDK_CONFIG": str(config_dir)},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return result.output


def run_gcloud(config_dir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``gcloud --configuration=localcloud ARGS``, whatever its exit code."""
    return subprocess.run(
        ["gcloud", "--configuration=localcloud", *args],
        env={**os.environ, "CLOUDSDK_CONFIG": str(config_dir)},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def gcloud(config_dir: Path, *args: str) -> str:
    """``gcloud --configuration=localcloud ARGS``'s stdout; its stderr in the failure."""
    done = run_gcloud(config_dir, *args)
    assert done.returncode == 0, f"gcloud {' '.join(args)}: {done.stderr}"
    return done.stdout

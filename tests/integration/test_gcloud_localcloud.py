"""The real ``gcloud`` against localcloud through the configuration ``orch local gcloud``
writes: the active configuration stays, ``gcloud storage cp/ls``, ``gcloud run services
list/describe/delete`` and ``gcloud run revisions list``.

gcloud starts slowly (a second or two a command), so this is one module of a handful of
commands; it is skipped where gcloud is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from google.api_core import exceptions

from localcloud.testing import run_service
from tests.gcloud_cli import configure, gcloud

pytestmark = pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud is not installed")

PROJECT = "local-project"
PARENT = f"projects/{PROJECT}/locations/us-central1"


@pytest.fixture(scope="module")
def gcloud_dir(tmp_path_factory) -> Path:
    """A gcloud config directory whose active configuration (``default``) is the user's own."""
    directory = tmp_path_factory.mktemp("gcloud")
    env = {**os.environ, "CLOUDSDK_CONFIG": str(directory)}
    subprocess.run(
        ["gcloud", "config", "set", "core/project", "the-users-own"],
        env=env,
        check=True,
        capture_output=True,
    )
    return directory


@pytest.fixture(scope="module")
def configured(gcloud_dir, localcloud) -> str:
    """``orch local gcloud``'s output."""
    return configure(localcloud.config.data_dir, gcloud_dir)


@pytest.fixture(scope="module")
def image(build_image) -> str:
    return build_image("behaviours", "handle")


def test_the_active_configuration_is_left_alone(configured, gcloud_dir):
    assert "gcloud --configuration=localcloud" in configured
    assert (gcloud_dir / "active_config").read_text().strip() == "default"
    env = {**os.environ, "CLOUDSDK_CONFIG": str(gcloud_dir)}
    project = subprocess.run(
        ["gcloud", "config", "get", "core/project"], env=env, capture_output=True, text=True
    )
    assert project.stdout.strip() == "the-users-own"
    assert gcloud(gcloud_dir, "config", "get", "core/project").strip() == PROJECT


def test_storage_cp_and_ls(configured, gcloud_dir, clients, tmp_path):
    bucket = clients.storage.create_bucket(f"gcloud-{uuid.uuid4().hex[:8]}")
    source = tmp_path / "fn.zip"
    source.write_bytes(os.urandom(300_000))
    gcloud(gcloud_dir, "storage", "cp", str(source), f"gs://{bucket.name}/")
    assert gcloud(gcloud_dir, "storage", "ls", f"gs://{bucket.name}").split() == [
        f"gs://{bucket.name}/fn.zip"
    ]
    assert bucket.blob("fn.zip").download_as_bytes() == source.read_bytes()


def test_run_services_and_revisions(configured, gcloud_dir, image, clients):
    created = clients.run_services.create_service(
        parent=PARENT, service=run_service(image), service_id=f"gc-{uuid.uuid4().hex[:8]}"
    ).result(timeout=120)
    service_id = created.name.rsplit("/", 1)[-1]
    try:
        listed = json.loads(gcloud(gcloud_dir, "run", "services", "list", "--format=json"))
        assert service_id in [s["metadata"]["name"] for s in listed]
        described = json.loads(
            gcloud(gcloud_dir, "run", "services", "describe", service_id, "--format=json")
        )
        assert described["status"]["url"] == created.uri
        assert described["metadata"]["uid"] == created.uid
        table = gcloud(gcloud_dir, "run", "services", "describe", service_id)
        assert created.uri in table
        revisions = json.loads(
            gcloud(
                gcloud_dir,
                "run",
                "revisions",
                "list",
                f"--service={service_id}",
                "--region=us-central1",
                "--format=json",
            )
        )
        revision_id = created.latest_ready_revision.rsplit("/", 1)[-1]
        assert [r["metadata"]["name"] for r in revisions] == [revision_id]
        revision = json.loads(
            gcloud(gcloud_dir, "run", "revisions", "describe", revision_id, "--format=json")
        )
        assert revision["spec"]["containers"][0]["image"] == image
        gcloud(gcloud_dir, "run", "services", "delete", service_id, "--quiet")
        with pytest.raises(exceptions.NotFound):
            clients.run_services.get_service(name=created.name)
    finally:
        with contextlib.suppress(exceptions.NotFound):
            clients.run_services.delete_service(name=created.name).result(timeout=60)

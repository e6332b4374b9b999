"""The README's ways in, with nothing but the real ``gcloud`` and the configuration that
``orch local gcloud`` writes: a zip copied with ``gcloud storage cp``, a deploy request
published with ``gcloud pubsub topics publish``, and the status events followed with
``gcloud pubsub subscriptions pull --auto-ack``, until the function serves.

One deployment, a handful of gcloud commands (each starts in a second or two); skipped where
gcloud is not installed.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid

import pytest

from localcloud.testing import zip_tree
from tests.e2e.conftest import hello_source, wait_until_serving
from tests.gcloud_cli import configure, gcloud

pytestmark = pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud is not installed")


def test_a_deploy_request_published_with_gcloud_deploys_and_its_status_is_pulled_with_gcloud(
    pipeline, localcloud, tmp_path
):
    config_dir = tmp_path / "gcloud"
    configure(localcloud.config.data_dir, config_dir)
    settings = pipeline.settings
    service = f"gc-{uuid.uuid4().hex[:6]}"
    watch = f"gcloud-watch-{service}"
    gcloud(
        config_dir, "pubsub", "subscriptions", "create", watch, f"--topic={settings.status_topic}"
    )

    archive = tmp_path / "fn.zip"
    archive.write_bytes(zip_tree(hello_source(service, f"hello from {service}")))
    # The first way in: the zip dropped into the sources bucket deploys `service`; the second:
    # a deploy request for the same object deploys it again as `requested`.
    gcloud(
        config_dir, "storage", "cp", str(archive), f"gs://{settings.sources_bucket}/{service}.zip"
    )
    requested = f"{service}-rq"
    request = json.dumps(
        {"source": f"gs://{settings.sources_bucket}/{service}.zip", "service": requested}
    )
    gcloud(
        config_dir, "pubsub", "topics", "publish", settings.requests_topic, f"--message={request}"
    )

    seen: dict[str, list[tuple[str, str]]] = {service: [], requested: []}
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and any(
        ("done", "succeeded") not in s for s in seen.values()
    ):
        pulled = json.loads(
            gcloud(
                config_dir,
                "pubsub",
                "subscriptions",
                "pull",
                watch,
                "--auto-ack",
                "--limit=20",
                "--format=json",
            )
        )
        for item in pulled:
            attributes = item["message"].get("attributes", {})
            if attributes.get("service") in seen:
                seen[attributes["service"]].append((attributes["step"], attributes["state"]))
                assert attributes["state"] != "failed", item["message"]
    for name, events in seen.items():
        for step in ("accepted", "build", "push", "deploy", "bind_triggers", "done"):
            assert (step, "succeeded") in events, (name, events)
        url = pipeline.service(name).uri
        wait_until_serving(pipeline, url, f"hello from {service}")
        described = json.loads(
            gcloud(config_dir, "run", "services", "describe", name, "--format=json")
        )
        assert described["status"]["url"] == url

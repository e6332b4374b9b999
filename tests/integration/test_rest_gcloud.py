"""The real ``gcloud`` against localcloud's REST APIs (skipped where gcloud is not installed).

gcloud speaks REST through its discovery-based clients; pointed at localcloud's HTTP port
with ``api_endpoint_overrides/SERVICE=http://HOST:PORT/`` (the values ``orch local gcloud``
writes) and ``auth/disable_credentials``, it is served as the local user. gcloud takes a
second or two to start, so this module keeps to a handful of commands.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from localcloud.testing import image_name, pack_args
from tests.integration.test_rest import _ok, _wait

pytestmark = pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud is not installed")

PROJECT = "gcloud-project"
REGION = "us-central1"
LOCATION = f"projects/{PROJECT}/locations/{REGION}"
SERVICES = ("pubsub", "workflows", "workflowexecutions", "cloudbuild", "eventarc")


@pytest.fixture(scope="module")
def gcloud(localcloud, tmp_path_factory) -> Callable[..., Any]:
    config = tmp_path_factory.mktemp("gcloud-config")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(config),
        "CLOUDSDK_CONFIG": str(config),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    }
    endpoint = f"{localcloud.config.http_url}/"
    # The default configuration, as `gcloud config set` writes it (without 8 slow starts).
    lines = ["[auth]", "disable_credentials = true", "[core]", f"project = {PROJECT}"]
    lines += ["disable_usage_reporting = true", "[component_manager]"]
    lines += ["disable_update_check = true", "[api_endpoint_overrides]"]
    lines += [f"{s} = {endpoint}" for s in SERVICES]
    (config / "configurations").mkdir()
    (config / "configurations" / "config_default").write_text("\n".join(lines) + "\n")
    (config / "active_config").write_text("default")

    def run(*args: str, parse: bool = True) -> Any:
        done = subprocess.run(
            ["gcloud", *args, *(["--format=json"] if parse else [])],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"gcloud {' '.join(args)}: {done.stderr}"
        return json.loads(done.stdout or "null") if parse else done.stdout + done.stderr

    return run


def test_pubsub_with_gcloud(gcloud):
    topic, sub = f"gc-topic-{uuid.uuid4().hex[:6]}", f"gc-sub-{uuid.uuid4().hex[:6]}"
    gcloud("pubsub", "topics", "create", topic)
    gcloud("pubsub", "subscriptions", "create", sub, f"--topic={topic}")
    published = gcloud("pubsub", "topics", "publish", topic, "--message=hello", "--attribute=k=v")
    listed = gcloud("pubsub", "topics", "list")
    assert f"projects/{PROJECT}/topics/{topic}" in [t["name"] for t in listed]
    pulled = gcloud("pubsub", "subscriptions", "pull", sub, "--auto-ack", "--limit=5")
    (message,) = pulled
    assert message["message"]["messageId"] == published["messageIds"][0]
    assert message["message"]["attributes"] == {"k": "v"}
    assert message["ackStatus"] == "SUCCESS"
    assert gcloud("pubsub", "subscriptions", "pull", sub, "--auto-ack") == []  # acked


def test_workflows_with_gcloud(gcloud, tmp_path: Path):
    source = tmp_path / "wf.yaml"
    source.write_text(
        'main:\n  params: [args]\n  steps:\n    - done:\n        return: ${"hi " + args.who}\n'
    )
    name = f"gc-wf-{uuid.uuid4().hex[:6]}"
    deployed = gcloud("workflows", "deploy", name, f"--source={source}", f"--location={REGION}")
    assert deployed["state"] == "ACTIVE"
    execution = gcloud("workflows", "run", name, f"--location={REGION}", '--data={"who":"you"}')
    assert (execution["state"], execution["result"]) == ("SUCCEEDED", '"hi you"')
    listed = gcloud("workflows", "executions", "list", name, f"--location={REGION}")
    assert [e["name"] for e in listed] == [execution["name"]]


def test_builds_and_triggers_with_gcloud(gcloud, localcloud):
    """A build (its source missing, so it fails) and a trigger (to a service whose image
    does not exist), made over REST, then listed and described with gcloud."""
    base = localcloud.config.http_url
    with requests.Session() as http:
        build = {
            "source": {"storageSource": {"bucket": "no-such-bucket-gc", "object": "x.zip"}},
            "steps": [
                {
                    "name": "gcr.io/k8s-skaffold/pack",
                    "entrypoint": "pack",
                    "args": pack_args(image_name("gc", PROJECT), {"GOOGLE_FUNCTION_TARGET": "f"}),
                }
            ],
        }
        operation = _ok(http.post(f"{base}/v1/projects/{PROJECT}/builds", json=build))
        build_id = operation["metadata"]["build"]["id"]
        _wait(http, base, "v1", operation)
        service_id, trigger_id = f"gc-svc-{uuid.uuid4().hex[:6]}", f"gc-trg-{uuid.uuid4().hex[:6]}"
        image = f"{REGION}-docker.pkg.dev/{PROJECT}/functions/ghost@sha256:" + "0" * 64
        made = http.post(
            f"{base}/v2/{LOCATION}/services",
            params={"serviceId": service_id},
            json={"template": {"containers": [{"image": image}]}},
        )
        _wait(http, base, "v2", _ok(made))
        made = http.post(
            f"{base}/v1/{LOCATION}/triggers",
            params={"triggerId": trigger_id},
            json={
                "eventFilters": [
                    {"attribute": "type", "value": "google.cloud.pubsub.topic.v1.messagePublished"}
                ],
                "destination": {"cloudRun": {"service": service_id, "region": REGION}},
            },
        )
        _wait(http, base, "v1", _ok(made))
    builds = gcloud("builds", "list")
    assert build_id in [b["id"] for b in builds]
    described = gcloud("builds", "describe", build_id)
    assert (described["id"], described["status"]) == (build_id, "FAILURE")
    triggers = gcloud("eventarc", "triggers", "list", f"--location={REGION}")
    assert f"{LOCATION}/triggers/{trigger_id}" in [t["name"] for t in triggers]
    trigger = gcloud("eventarc", "triggers", "describe", trigger_id, f"--location={REGION}")
    assert trigger["destination"]["cloudRun"]["service"] == service_id

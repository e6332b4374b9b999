"""``gcloud functions deploy --gen2`` against localcloud, through the configuration ``orch
local gcloud`` writes (issue 18): an HTTP function deployed, called, redeployed with a change
and deleted; a Pub/Sub-triggered one receiving a published message; describe and list.

Before it deploys, gcloud asks Service Usage whether run, cloudbuild and artifactregistry are
enabled, Cloud Build for its default service account, Resource Manager v1 for the project's
number and policy, and (``--allow-unauthenticated``, ``add-invoker-policy-binding``) Cloud Run
v1 for the service's policy; every one of those is answered here as Google answers it.

gcloud starts slowly (a second or two a command) and each deploy builds, so this module
deploys three times; it is skipped where gcloud is not installed.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from google.api_core import exceptions

from localcloud.core.oidc import Issuer
from localcloud.core.projects import project_number
from orch.cli import main
from tests.gcloud_cli import configure, gcloud, run_gcloud

pytestmark = [
    pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud is not installed"),
    pytest.mark.usefixtures("default_build_account_builds"),
]

PROJECT = "local-project"
REGION = "us-central1"
LOCATION = f"projects/{PROJECT}/locations/{REGION}"
# The account an event trigger runs as when it names none: the Compute Engine default.
TRIGGER_ACCOUNT = f"{project_number(PROJECT)}-compute@developer.gserviceaccount.com"
HTTP_SOURCE = 'def hello(request):\n    return "hello, {greeting}"\n'
EVENT_SOURCE = (
    "import base64\n\n\n"
    "def on_message(cloud_event):\n"
    '    data = base64.b64decode(cloud_event.data["message"]["data"]).decode()\n'
    '    print(f"received:{data}", flush=True)\n'
)


@pytest.fixture(scope="module")
def gcloud_dir(tmp_path_factory, localcloud) -> Path:
    """A gcloud config directory with the ``localcloud`` configuration in it."""
    directory = tmp_path_factory.mktemp("gcloud")
    configure(localcloud.config.data_dir, directory)
    return directory


def source(tmp_path: Path, name: str, main_py: str) -> Path:
    """A function's source directory (gcloud wants a requirements.txt for Python)."""
    directory = tmp_path / name
    directory.mkdir()
    (directory / "main.py").write_text(main_py)
    (directory / "requirements.txt").write_text("")
    return directory


def deploy(gcloud_dir: Path, name: str, directory: Path, entry: str, *trigger: str) -> dict:
    gcloud(
        gcloud_dir,
        "functions",
        "deploy",
        name,
        "--gen2",
        f"--region={REGION}",
        f"--source={directory}",
        "--runtime=python311",
        f"--entry-point={entry}",
        *trigger,
    )
    described = gcloud(
        gcloud_dir, "functions", "describe", name, f"--region={REGION}", "--format=json"
    )
    return json.loads(described)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def service_logs(localcloud, service: str) -> str:
    result = CliRunner().invoke(
        main,
        [
            "local",
            "logs",
            "--service",
            service,
            "-n",
            "200",
            "--data",
            str(localcloud.config.data_dir),
        ],
    )
    return result.output


def test_an_http_function_is_deployed_called_redeployed_listed_and_deleted(
    gcloud_dir, clients, tmp_path
):
    name = f"gcf-http-{uuid.uuid4().hex[:6]}"
    first = source(tmp_path, "one", HTTP_SOURCE.format(greeting="one"))
    described = deploy(
        gcloud_dir, name, first, "hello", "--trigger-http", "--allow-unauthenticated"
    )
    assert described["name"] == f"{LOCATION}/functions/{name}"
    assert described["state"] == "ACTIVE"
    assert described["environment"] == "GEN_2"
    assert described["buildConfig"]["runtime"] == "python311"
    assert described["buildConfig"]["entryPoint"] == "hello"
    assert described["labels"]["deployment-tool"] == "cli-gcloud"
    url = described["url"]
    assert described["serviceConfig"]["uri"] == url
    # --allow-unauthenticated bound allUsers to roles/run.invoker through Cloud Run v1.
    assert get(url) == (200, "hello, one")

    second = source(tmp_path, "two", HTTP_SOURCE.format(greeting="two"))
    redeployed = deploy(gcloud_dir, name, second, "hello", "--trigger-http")
    assert redeployed["state"] == "ACTIVE"
    assert redeployed["serviceConfig"]["revision"] != described["serviceConfig"]["revision"]
    assert get(redeployed["url"]) == (200, "hello, two")

    # Every region (locations/-), and this one.
    listed = json.loads(gcloud(gcloud_dir, "functions", "list", "--v2", "--format=json"))
    assert f"{LOCATION}/functions/{name}" in [f["name"] for f in listed]
    listed = json.loads(
        gcloud(gcloud_dir, "functions", "list", "--v2", f"--regions={REGION}", "--format=json")
    )
    assert f"{LOCATION}/functions/{name}" in [f["name"] for f in listed]

    gcloud(gcloud_dir, "functions", "delete", name, f"--region={REGION}", "--quiet")
    with pytest.raises(exceptions.NotFound):
        clients.functions.get_function(name=f"{LOCATION}/functions/{name}")
    gone = run_gcloud(gcloud_dir, "functions", "describe", name, f"--region={REGION}")
    assert gone.returncode != 0
    assert "not found" in gone.stderr.lower()


def test_a_topic_triggered_function_receives_a_published_message(
    gcloud_dir, clients, localcloud, tmp_path
):
    name = f"gcf-topic-{uuid.uuid4().hex[:6]}"
    topic = f"gcf-topic-{uuid.uuid4().hex[:6]}"
    clients.publisher.create_topic(name=f"projects/{PROJECT}/topics/{topic}")
    directory = source(tmp_path, "event", EVENT_SOURCE)
    try:
        described = deploy(gcloud_dir, name, directory, "on_message", f"--trigger-topic={topic}")
        assert described["state"] == "ACTIVE"
        trigger = described["eventTrigger"]
        assert trigger["eventType"] == "google.cloud.pubsub.topic.v1.messagePublished"
        assert trigger["pubsubTopic"] == f"projects/{PROJECT}/topics/{topic}"
        assert trigger["serviceAccountEmail"] == TRIGGER_ACCOUNT
        # The trigger's account may invoke the function once granted, as on a project
        # whose default accounts hold no role (Google's documented setup).
        gcloud(
            gcloud_dir,
            "functions",
            "add-invoker-policy-binding",
            name,
            f"--region={REGION}",
            f"--member=serviceAccount:{TRIGGER_ACCOUNT}",
        )
        message = f"hello-{uuid.uuid4().hex[:8]}"
        gcloud(gcloud_dir, "pubsub", "topics", "publish", topic, f"--message={message}")
        deadline = time.monotonic() + 90
        while f"received:{message}" not in service_logs(localcloud, name):
            assert time.monotonic() < deadline, service_logs(localcloud, name)
            time.sleep(1)
    finally:
        run_gcloud(gcloud_dir, "functions", "delete", name, f"--region={REGION}", "--quiet")


def http_json(url: str, token: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers)) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_service_usage_answers_the_apis_localcloud_serves_as_enabled(localcloud):
    base = f"{localcloud.config.http_url}/v1/projects/{PROJECT}/services"
    number = project_number(PROJECT)
    status, run = http_json(f"{base}/run.googleapis.com")
    assert status == 200
    assert run == {
        "name": f"projects/{number}/services/run.googleapis.com",
        "parent": f"projects/{number}",
        "config": {"name": "run.googleapis.com", "title": "Cloud Run Admin API"},
        "state": "ENABLED",
    }
    status, other = http_json(f"{base}/bigquery.googleapis.com")
    assert (status, other["state"]) == (200, "DISABLED")
    status, both = http_json(
        f"{base}:batchGet?names=projects/{PROJECT}/services/cloudbuild.googleapis.com"
        f"&names=projects/{PROJECT}/services/bigquery.googleapis.com"
    )
    assert [s["state"] for s in both["services"]] == ["ENABLED", "DISABLED"]
    # serviceusage.services.get on the project, as Google asks.
    issuer = Issuer(localcloud.config.data_dir / "oidc", localcloud.config.http_url)
    token = issuer.mint_access_token("nobody@example.com")
    status, error = http_json(f"{base}/run.googleapis.com", token)
    assert status == 403
    assert error["error"]["status"] == "PERMISSION_DENIED"
    assert "serviceusage.services.get" in error["error"]["message"]


def test_resource_manager_v1_reads_a_project_as_v3_does(localcloud):
    status, project = http_json(f"{localcloud.config.http_url}/v1/projects/{PROJECT}")
    assert status == 200
    assert project == {
        "projectNumber": project_number(PROJECT),
        "projectId": PROJECT,
        "lifecycleState": "ACTIVE",
        "name": PROJECT,
    }
    issuer = Issuer(localcloud.config.data_dir / "oidc", localcloud.config.http_url)
    token = issuer.mint_access_token("nobody@example.com")
    status, error = http_json(f"{localcloud.config.http_url}/v1/projects/{PROJECT}", token)
    assert status == 403
    assert "resourcemanager.projects.get" in error["error"]["message"]

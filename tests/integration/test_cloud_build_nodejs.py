"""Node.js functions through the official clients: Cloud Build builds them as Google's Node.js
buildpack does (https://cloud.google.com/docs/buildpacks/nodejs), Cloud Run runs them in the
same sandbox as Python ones, and Eventarc delivers CloudEvents to them.

Packages come from the npm registry. The builds share their layers (the functions-framework
layer is built once per session, the dependencies layer once per lock file).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from google.cloud import eventarc_v1, run_v2
from google.cloud.devtools import cloudbuild_v1
from google.iam.v1 import policy_pb2

from localcloud.run import sandbox
from localcloud.testing import Recorder, call, image_name, pack_build, run_build, zip_tree

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are needed to build Node.js functions (Debian packages nodejs, npm)",
)

FUNCTIONS = Path(__file__).parent.parent / "functions"
LOCATION = "projects/local-project/locations/us-central1"
TRIGGER_SA = "eventarc-trigger@local-project.iam.gserviceaccount.com"
S = cloudbuild_v1.Build.Status


def host_major() -> str:
    out = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip().removeprefix("v").split(".")[0]


def tree(directory: Path) -> dict[str, str | bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def build_log(clients, build) -> str:
    bucket = build.logs_bucket.removeprefix("gs://")
    return clients.storage.bucket(bucket).blob(f"log-{build.id}.txt").download_as_text()


def build(clients, sources, files: dict, env: dict[str, str], name: str = "node"):
    return run_build(clients, pack_build(sources(zip_tree(files)), image_name(name), env))


@pytest.fixture(scope="module")
def hello(clients, sources):
    """The HTTP function, zipped with a node_modules of its own that must not be used."""
    files = tree(FUNCTIONS / "node_hello")
    files["node_modules/ms/package.json"] = '{"name": "ms", "version": "0.0.1"}'
    files["node_modules/ms/index.js"] = "module.exports = () => 'from the zip';\n"
    env = {"GOOGLE_FUNCTION_TARGET": "hello", "GOOGLE_RUNTIME": f"nodejs{host_major()}"}
    done = build(clients, sources, files, env, "node-hello")
    assert done.status == S.SUCCESS, done.status_detail
    return files, env, done


def test_http_function_with_a_dependency_builds_deploys_and_serves(
    localcloud, clients, deploy, hello
):
    _files, _env, done = hello
    (image,) = done.results.images
    log = build_log(clients, done)
    assert "npm ci --omit=dev" in log
    assert "ignoring node_modules in the source" in log
    hidden = [str(Path.home()), str(localcloud.config.data_dir), str(Path(__file__).parent)]
    probe = json.dumps(["/usr/local/bin/node", *hidden])
    service = deploy(f"{image.name}@{image.digest}", public=True, env={"PROBE_PATHS": probe})
    status, body = call(service.uri + "/?name=node")
    assert status == 200, body
    answer = json.loads(body)
    assert answer["greeting"] == "hello, node"
    assert answer["minute"] == "1m", "the registry's ms, not the zip's node_modules"
    assert answer["node"].startswith(f"v{host_major()}.")
    assert answer["devDependencyInstalled"] is False, "production dependencies only"
    assert answer["target"] == "hello"
    if sandbox.bwrap_available():
        assert answer["sees"] == {"/usr/local/bin/node": True, **dict.fromkeys(hidden, False)}


def test_same_lock_installs_nothing_and_a_source_change_reuses_the_layer(clients, sources, hello):
    files, env, first = hello
    again = build(clients, sources, files, env)
    assert again.status == S.SUCCESS, again.status_detail
    assert again.results.images[0].digest == first.results.images[0].digest
    log = build_log(clients, again)
    assert "(cached: nothing installed)" in log
    assert "$ npm" not in log

    changed = dict(files, **{"index.js": files["index.js"] + b"\n// only the source changes\n"})
    later = build(clients, sources, changed, env)
    assert later.status == S.SUCCESS, later.status_detail
    assert later.results.images[0].digest != first.results.images[0].digest
    assert "$ npm" not in build_log(clients, later)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"package.json": "{ not json"}, "package.json is not valid JSON"),
        (
            {"package.json": json.dumps({"name": "x", "main": "server.js"})},
            "server.js does not exist",
        ),
        # A lock out of step with package.json: npm ci refuses it.
        (
            {"package.json": json.dumps({"name": "x", "dependencies": {"ms": "2.1.2"}})},
            "npm ci failed",
        ),
        ({"index.js": "exports.hello = (req, res) => {\n"}, "syntax error in index.js"),
    ],
    ids=["package-json-not-json", "missing-main", "npm-ci-fails", "syntax-error"],
)
def test_bad_sources_fail_the_build_naming_the_problem(clients, sources, change, reason):
    files = dict(tree(FUNCTIONS / "node_hello"), **change)
    done = build(clients, sources, files, {"GOOGLE_FUNCTION_TARGET": "hello"})
    assert done.status == S.FAILURE
    assert reason in done.status_detail
    assert reason in build_log(clients, done)
    if reason == "npm ci failed":
        assert "npm error" in done.status_detail, "npm's own words reach the build's status"


@pytest.mark.parametrize("variable", ["GOOGLE_RUNTIME", "GOOGLE_NODEJS_VERSION"])
def test_a_node_this_machine_lacks_is_refused_naming_it(clients, sources, variable):
    absent = [m for m in ("18", "24", "16") if m != host_major() and not shutil.which(f"node{m}")]
    if not absent:
        pytest.skip("this machine has every Node.js tried: 16, 18 and 24")
    major = absent[0]
    value = f"nodejs{major}" if variable == "GOOGLE_RUNTIME" else f"{major}.x.x"
    files = tree(FUNCTIONS / "node_hello")
    done = build(clients, sources, files, {variable: value, "GOOGLE_FUNCTION_TARGET": "hello"})
    assert done.status == S.FAILURE
    if variable == "GOOGLE_RUNTIME":
        assert f"nodejs{major}: no Node.js {major} on this machine" in done.status_detail
    else:
        assert f"no Node.js on this machine meets GOOGLE_NODEJS_VERSION='{major}.x.x'" in (
            done.status_detail
        )


def test_cloudevent_function_receives_a_pubsub_message_through_eventarc(
    localcloud, clients, sources, local_target, local_topic
):
    env = {"GOOGLE_FUNCTION_TARGET": "record", "GOOGLE_FUNCTION_SIGNATURE_TYPE": "cloudevent"}
    done = build(clients, sources, tree(FUNCTIONS / "node_recorder"), env, "node-recorder")
    assert done.status == S.SUCCESS, done.status_detail
    assert "no package-lock.json: npm install" in build_log(clients, done)
    (image,) = done.results.images
    recorder = Recorder(localcloud.config.run_host_ports[0])
    service_name = trigger_name = None
    try:
        service = clients.run_services.create_service(
            parent=LOCATION,
            service_id=f"node-rec-{uuid.uuid4().hex[:8]}",
            service=run_v2.Service(
                template={
                    "containers": [
                        {
                            "image": f"{image.name}@{image.digest}",
                            "env": [{"name": "RECORD_URL", "value": recorder.url}],
                        }
                    ]
                }
            ),
        ).result(timeout=120)
        service_name = service.name
        policy = clients.run_services.get_iam_policy(request={"resource": service.name})
        policy.bindings.append(
            policy_pb2.Binding(role="roles/run.invoker", members=[f"serviceAccount:{TRIGGER_SA}"])
        )
        clients.run_services.set_iam_policy(request={"resource": service.name, "policy": policy})
        topic = local_topic()
        trigger = clients.eventarc.create_trigger(
            parent=LOCATION,
            trigger_id=f"node-{uuid.uuid4().hex[:8]}",
            trigger=eventarc_v1.Trigger(
                event_filters=[
                    {"attribute": "type", "value": "google.cloud.pubsub.topic.v1.messagePublished"}
                ],
                destination={
                    "cloud_run": {
                        "service": service.name.rsplit("/", 1)[-1],
                        "region": "us-central1",
                    }
                },
                service_account=TRIGGER_SA,
                transport={"pubsub": {"topic": topic}},
            ),
        ).result(timeout=60)
        trigger_name = trigger.name
        message_id = local_target.publisher.publish(topic, b"order 42", origin="node").result(
            timeout=30
        )
        (event,) = recorder.wait(1, timeout=60)
    finally:
        recorder.close()
        if trigger_name:
            clients.eventarc.delete_trigger(name=trigger_name).result(timeout=60)
        if service_name:
            clients.run_services.delete_service(name=service_name).result(timeout=60)
    attrs = event["attributes"]
    assert attrs["type"] == "google.cloud.pubsub.topic.v1.messagePublished"
    assert attrs["source"] == f"//pubsub.googleapis.com/{topic}"
    assert attrs["id"] == message_id
    message = event["data"]["message"]
    assert base64.b64decode(message["data"]) == b"order 42"
    assert message["attributes"] == {"origin": "node"}
    assert message["messageId"] == message_id

"""Cloud Build through the official ``google-cloud-build`` client: the buildpacks step as
``gcloud builds submit --pack`` writes it, building Python functions into OCI images.

Expectations from https://cloud.google.com/build/docs/api/reference/rest/v1/projects.builds
and https://cloud.google.com/build/docs/subscribe-build-notifications.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from pathlib import Path

import pytest
from google.api_core import exceptions
from google.cloud.devtools import cloudbuild_v1

from localcloud.registry.client import RegistryClient
from localcloud.registry.names import parse_image
from localcloud.testing import image_name, pack_build, run_build, zip_dir, zip_tree

FUNCTIONS = Path(__file__).parent.parent / "functions"
S = cloudbuild_v1.Build.Status


def registry_config(localcloud, image: str, digest: str) -> dict:
    ref = parse_image(image)

    async def fetch() -> dict:
        async with RegistryClient(localcloud.config.registry_address) as registry:
            manifest, _media, got = await registry.get_manifest(ref.path, digest)
            assert got == digest
            config = json.loads(manifest)["config"]["digest"]
            return json.loads(await registry.get_blob_bytes(ref.path, config))

    return asyncio.run(fetch())


def test_builds_a_function_into_a_pullable_image(localcloud, clients, sources):
    image = image_name("hello")
    source = sources(zip_dir(FUNCTIONS / "hello_http"))
    build = run_build(clients, pack_build(source, image, {"GOOGLE_FUNCTION_TARGET": "hello"}))
    assert build.status == S.SUCCESS, build.status_detail
    assert build.start_time and build.finish_time
    assert build.steps[0].status == S.SUCCESS
    assert build.steps[0].timing.end_time
    assert {"FETCHSOURCE", "BUILD", "PUSH"} <= set(build.timing)
    (built,) = build.results.images
    assert built.name == image
    assert built.digest.startswith("sha256:")

    config = registry_config(localcloud, image, built.digest)
    env = dict(line.split("=", 1) for line in config["config"]["Env"])
    assert env["GOOGLE_FUNCTION_TARGET"] == "hello"
    assert env["GOOGLE_FUNCTION_SIGNATURE_TYPE"] == "http"
    assert config["config"]["Entrypoint"] == ["python3", "-m", "functions_framework"]
    assert config["config"]["Labels"]["localcloud.runtime"].startswith("python3")

    log_bucket = build.logs_bucket.removeprefix("gs://")
    log = clients.storage.bucket(log_bucket).blob(f"log-{build.id}.txt").download_as_text()
    assert build.id in log and "DONE" in log


def test_dependencies_install_once_and_images_are_reproducible(localcloud, clients, sources):
    """A second build of the same tree gives the same digest; a source-only change reuses
    the cached dependencies layer."""
    image = image_name("deps")
    tree = {p.name: p.read_bytes() for p in (FUNCTIONS / "with_dependency").iterdir()}
    env = {"GOOGLE_FUNCTION_TARGET": "hello"}
    first = run_build(clients, pack_build(sources(zip_tree(tree)), image, env))
    assert first.status == S.SUCCESS, first.status_detail
    again = run_build(clients, pack_build(sources(zip_tree(tree)), image, env))
    assert again.results.images[0].digest == first.results.images[0].digest

    tree["main.py"] = tree["main.py"] + b"\n# a comment changes only the source layer\n"
    changed = run_build(clients, pack_build(sources(zip_tree(tree)), image, env))
    assert changed.status == S.SUCCESS
    assert changed.results.images[0].digest != first.results.images[0].digest
    log = Path(localcloud.config.data_dir, "logs", "builds", f"{changed.id}.log").read_text()
    assert "dependencies layer" in log and "(cached)" in log
    assert "pip install" not in log


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"main.py": "def hello(request):\n    return (\n"}, "syntax error in main.py, line"),
        ({"handler.py": "def hello(request):\n    return 'x'\n"}, "missing main.py"),
        (
            {
                "main.py": "def hello(r):\n    return 'x'\n",
                "requirements.txt": "no such thing ==!! 1\n",
            },
            "pip install failed",
        ),
        ({"../evil.py": "x = 1\n", "main.py": "x = 1\n"}, "bad source archive"),
    ],
    ids=["syntax-error", "missing-main", "bad-requirements", "zip-slip"],
)
def test_bad_sources_fail_with_a_reason(clients, sources, files, expected):
    build = run_build(
        clients,
        pack_build(
            sources(zip_tree(files)), image_name("bad"), {"GOOGLE_FUNCTION_TARGET": "hello"}
        ),
    )
    assert build.status == S.FAILURE
    assert expected in build.status_detail


def test_missing_source_object_fails_fetch(clients):
    build = run_build(
        clients,
        pack_build(
            ("no-such-bucket-xyz", "nothing.zip", 0),
            image_name("gone"),
            {"GOOGLE_FUNCTION_TARGET": "hello"},
        ),
    )
    assert build.status == S.FAILURE
    assert (
        build.failure_info.type_ == cloudbuild_v1.Build.FailureInfo.FailureType.FETCH_SOURCE_FAILED
    )


def test_unsupported_step_is_invalid_argument(clients, sources):
    build = cloudbuild_v1.Build(
        source={"storage_source": {"bucket": "b", "object_": "o.zip"}},
        steps=[{"name": "gcr.io/cloud-builders/docker", "args": ["build", "."]}],
    )
    with pytest.raises(exceptions.InvalidArgument, match="buildpacks step"):
        clients.cloud_build.create_build(project_id="local-project", build=build)


@pytest.fixture
def hanging_index():
    """A package index that accepts connections and never answers: pip waits on it, so a
    build is still running when its timeout or a cancel comes (whatever pip's own speed)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield f"http://127.0.0.1:{server.getsockname()[1]}/simple"
    server.close()


def test_timeout_and_cancel(clients, sources, hanging_index):
    files = {
        "main.py": "def hello(r):\n    return 'x'\n",
        "requirements.txt": f"--index-url {hanging_index}\nnever-answers-pkg==1.0\n",
    }
    timed = run_build(
        clients,
        pack_build(
            sources(zip_tree(files)),
            image_name("slow"),
            {"GOOGLE_FUNCTION_TARGET": "hello"},
            timeout={"seconds": 2},
        ),
    )
    assert timed.status == S.TIMEOUT

    files["requirements.txt"] += f"# {uuid.uuid4()}\n"
    operation = clients.cloud_build.create_build(
        project_id="local-project",
        build=pack_build(
            sources(zip_tree(files)), image_name("cancel"), {"GOOGLE_FUNCTION_TARGET": "hello"}
        ),
    )
    build_id = operation.metadata.build.id
    cancelled = clients.cloud_build.cancel_build(project_id="local-project", id=build_id)
    assert cancelled.status == S.CANCELLED
    with pytest.raises(exceptions.GoogleAPICallError):
        operation.result(timeout=30)


def test_list_with_status_filter_and_retry(clients, sources):
    source = sources(zip_dir(FUNCTIONS / "hello_http"))
    build = run_build(
        clients, pack_build(source, image_name("listed"), {"GOOGLE_FUNCTION_TARGET": "hello"})
    )
    assert build.status == S.SUCCESS
    ok = clients.cloud_build.list_builds(project_id="local-project", filter='status="SUCCESS"')
    ids = [b.id for b in ok]
    assert build.id in ids
    assert all(b.status == S.SUCCESS for b in ok)
    retried = clients.cloud_build.retry_build(project_id="local-project", id=build.id).result(
        timeout=120
    )
    assert retried.id != build.id
    assert retried.status == S.SUCCESS
    assert retried.results.images[0].digest == build.results.images[0].digest


def test_status_changes_are_published_to_cloud_builds(
    local_target, clients, sources, build_notifications
):
    build = run_build(
        clients,
        pack_build(
            sources(zip_dir(FUNCTIONS / "hello_http")),
            image_name("notify"),
            {"GOOGLE_FUNCTION_TARGET": "hello"},
        ),
    )
    seen = []
    for _ in range(10):
        response = local_target.subscriber.pull(
            request={"subscription": build_notifications, "max_messages": 50}, timeout=5
        )
        for m in response.received_messages:
            if m.message.attributes["buildId"] == build.id:
                seen.append(m.message.attributes["status"])
                assert json.loads(m.message.data)["id"] == build.id
        if "SUCCESS" in seen:
            break
    assert seen[0] == "QUEUED"
    assert "WORKING" in seen
    assert seen[-1] == "SUCCESS"

"""Issue 15: who a build runs as, where its log goes, and which Python it is built for, as
Cloud Build and Google's buildpacks decide them; and the build step reading a failed
build's log and waiting for a build no longer than it may take.

Expectations:
- a build naming its own service account may not log to the default bucket; Cloud Build
  answers INVALID_ARGUMENT with the message in ``identity.LOGS_RULE``
  (https://cloud.google.com/build/docs/securing-builds/configure-user-specified-service-accounts);
- ``service_account`` is ``projects/PROJECT/serviceAccounts/ACCOUNT``
  (https://cloud.google.com/build/docs/api/reference/rest/v1/projects.builds#Build);
- a logs bucket that does not exist is refused at creation, INVALID_ARGUMENT ``invalid
  bucket``; the log object is ``${logs_bucket}/log-${build_id}.txt`` (same reference);
- the Python version comes from ``GOOGLE_PYTHON_VERSION``, then ``GOOGLE_RUNTIME_VERSION``,
  then ``.python-version`` (https://cloud.google.com/docs/buildpacks/python,
  https://cloud.google.com/docs/buildpacks/service-specific-configs).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from google.api_core import exceptions
from google.cloud.devtools import cloudbuild_v1

from localcloud.cloudbuild import identity
from localcloud.testing import image_name, pack_build, run_build, wait_for, zip_tree
from orchestrator import build as build_step
from orchestrator.config import Settings
from orchestrator.step import Context, StepFailed

PROJECT = "local-project"
S = cloudbuild_v1.Build.Status
Logging = cloudbuild_v1.BuildOptions.LoggingMode
HELLO = {"main.py": "def hello(request):\n    return 'hello'\n"}
TARGET = {"GOOGLE_FUNCTION_TARGET": "hello"}
ACCOUNT = f"orch-builder@{PROJECT}.iam.gserviceaccount.com"
SERVICE_ACCOUNT = f"projects/{PROJECT}/serviceAccounts/{ACCOUNT}"
HOST = f"{sys.version_info[0]}.{sys.version_info[1]}"
HOST_RUNTIME = f"python{sys.version_info[0]}{sys.version_info[1]}"


@pytest.fixture(scope="module", autouse=True)
def builder_may_push(clients) -> None:
    """The build account reads its source, pushes the images and writes its log as itself,
    so it needs the writer role on the repository, as ``orch local up`` and Terraform grant
    it (grants.json, account:build), and access to these tests' source and log buckets (the
    pipeline grants it the sources bucket and its logs bucket; here, object user on the project)."""
    repository = "projects/local-project/locations/us-central1/repositories/functions"
    policy = clients.artifact_registry.get_iam_policy(request={"resource": repository})
    policy.bindings.add(role="roles/artifactregistry.writer", members=[f"serviceAccount:{ACCOUNT}"])
    clients.artifact_registry.set_iam_policy(request={"resource": repository, "policy": policy})
    project = "projects/local-project"
    policy = clients.projects.get_iam_policy(request={"resource": project})
    policy.bindings.add(role="roles/storage.objectUser", members=[f"serviceAccount:{ACCOUNT}"])
    clients.projects.set_iam_policy(request={"resource": project, "policy": policy})


@pytest.fixture(scope="module")
def logs_bucket(clients) -> str:
    """A user-created logs bucket, as ``orch local up`` and Terraform make the pipeline's."""
    return clients.storage.create_bucket(f"build-logs-{uuid.uuid4().hex[:8]}").name


def create(clients, build) -> str:
    return clients.cloud_build.create_build(project_id=PROJECT, build=build).metadata.build.id


def read_log(clients, bucket: str, build_id: str) -> str:
    return clients.storage.bucket(bucket).blob(f"log-{build_id}.txt").download_as_text()


def runs(minor: str) -> bool:
    """Whether this machine has a working ``python3.X`` (a version manager's shim for a
    version that is not selected is on PATH but does not run)."""
    found = shutil.which(f"python{minor}")
    return (
        found is not None
        and subprocess.run([found, "-c", ""], capture_output=True, check=False).returncode == 0
    )


def missing_python() -> str | None:
    """A minor version the pinned builder has and this machine does not, e.g. ``3.12``."""
    for minor in build_step.BUILDER_PYTHONS:
        if minor != HOST and not runs(minor):
            return minor
    return None


# -- who the build runs as, where it logs -------------------------------------------------
def test_an_own_service_account_logging_to_the_default_bucket_is_refused(clients, sources):
    source = sources(zip_tree(HELLO))
    for options in ({}, {"logging": Logging.GCS_ONLY}, {"logging": Logging.LEGACY}):
        build = pack_build(
            source, image_name("sa"), TARGET, service_account=SERVICE_ACCOUNT, options=options
        )
        with pytest.raises(exceptions.InvalidArgument) as caught:
            create(clients, build)
        assert identity.LOGS_RULE in caught.value.message
    assert "if 'build.service_account' is specified" in identity.LOGS_RULE


@pytest.mark.parametrize(
    "fields",
    [
        {"options": {"logging": Logging.CLOUD_LOGGING_ONLY}},
        {"options": {"logging": Logging.NONE}},
        {"options": {"default_logs_bucket_behavior": 1}},  # REGIONAL_USER_OWNED_BUCKET
    ],
    ids=["cloud-logging-only", "no-logging", "regional-user-owned-bucket"],
)
def test_an_own_service_account_with_another_log_place_is_accepted(clients, sources, fields):
    source = sources(zip_tree(HELLO))
    build = pack_build(
        source, image_name("sa-ok"), TARGET, service_account=SERVICE_ACCOUNT, **fields
    )
    done = run_build(clients, build)
    assert done.status == S.SUCCESS, done.status_detail
    assert done.service_account == SERVICE_ACCOUNT
    if fields["options"].get("default_logs_bucket_behavior"):
        # The regional user-owned logs bucket Cloud Build makes lives in the build's region.
        from localcloud.core.projects import project_number

        bucket = clients.storage.get_bucket(
            f"{project_number(PROJECT)}-us-central1-cloudbuild-logs"
        )
        assert bucket.location == "US-CENTRAL1"


@pytest.mark.parametrize(
    "name",
    [
        ACCOUNT,  # an email alone is not the resource name
        f"projects/{PROJECT}/serviceAccounts/",
        f"projects/{PROJECT}/serviceAccounts/not-an-email",
        f"projects/{PROJECT}/accounts/{ACCOUNT}",
    ],
)
def test_a_malformed_service_account_is_invalid_argument_naming_the_field(
    clients, sources, logs_bucket, name
):
    build = pack_build(
        sources(zip_tree(HELLO)),
        image_name("badsa"),
        TARGET,
        service_account=name,
        logs_bucket=f"gs://{logs_bucket}",
    )
    with pytest.raises(exceptions.InvalidArgument) as caught:
        create(clients, build)
    assert "build.service_account" in caught.value.message
    assert "projects/{PROJECT_ID}/serviceAccounts/{ACCOUNT}" in caught.value.message


def test_a_logs_bucket_that_does_not_exist_is_refused_at_creation(clients, sources):
    gone = f"no-such-logs-{uuid.uuid4().hex[:8]}"
    build = pack_build(
        sources(zip_tree(HELLO)),
        image_name("nologs"),
        TARGET,
        service_account=SERVICE_ACCOUNT,
        logs_bucket=f"gs://{gone}",
    )
    with pytest.raises(exceptions.InvalidArgument) as caught:
        create(clients, build)
    assert f'invalid bucket "{gone}"' in caught.value.message
    assert clients.storage.lookup_bucket(gone) is None, "Cloud Build makes no user bucket"
    with pytest.raises(exceptions.InvalidArgument, match="invalid logs bucket"):
        source = sources(zip_tree(HELLO))
        create(clients, pack_build(source, image_name("x"), TARGET, logs_bucket="logs"))


def test_the_build_runs_as_its_account_and_logs_to_its_bucket(clients, sources, logs_bucket):
    build = pack_build(
        sources(zip_tree(HELLO)),
        image_name("runas"),
        TARGET,
        service_account=SERVICE_ACCOUNT,
        logs_bucket=f"gs://{logs_bucket}",
        options={"logging": Logging.GCS_ONLY},
    )
    done = run_build(clients, build)
    assert done.status == S.SUCCESS, done.status_detail
    assert done.service_account == SERVICE_ACCOUNT
    assert done.logs_bucket == f"gs://{logs_bucket}"
    log = read_log(clients, logs_bucket, done.id)
    assert f"running as service account {ACCOUNT}" in log
    assert "DONE" in log


def test_without_an_account_the_build_says_which_default_it_ran_as(clients, sources):
    done = run_build(clients, pack_build(sources(zip_tree(HELLO)), image_name("dflt"), TARGET))
    assert done.status == S.SUCCESS, done.status_detail
    account = identity.default_account(PROJECT)
    assert account.endswith("-compute@developer.gserviceaccount.com")
    assert done.service_account == f"projects/{PROJECT}/serviceAccounts/{account}"
    # Retrying it keeps the account and its (default) logs bucket, and is accepted.
    again = clients.cloud_build.retry_build(project_id=PROJECT, id=done.id)
    retried = again.result(timeout=120)
    assert retried.service_account == done.service_account


def test_cloud_logging_only_writes_no_log_object(clients, sources, logs_bucket):
    build = pack_build(
        sources(zip_tree(HELLO)),
        image_name("cloudlog"),
        TARGET,
        service_account=SERVICE_ACCOUNT,
        options={"logging": Logging.CLOUD_LOGGING_ONLY},
    )
    done = run_build(clients, build)
    assert done.status == S.SUCCESS, done.status_detail
    assert not done.logs_bucket
    assert clients.storage.lookup_bucket(f"{PROJECT}_cloudbuild-logs") is None or (
        clients.storage.bucket(f"{PROJECT}_cloudbuild-logs").get_blob(f"log-{done.id}.txt") is None
    )


# -- which Python --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "env",
    [
        {"GOOGLE_PYTHON_VERSION": f"{HOST}.x"},
        {"GOOGLE_RUNTIME": "python", "GOOGLE_RUNTIME_VERSION": HOST},
        {"GOOGLE_RUNTIME": HOST_RUNTIME},
    ],
    ids=["python-version", "runtime-version", "runtime"],
)
def test_the_python_version_variables_are_honoured(localcloud, clients, sources, env):
    from tests.integration.test_cloud_build import registry_config

    image = image_name("pyver")
    done = run_build(clients, pack_build(sources(zip_tree(HELLO)), image, {**TARGET, **env}))
    assert done.status == S.SUCCESS, done.status_detail
    config = registry_config(localcloud, image, done.results.images[0].digest)
    assert config["config"]["Labels"]["localcloud.runtime"] == HOST_RUNTIME
    assert f"GOOGLE_RUNTIME={HOST_RUNTIME}" in config["config"]["Env"]


def test_a_python_this_machine_lacks_fails_the_build_naming_it(clients, sources):
    """Before issue 15, GOOGLE_PYTHON_VERSION was ignored and the host's Python used."""
    cases = [({"GOOGLE_PYTHON_VERSION": "3.9.x"}, {}, "python39: no python3.9 on this machine")]
    cases.append(({"GOOGLE_RUNTIME": "python39"}, {}, "python39: no python3.9"))
    cases.append(({}, {".python-version": "3.9\n"}, "python39: no python3.9"))
    minor = missing_python()
    if minor is not None:
        runtime = "python" + minor.replace(".", "")
        cases.append(({"GOOGLE_PYTHON_VERSION": f"{minor}.x"}, {}, f"{runtime}: no python{minor}"))
    for env, files, expected in cases:
        if "3.9" in expected and runs("3.9"):
            continue
        source = sources(zip_tree({**HELLO, **files}))
        done = run_build(clients, pack_build(source, image_name("nopy"), {**TARGET, **env}))
        assert done.status == S.FAILURE, (env, done.status_detail)
        assert expected in done.status_detail
        log = read_log(clients, done.logs_bucket.removeprefix("gs://"), done.id)
        assert expected in log


def test_the_pinned_builder_refuses_a_python_it_does_not_ship(clients, sources):
    args = ["build", image_name("old"), "--builder", build_step.BUILDER]
    args += ["--env", "GOOGLE_FUNCTION_TARGET=hello", "--env", "GOOGLE_PYTHON_VERSION=3.9.x"]
    build = pack_build(sources(zip_tree(HELLO)), image_name("old"), TARGET)
    build.steps[0].args[:] = args
    build.images[:] = [args[1]]
    done = run_build(clients, build)
    assert done.status == S.FAILURE
    assert f"builder {build_step.BUILDER} has no Python 3.9" in done.status_detail


# -- the pipeline's build step --------------------------------------------------------------
@pytest.fixture(scope="module")
def settings(clients) -> Settings:
    """The pipeline's settings, with its logs bucket made as ``orch local up`` makes it."""
    found = Settings.defaults(PROJECT)
    if clients.storage.lookup_bucket(found.build_logs_bucket) is None:
        clients.storage.create_bucket(found.build_logs_bucket)
    return found


def test_the_step_builds_as_the_build_account_and_reads_a_failed_log(clients, sources, settings):
    """Issue 15 (1, 2): the step's build runs as orch-builder and logs to the pipeline's own
    bucket, which the step reads for the failure event; an unreadable log says why."""
    broken = {**HELLO, "main.py": "def hello(request)\n    return 1\n"}
    build = build_step.pack_build(
        sources(zip_tree(broken)), image_name("step"), TARGET, [], settings
    )
    assert build.service_account == (
        f"projects/{PROJECT}/serviceAccounts/{settings.build_service_account}"
    )
    done = run_build(clients, build)
    assert done.status == S.FAILURE
    assert done.service_account == build.service_account
    assert done.logs_bucket == f"gs://{settings.build_logs_bucket}"
    ctx = Context(settings, clients)
    tail, why = build_step.log_tail(ctx, done)
    assert why is None
    assert any("syntax error in main.py" in line for line in tail)
    assert f"running as service account {settings.build_service_account}" in read_log(
        clients, settings.build_logs_bucket, done.id
    )

    clients.storage.bucket(settings.build_logs_bucket).blob(f"log-{done.id}.txt").delete()
    tail, why = build_step.log_tail(ctx, done)
    assert tail == []
    assert why == (
        f"the build log gs://{settings.build_logs_bucket}/log-{done.id}.txt does not exist"
    )


@contextlib.contextmanager
def hanging_index() -> Iterator[str]:
    """A requirement whose download never answers, so the build stays WORKING."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)  # never accept(): the handshake completes, nobody answers
    try:
        yield f"hangpkg @ http://127.0.0.1:{server.getsockname()[1]}/hangpkg-0.1-py3-none-any.whl"
    finally:
        server.close()


def test_the_step_stops_waiting_at_its_deadline_naming_the_build(clients, sources, settings):
    """Issue 15 (4): the wait has a deadline; past it the step fails TIMEOUT naming the build."""
    with hanging_index() as requirement:
        files = {**HELLO, "requirements.txt": f"{requirement}\n# {uuid.uuid4()}\n"}
        build = build_step.pack_build(
            sources(zip_tree(files)), image_name("hang"), TARGET, [], settings
        )
        build_id = create(clients, build)
        try:
            ctx = Context(settings, clients)
            with pytest.raises(StepFailed) as caught:
                build_step.wait(ctx, build_id, 1.5)
            assert caught.value.code == "TIMEOUT"
            assert build_id in caught.value.message
            assert caught.value.details["build_id"] == build_id
            assert caught.value.details["build_status"] in ("QUEUED", "WORKING")
        finally:
            with contextlib.suppress(exceptions.GoogleAPICallError):
                clients.cloud_build.cancel_build(project_id=PROJECT, id=build_id)
    wait_for(
        lambda: (
            clients.cloud_build.get_build(project_id=PROJECT, id=build_id).status == S.CANCELLED
        ),
        30,
        "the cancelled build",
    )

"""What a build request may say, through the official ``google-cloud-build`` client: the
configs gcloud writes (``run deploy --source``, ``builds submit --pack``), substitutions,
the pack step's ``--path``, and the configs and requests refused, naming the field.

Expectations from https://cloud.google.com/build/docs/api/reference/rest/v1/projects.builds
and https://cloud.google.com/build/docs/configuring-builds/substitute-variable-values.
"""

from __future__ import annotations

import tarfile
import uuid

import pytest
from google.api_core import exceptions
from google.cloud.devtools import cloudbuild_v1

from localcloud.testing import image_name, pack_args, pack_build, pull_image, run_build, zip_tree

PROJECT = "local-project"
S = cloudbuild_v1.Build.Status
HELLO = {"main.py": "def hello(request):\n    return 'hello'\n"}
TARGET = {"GOOGLE_FUNCTION_TARGET": "hello"}


# -- configs gcloud writes, substitutions ------------------------------------------------
def test_run_deploy_source_two_step_config_is_accepted(clients, sources):
    """``gcloud run deploy --source`` / ``builds submit --pack`` without --builder: a
    ``pack config default-builder`` step, then ``pack build`` without --builder."""
    image = image_name("rundeploy")
    bucket, name, generation = sources(zip_tree(HELLO))
    build = cloudbuild_v1.Build(
        source={"storage_source": {"bucket": bucket, "object_": name, "generation": generation}},
        steps=[
            {
                "name": "gcr.io/k8s-skaffold/pack",
                "entrypoint": "pack",
                "args": ["config", "default-builder", "gcr.io/buildpacks/builder:latest"],
            },
            {
                "name": "gcr.io/k8s-skaffold/pack",
                "entrypoint": "pack",
                "args": pack_args(
                    image, {**TARGET, "GOOGLE_FUNCTION_SIGNATURE_TYPE": "http"}, builder=False
                ),
            },
        ],
        images=[image],
    )
    done = run_build(clients, build)
    assert done.status == S.SUCCESS, done.status_detail
    assert [s.status for s in done.steps] == [S.SUCCESS, S.SUCCESS]
    assert done.results.images[0].name == image


def test_substitutions_are_expanded(localcloud, clients, sources, tmp_path):
    template = "us-central1-docker.pkg.dev/$PROJECT_ID/functions/subst-${_NAME}:$_TAG"
    name = uuid.uuid4().hex[:6]
    bucket, obj, generation = sources(zip_tree(HELLO))
    build = cloudbuild_v1.Build(
        source={"storage_source": {"bucket": bucket, "object_": obj, "generation": generation}},
        steps=[
            {
                "name": "gcr.io/k8s-skaffold/pack",
                "entrypoint": "pack",
                "args": pack_args(template, {**TARGET, "BUILT_BY": "$BUILD_ID", "PRICE": "$$5"}),
            }
        ],
        images=[template],
        substitutions={"_NAME": name, "_TAG": "v7"},
    )
    done = run_build(clients, build)
    assert done.status == S.SUCCESS, done.status_detail
    expected = f"us-central1-docker.pkg.dev/{PROJECT}/functions/subst-{name}:v7"
    assert done.results.images[0].name == expected
    _manifest, config, _layers = pull_image(
        localcloud.config.registry_address, expected, done.results.images[0].digest, tmp_path
    )
    env = dict(line.split("=", 1) for line in config["config"]["Env"])
    assert env["BUILT_BY"] == done.id
    assert env["PRICE"] == "$5"


@pytest.mark.parametrize(
    "files",
    [
        {"app/main.py": HELLO["main.py"], "docs/readme.txt": "x"},
        {"app/main.py": HELLO["main.py"]},  # only one top-level directory
    ],
    ids=["two-top-level-dirs", "one-top-level-dir"],
)
def test_pack_path_selects_a_directory_of_the_source(localcloud, clients, sources, tmp_path, files):
    image = image_name("path")
    build = pack_build(sources(zip_tree(files)), image, TARGET)
    build.steps[0].args.extend(["--path", "app"])
    done = run_build(clients, build)
    assert done.status == S.SUCCESS, done.status_detail
    _manifest, _config, layers = pull_image(
        localcloud.config.registry_address, image, done.results.images[0].digest, tmp_path
    )
    with tarfile.open(layers[-1][1], "r:gz") as tar:
        assert "workspace/main.py" in tar.getnames()


def _step(args: list[str], name: str = "gcr.io/k8s-skaffold/pack") -> dict:
    return {"name": name, "entrypoint": "pack", "args": args}


SOURCE = {"storage_source": {"bucket": "some-bucket", "object_": "src.zip"}}
GOOD_IMAGE = f"us-central1-docker.pkg.dev/{PROJECT}/functions/ok"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"source": SOURCE, "steps": [_step(pack_args("gcr.io/local-project/app", TARGET))]},
            r"build\.steps\[0\]\.args.*gcr\.io",
        ),
        (
            {
                "source": SOURCE,
                "steps": [
                    _step(["config", "default-builder", "gcr.io/buildpacks/builder:latest"]),
                    _step([*pack_args(GOOD_IMAGE, TARGET), "--publish"]),
                ],
            },
            r"build\.steps\[1\]\.args: pack flag '--publish'",
        ),
        (
            {
                "source": SOURCE,
                "steps": [_step(pack_args(GOOD_IMAGE, TARGET))],
                "images": [GOOD_IMAGE + "-other"],
            },
            r"build\.images\[0\]",
        ),
        ({"steps": [_step(pack_args(GOOD_IMAGE, TARGET))]}, r"build\.source"),
        (
            {
                "source": {"repo_source": {"repo_name": "r", "branch_name": "main"}},
                "steps": [_step(pack_args(GOOD_IMAGE, TARGET))],
            },
            r"build\.source",
        ),
        (
            {
                "source": SOURCE,
                "steps": [_step([*pack_args(GOOD_IMAGE, TARGET), "--env", "NOEQUALS"])],
            },
            r"build\.steps\[0\]\.args: --env",
        ),
        (
            {
                "source": SOURCE,
                "steps": [_step([*pack_args(GOOD_IMAGE, TARGET), "--path", "../up"])],
            },
            r"build\.steps\[0\]\.args: --path",
        ),
        (
            {
                "source": SOURCE,
                "steps": [
                    _step(pack_args(GOOD_IMAGE, TARGET), name="gcr.io/cloud-builders/docker")
                ],
            },
            r"build\.steps\[0\]\.name",
        ),
        (
            {
                "source": SOURCE,
                "steps": [_step(pack_args(GOOD_IMAGE, TARGET))],
                "timeout": {"seconds": 25 * 3600},
            },
            r"timeout",
        ),
        (
            {
                "source": SOURCE,
                "steps": [_step(["build", "us-central1-docker.pkg.dev/$PROJECT_ID/f/$_UNSET"])],
            },
            r"build\.steps\[0\]\.args",
        ),
    ],
    ids=[
        "bad-image-host",
        "unknown-pack-flag",
        "images-not-the-pack-image",
        "no-source",
        "repo-source",
        "env-without-value",
        "path-escapes",
        "docker-step",
        "timeout-over-24h",
        "unset-substitution",
    ],
)
def test_invalid_configs_are_invalid_argument_naming_the_field(clients, fields, expected):
    before = {b.id for b in clients.cloud_build.list_builds(project_id=PROJECT)}
    with pytest.raises(exceptions.InvalidArgument, match=expected):
        clients.cloud_build.create_build(project_id=PROJECT, build=cloudbuild_v1.Build(**fields))
    after = {b.id for b in clients.cloud_build.list_builds(project_id=PROJECT)}
    assert after == before  # nothing was stored


def test_bad_requests_are_client_errors(clients):
    cb = clients.cloud_build
    with pytest.raises(exceptions.InvalidArgument):
        cb.get_build(name="projects/local-project/builds/x")
    with pytest.raises(exceptions.NotFound):
        cb.get_build(project_id=PROJECT, id=str(uuid.uuid4()))
    with pytest.raises(exceptions.NotFound):
        cb.cancel_build(project_id=PROJECT, id=str(uuid.uuid4()))
    with pytest.raises(exceptions.NotFound):
        cb.retry_build(project_id=PROJECT, id=str(uuid.uuid4()))
    with pytest.raises(exceptions.InvalidArgument):
        list(cb.list_builds(project_id=PROJECT, filter='status="NOPE"'))
    with pytest.raises(exceptions.InvalidArgument):
        list(cb.list_builds(project_id=PROJECT, filter='create_time>"2020-01-01T00:00:00Z" OR x'))
    with pytest.raises(exceptions.InvalidArgument):
        cb.list_builds(request={"project_id": PROJECT, "page_token": "!!!not-a-token"})

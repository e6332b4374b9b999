"""Issue 16: Cloud Build pushes a build's images as the build's service account, and only to
a repository that exists.

Google's rules these tests hold localcloud to:

- the build's service account pushes ``images``; pushing to Artifact Registry needs
  ``artifactregistry.repositories.uploadArtifacts`` (``roles/artifactregistry.writer``) on
  the repository (https://cloud.google.com/artifact-registry/docs/access-control#permissions,
  https://cloud.google.com/build/docs/securing-builds/configure-access-for-cloud-build-service-account);
  a refused push fails the build with the registry's ``denied: Permission ...`` answer;
- a repository must be created before images are pushed to it
  (https://cloud.google.com/artifact-registry/docs/transition/changes-gcp#workflow); a push
  to one that does not exist fails ``name unknown: Repository "REPO" not found``.
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.cloud import artifactregistry_v1
from google.cloud.artifactregistry_v1.services.artifact_registry.transports import (
    ArtifactRegistryGrpcTransport,
)
from google.cloud.devtools import cloudbuild_v1

from localcloud import testing
from localcloud.testing import pack_build, pull_image, run_build, zip_tree

PROJECT = "local-project"
PARENT = f"projects/{PROJECT}/locations/us-central1"
S = cloudbuild_v1.Build.Status
PUSH_FAILED = cloudbuild_v1.Build.FailureInfo.FailureType.PUSH_FAILED
HELLO = {"main.py": "def hello(request):\n    return 'hello'\n"}
TARGET = {"GOOGLE_FUNCTION_TARGET": "hello"}
CLOUD_LOGGING_ONLY = {"logging": cloudbuild_v1.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY}


@pytest.fixture(scope="module")
def registry_api(localcloud: testing.Instance) -> Any:
    channel = grpc.insecure_channel(localcloud.config.grpc_address)
    yield artifactregistry_v1.ArtifactRegistryClient(
        transport=ArtifactRegistryGrpcTransport(channel=channel)
    )
    channel.close()


def new_repository(localcloud: testing.Instance) -> str:
    name = f"{PARENT}/repositories/push-{uuid.uuid4().hex[:8]}"
    client = testing.create_repository(localcloud.config.grpc_address, name)
    assert client is not None
    client.transport.close()
    return name


def may_read_sources(clients, account: str) -> None:
    """Builds read their source as their account: let it read these tests' source buckets,
    so what is tested is the push alone."""
    policy = clients.projects.get_iam_policy(request={"resource": f"projects/{PROJECT}"})
    policy.bindings.add(role="roles/storage.objectViewer", members=[f"serviceAccount:{account}"])
    clients.projects.set_iam_policy(request={"resource": f"projects/{PROJECT}", "policy": policy})


def test_a_build_whose_account_may_not_push_fails_until_it_is_granted(
    localcloud, clients, sources, registry_api, tmp_path
) -> None:
    repository = new_repository(localcloud)
    account = f"pusher-{uuid.uuid4().hex[:6]}@{PROJECT}.iam.gserviceaccount.com"
    may_read_sources(clients, account)
    image = f"us-central1-docker.pkg.dev/{PROJECT}/{repository.rsplit('/', 1)[1]}/hello"
    build = pack_build(
        sources(zip_tree(HELLO)),
        image,
        TARGET,
        service_account=f"projects/{PROJECT}/serviceAccounts/{account}",
        options=CLOUD_LOGGING_ONLY,
    )

    refused = run_build(clients, build)
    assert refused.status == S.FAILURE
    assert refused.failure_info.type_ == PUSH_FAILED
    denial = (
        'denied: Permission "artifactregistry.repositories.uploadArtifacts" denied on '
        f'resource "{repository}" (or it may not exist)'
    )
    assert denial in refused.status_detail
    assert account in refused.status_detail
    assert not refused.results.images

    policy = registry_api.get_iam_policy(request={"resource": repository})
    policy.bindings.add(role="roles/artifactregistry.writer", members=[f"serviceAccount:{account}"])
    registry_api.set_iam_policy(request={"resource": repository, "policy": policy})
    done = run_build(clients, build)
    assert done.status == S.SUCCESS, done.status_detail
    digest = done.results.images[0].digest
    manifest, _config, _layers = pull_image(
        localcloud.config.registry_address, image, digest, tmp_path
    )
    assert manifest["schemaVersion"] == 2


def test_a_build_pushing_to_a_repository_that_does_not_exist_fails_naming_it(
    clients, sources
) -> None:
    # An account that may push to every repository of the project: what stops it is only
    # that the repository is not there.
    account = f"pusher-{uuid.uuid4().hex[:6]}@{PROJECT}.iam.gserviceaccount.com"
    may_read_sources(clients, account)
    policy = clients.projects.get_iam_policy(request={"resource": f"projects/{PROJECT}"})
    policy.bindings.add(role="roles/artifactregistry.writer", members=[f"serviceAccount:{account}"])
    clients.projects.set_iam_policy(request={"resource": f"projects/{PROJECT}", "policy": policy})
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    image = f"us-central1-docker.pkg.dev/{PROJECT}/{missing}/hello"
    build = pack_build(
        sources(zip_tree(HELLO)),
        image,
        TARGET,
        service_account=f"projects/{PROJECT}/serviceAccounts/{account}",
        options=CLOUD_LOGGING_ONLY,
    )
    done = run_build(clients, build)
    assert done.status == S.FAILURE
    assert done.failure_info.type_ == PUSH_FAILED
    assert f'name unknown: Repository "{missing}" not found' in done.status_detail
    assert not done.results.images

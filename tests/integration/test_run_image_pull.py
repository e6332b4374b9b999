"""Issue 16: Cloud Run reads a revision's image as its project's Cloud Run Service Agent.

Google's rules these tests hold localcloud to
(https://cloud.google.com/artifact-registry/docs/integrate-cloud-run): the agent,
``service-PROJECT_NUMBER@serverless-robot-prod.iam.gserviceaccount.com``, reads the
repositories of its own project by default; "if your repositories are in a different
project, you must grant Artifact Registry Reader permissions to the Cloud Run Service
Agent". Until then the revision is not ready, with the words Cloud Run uses
(https://cloud.google.com/run/docs/troubleshooting): "Google Cloud Run Service Agent ...
must have permission to read the image, ...".
"""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from pathlib import Path

import pytest
from google.api_core import exceptions
from google.cloud import artifactregistry_v1, run_v2
from google.cloud.artifactregistry_v1.services.artifact_registry.transports import (
    ArtifactRegistryGrpcTransport,
)

from localcloud.core.projects import project_number
from localcloud.testing import build_function, call, run_service

FUNCTIONS_REPO = "projects/local-project/locations/us-central1/repositories/functions"
FUNCTIONS = Path(__file__).parent.parent / "functions"


def registry_api(localcloud):
    import grpc

    channel = grpc.insecure_channel(localcloud.config.grpc_address)
    return artifactregistry_v1.ArtifactRegistryClient(
        transport=ArtifactRegistryGrpcTransport(channel=channel)
    )


def test_another_projects_image_needs_a_grant_to_the_cloud_run_service_agent(
    localcloud, clients, build_image
) -> None:
    image = build_image("hello_http", "hello")  # in local-project's `functions` repository
    # Deployed in local-project, the project's own agent reads it (the suite's every deploy
    # does); deployed in another project by the same owner, that project's agent may not.
    project = f"other-{uuid.uuid4().hex[:8]}"
    agent = f"service-{project_number(project)}@serverless-robot-prod.iam.gserviceaccount.com"
    parent = f"projects/{project}/locations/us-central1"
    service_id = f"img-{uuid.uuid4().hex[:6]}"
    with pytest.raises(exceptions.GoogleAPICallError) as refused:
        clients.run_services.create_service(
            parent=parent, service=run_service(image), service_id=service_id
        ).result(timeout=120)
    message = refused.value.message
    assert f"Google Cloud Run Service Agent {agent} must have permission to read the image, " in (
        message
    )
    assert image in message
    assert (
        f"Note that the image is from project [local-project], which is not the same as this "
        f"project [{project}]."
    ) in message
    name = f"{parent}/services/{service_id}"
    service = clients.run_services.get_service(name=name)
    assert service.terminal_condition.state == run_v2.Condition.State.CONDITION_FAILED
    assert "is not ready and cannot serve traffic. Google Cloud Run Service Agent" in (
        service.terminal_condition.message
    )

    api = registry_api(localcloud)
    policy = api.get_iam_policy(request={"resource": FUNCTIONS_REPO})
    policy.bindings.add(role="roles/artifactregistry.reader", members=[f"serviceAccount:{agent}"])
    api.set_iam_policy(request={"resource": FUNCTIONS_REPO, "policy": policy})
    try:
        updated = clients.run_services.update_service(
            service=run_v2.Service(
                name=name, template=run_service(image, {"GRANTED": "1"}).template
            )
        ).result(timeout=120)
        assert updated.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED
    finally:
        with contextlib.suppress(exceptions.NotFound):
            clients.run_services.delete_service(name=name).result(timeout=60)
        api.transport.close()


def test_a_pushed_image_is_unpacked_before_a_revision_asks_for_it(
    localcloud, clients, deploy, tmp_path
) -> None:
    """Issue 19: the registry tells Cloud Run of every manifest pushed, and the image is
    unpacked (as its project's agent) while the deployment is still between steps, so the
    revision's first instance does not wait for the pull. No revision imports it by that:
    the import is marked when a revision of it is deployed, which reads the manifest again."""
    source = tmp_path / "prepared"
    shutil.copytree(FUNCTIONS / "hello_http", source)
    marker = uuid.uuid4().hex
    (source / "main.py").write_text((source / "main.py").read_text() + f"\nPREPARED = {marker!r}\n")
    bucket = clients.storage.create_bucket(f"prepared-{uuid.uuid4().hex[:8]}")
    image = build_function(
        clients, bucket, source, "hello", "us-central1-docker.pkg.dev/local-project/functions/prep"
    )
    slot = localcloud.config.data_dir / "run" / "images" / image.split("@sha256:")[1]
    deadline = time.monotonic() + 60
    while not (slot / "image.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (slot / "image.json").exists(), "the pushed image was not unpacked ahead"
    assert not (slot / "imported-by").exists(), "no revision has imported it yet"
    service = deploy(image, public=True)
    assert call(service.uri)[0] == 200
    assert len(list((slot / "imported-by").iterdir())) == 1

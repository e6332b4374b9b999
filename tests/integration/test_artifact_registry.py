"""Artifact Registry: repositories through ``google.cloud.artifactregistry_v1``, and the
registry front's IAM on pushes and pulls.

Google's rules these tests hold localcloud to:

- repositories: https://cloud.google.com/artifact-registry/docs/reference/rpc/google.devtools.artifactregistry.v1
  (CreateRepository is a long-running operation; ``format`` is DOCKER here);
- permissions: https://cloud.google.com/artifact-registry/docs/access-control#permissions
  (pull ``artifactregistry.repositories.downloadArtifacts``, push ``uploadArtifacts``;
  ``roles/artifactregistry.reader`` / ``writer`` carry them);
- Docker clients authenticate with ``oauth2accesstoken`` and an access token:
  https://cloud.google.com/artifact-registry/docs/docker/authentication#token
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import requests
from google.api_core import exceptions
from google.cloud import artifactregistry_v1
from google.cloud.artifactregistry_v1.services.artifact_registry.transports import (
    ArtifactRegistryGrpcTransport,
)

from localcloud import testing
from localcloud.core.oidc import Issuer
from localcloud.registry.agents import run_agent
from localcloud.registry.client import OCI_CONFIG, OCI_MANIFEST, RegistryClient, RegistryError

PROJECT = "local-project"
PARENT = f"projects/{PROJECT}/locations/us-central1"
WRITER = f"ar-writer-{uuid.uuid4().hex[:6]}@{PROJECT}.iam.gserviceaccount.com"


def ar_client(instance: testing.Instance, token: str | None = None) -> Any:
    channel = grpc.insecure_channel(instance.config.grpc_address)
    if token is not None:
        channel = grpc.intercept_channel(channel, _Bearer(token))
    return artifactregistry_v1.ArtifactRegistryClient(
        transport=ArtifactRegistryGrpcTransport(channel=channel)
    )


class _Bearer(grpc.UnaryUnaryClientInterceptor):
    """Adds ``authorization: Bearer TOKEN`` to each call, as a credentialed client does."""

    def __init__(self, token: str) -> None:
        self.token = token

    def intercept_unary_unary(self, continuation, details, request):
        metadata = [*(details.metadata or []), ("authorization", f"Bearer {self.token}")]
        return continuation(details._replace(metadata=metadata), request)


@pytest.fixture(scope="module")
def issuer(localcloud: testing.Instance) -> Issuer:
    return Issuer(localcloud.config.data_dir / "oidc", localcloud.config.http_url)


@pytest.fixture(scope="module")
def owner(localcloud) -> Any:
    return ar_client(localcloud)


def make_repository(owner: Any) -> str:
    repository_id = f"repo-{uuid.uuid4().hex[:8]}"
    created = owner.create_repository(
        request={
            "parent": PARENT,
            "repository_id": repository_id,
            "repository": {"format_": artifactregistry_v1.Repository.Format.DOCKER},
        }
    ).result(timeout=30)
    assert created.name == f"{PARENT}/repositories/{repository_id}"
    return created.name


def grant(owner: Any, repository: str, role: str, member: str) -> None:
    policy = owner.get_iam_policy(request={"resource": repository})
    policy.bindings.add(role=role, members=[member])
    owner.set_iam_policy(request={"resource": repository, "policy": policy})


def test_repositories_are_created_read_listed_and_deleted(owner) -> None:
    name = make_repository(owner)
    got = owner.get_repository(name=name)
    assert got.format_ == artifactregistry_v1.Repository.Format.DOCKER
    assert got.registry_uri == f"us-central1-docker.pkg.dev/{PROJECT}/{name.rsplit('/', 1)[1]}"
    assert got.create_time
    assert name in [r.name for r in owner.list_repositories(parent=PARENT)]
    with pytest.raises(exceptions.AlreadyExists):
        owner.create_repository(
            request={
                "parent": PARENT,
                "repository_id": name.rsplit("/", 1)[1],
                "repository": {"format_": artifactregistry_v1.Repository.Format.DOCKER},
            }
        ).result(timeout=30)
    owner.delete_repository(name=name).result(timeout=30)
    with pytest.raises(exceptions.NotFound):
        owner.get_repository(name=name)


def test_a_repository_needs_a_format_and_a_valid_id(owner) -> None:
    with pytest.raises(exceptions.InvalidArgument, match=re.escape("repository.format")):
        owner.create_repository(
            request={"parent": PARENT, "repository_id": "no-format", "repository": {}}
        )
    with pytest.raises(exceptions.InvalidArgument, match=re.escape("repository_id")):
        owner.create_repository(
            request={
                "parent": PARENT,
                "repository_id": "Bad_Id",
                "repository": {"format_": artifactregistry_v1.Repository.Format.DOCKER},
            }
        )


def test_repository_iam_round_trip_and_unknown_roles(owner, localcloud, issuer) -> None:
    name = make_repository(owner)
    member = f"serviceAccount:{WRITER}"
    grant(owner, name, "roles/artifactregistry.writer", member)
    policy = owner.get_iam_policy(request={"resource": name})
    assert [list(b.members) for b in policy.bindings if b.role.endswith(".writer")] == [[member]]
    policy.bindings.add(role="roles/artifactregistry.writr", members=[member])
    with pytest.raises(exceptions.InvalidArgument, match=re.escape("artifactregistry.writr")):
        owner.set_iam_policy(request={"resource": name, "policy": policy})
    # TestIamPermissions answers truthfully for the caller.
    writer = ar_client(localcloud, issuer.mint_access_token(WRITER))
    asked = [
        "artifactregistry.repositories.uploadArtifacts",
        "artifactregistry.repositories.setIamPolicy",
    ]
    answer = writer.test_iam_permissions(request={"resource": name, "permissions": asked})
    assert list(answer.permissions) == ["artifactregistry.repositories.uploadArtifacts"]


def test_repository_calls_need_their_permissions(localcloud, issuer) -> None:
    stranger = ar_client(
        localcloud, issuer.mint_access_token(f"nobody@{PROJECT}.iam.gserviceaccount.com")
    )
    with pytest.raises(
        exceptions.PermissionDenied, match=re.escape("artifactregistry.repositories.create")
    ):
        stranger.create_repository(
            request={
                "parent": PARENT,
                "repository_id": "never",
                "repository": {"format_": artifactregistry_v1.Repository.Format.DOCKER},
            }
        )
    with pytest.raises(
        exceptions.PermissionDenied, match=re.escape("artifactregistry.repositories.list")
    ):
        list(stranger.list_repositories(parent=PARENT))


# ---------------------------------------------------------------------- the registry front


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def push(address: str, path: str, headers: dict[str, str]) -> str:
    """An image with an empty filesystem (its config and manifest) pushed to ``path``."""
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [],
        }
    ).encode()
    async with aiohttp.ClientSession(headers=headers) as session:
        registry = RegistryClient(address, session)
        with tempfile.TemporaryDirectory() as tmp:
            blob = Path(tmp) / "config"
            blob.write_bytes(config)
            await registry.push_blob(path, blob, sha256(config))
        return await registry.put_manifest(path, "v1", manifest, OCI_MANIFEST)


async def pull(address: str, path: str, headers: dict[str, str]) -> Any:
    async with aiohttp.ClientSession(headers=headers) as session:
        return await RegistryClient(address, session).get_manifest(path, "v1")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(token: str) -> dict[str, str]:
    raw = base64.b64encode(f"oauth2accesstoken:{token}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def test_pushes_and_pulls_need_the_repositorys_grants(owner, localcloud, issuer) -> None:
    name = make_repository(owner)
    repo = name.rsplit("/", 1)[1]
    path = f"{PROJECT}/{repo}/app"
    address = localcloud.config.registry_address
    writer_token = issuer.mint_access_token(WRITER)
    reader = f"ar-reader-{uuid.uuid4().hex[:6]}@{PROJECT}.iam.gserviceaccount.com"
    reader_token = issuer.mint_access_token(reader)

    with pytest.raises(RegistryError) as denied:
        asyncio.run(push(address, path, bearer(writer_token)))
    assert denied.value.status == 403  # its first step, a HEAD, has no body to word
    # Starting an upload, the step a push cannot skip, is refused in Google's words.
    started = requests.post(
        f"http://{address}/v2/{path}/blobs/uploads/", headers=bearer(writer_token), timeout=10
    )
    assert started.status_code == 403
    assert started.json()["errors"] == [
        {
            "code": "DENIED",
            "message": 'Permission "artifactregistry.repositories.uploadArtifacts" denied on '
            f'resource "{name}" (or it may not exist)',
        }
    ]

    grant(owner, name, "roles/artifactregistry.writer", f"serviceAccount:{WRITER}")
    digest = asyncio.run(push(address, path, basic(writer_token)))  # docker login's form
    assert digest.startswith("sha256:")

    with pytest.raises(RegistryError) as refused:
        asyncio.run(pull(address, path, bearer(reader_token)))
    assert refused.value.status == 403
    assert "artifactregistry.repositories.downloadArtifacts" in str(refused.value)
    grant(owner, name, "roles/artifactregistry.reader", f"serviceAccount:{reader}")
    assert asyncio.run(pull(address, path, bearer(reader_token)))
    # A reader cannot push.
    with pytest.raises(RegistryError, match=re.escape("uploadArtifacts")):
        asyncio.run(push(address, path, bearer(reader_token)))
    # The local user (no credentials) owns the project and keeps full access.
    assert asyncio.run(pull(address, path, {}))


def test_bad_registry_tokens_are_401(localcloud, issuer) -> None:
    address = localcloud.config.registry_address
    for headers in (bearer("ya29.forged"), basic("forged"), {"Authorization": "Basic !!"}):
        with pytest.raises(RegistryError) as refused:
            asyncio.run(pull(address, f"{PROJECT}/any/app", headers))
        assert refused.value.status == 401
        assert refused.value.codes == ["UNAUTHORIZED"]


def test_a_repository_that_does_not_exist_is_refused_naming_it(owner, localcloud, issuer) -> None:
    """Artifact Registry refuses a push to a repository its API never created, as
    ``docker push`` shows it: ``name unknown: Repository "REPO" not found``
    (https://cloud.google.com/artifact-registry/docs/transition/changes-gcp#workflow)."""
    address = localcloud.config.registry_address
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    path = f"{PROJECT}/{missing}/app"
    for method, url in (
        ("POST", f"http://{address}/v2/{path}/blobs/uploads/"),
        ("GET", f"http://{address}/v2/{path}/manifests/latest"),
    ):
        answer = requests.request(method, url, timeout=10)  # the local user: project owner
        assert answer.status_code == 404
        assert answer.json()["errors"] == [
            {"code": "NAME_UNKNOWN", "message": f'Repository "{missing}" not found'}
        ]
    with pytest.raises(RegistryError) as refused:
        asyncio.run(push(address, path, {}))
    assert refused.value.codes == ["NAME_UNKNOWN"]
    assert f'Repository "{missing}" not found' in str(refused.value)
    # Someone without the project's grants is told only that they may not push there.
    stranger = issuer.mint_access_token(f"nobody@{PROJECT}.iam.gserviceaccount.com")
    started = requests.post(
        f"http://{address}/v2/{path}/blobs/uploads/", headers=bearer(stranger), timeout=10
    )
    assert started.status_code == 403
    assert started.json()["errors"][0]["code"] == "DENIED"

    # Once Artifact Registry's API has made it, the same push goes through.
    owner.create_repository(
        request={
            "parent": PARENT,
            "repository_id": missing,
            "repository": {"format_": artifactregistry_v1.Repository.Format.DOCKER},
        }
    ).result(timeout=30)
    assert asyncio.run(push(address, path, {})).startswith("sha256:")


def test_cloud_runs_service_agent_reads_its_own_projects_repositories_only(
    owner, localcloud, issuer
) -> None:
    """The Cloud Run Service Agent reads the images of its own project by default, and
    nothing more: another project's need Artifact Registry Reader granted to it
    (https://cloud.google.com/artifact-registry/docs/integrate-cloud-run)."""
    name = make_repository(owner)
    path = f"{PROJECT}/{name.rsplit('/', 1)[1]}/app"
    address = localcloud.config.registry_address
    asyncio.run(push(address, path, {}))
    own = issuer.mint_access_token(run_agent(PROJECT))
    assert asyncio.run(pull(address, path, bearer(own)))
    with pytest.raises(RegistryError, match=re.escape("uploadArtifacts")):
        asyncio.run(push(address, path, bearer(own)))

    other = run_agent("other-project")
    with pytest.raises(RegistryError) as refused:
        asyncio.run(pull(address, path, bearer(issuer.mint_access_token(other))))
    assert refused.value.status == 403
    grant(owner, name, "roles/artifactregistry.reader", f"serviceAccount:{other}")
    assert asyncio.run(pull(address, path, bearer(issuer.mint_access_token(other))))

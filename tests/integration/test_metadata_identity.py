"""localcloud's metadata ``identity`` endpoint, as on a Google Cloud VM's metadata server.

https://cloud.google.com/compute/docs/instances/verifying-instance-identity: a GET on
``/computeMetadata/v1/instance/service-accounts/default/identity?audience=AUD`` with
``Metadata-Flavor: Google`` returns an ID token. Locally it speaks for the project's owner,
who (as with roles/owner) may invoke every Cloud Run service.
"""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import google.auth.transport.requests
import google.oauth2.id_token
import pytest
import requests
from google.api_core import exceptions
from google.cloud import run_v2

from localcloud.core.oidc import METADATA_IDENTITY_PATH, Issuer, owner_email
from localcloud.testing import pack_build, zip_dir
from orchestrator.clients import Clients, Environment

FUNCTIONS = Path(__file__).parent.parent / "functions"
PARENT = "projects/local-project/locations/us-central1"


@pytest.fixture(scope="module")
def clients(localcloud) -> Clients:
    return Clients(Environment.from_env(localcloud.env))


def identity(localcloud, params: dict | None, headers: dict | None) -> requests.Response:
    return requests.get(
        localcloud.config.http_url + METADATA_IDENTITY_PATH,
        params=params,
        headers=headers,
        timeout=10,
    )


def test_endpoint_needs_the_flavor_header_and_an_audience(localcloud):
    refused = identity(localcloud, {"audience": "http://x"}, None)
    assert refused.status_code == 403
    assert "Metadata-Flavor" in refused.text
    wrong = identity(localcloud, {"audience": "http://x"}, {"Metadata-Flavor": "Other"})
    assert wrong.status_code == 403
    missing = identity(localcloud, None, {"Metadata-Flavor": "Google"})
    assert missing.status_code == 400
    ok = identity(
        localcloud, {"audience": "http://x", "format": "full"}, {"Metadata-Flavor": "Google"}
    )
    assert ok.status_code == 200
    assert ok.headers["Metadata-Flavor"] == "Google"
    assert ok.text.count(".") == 2  # a JWT, and nothing else


def test_token_verifies_with_google_auth_and_names_the_owner(localcloud, clients):
    audience = "https://svc-abc.a.run.app"
    token = clients.id_token(audience)  # the client factory's own path to the endpoint
    claims = google.oauth2.id_token.verify_token(
        token,
        google.auth.transport.requests.Request(),
        audience=audience,
        certs_url=localcloud.config.http_url + "/oauth2/v1/certs",
    )
    assert (
        claims["email"]
        == owner_email("local-project")
        == "owner@local-project.iam.gserviceaccount.com"
    )
    assert claims["iss"] == localcloud.config.http_url
    assert claims["aud"] == audience


def call(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_owner_calls_a_private_service_and_others_still_get_403(localcloud, clients):
    bucket = clients.storage.create_bucket(f"ident-src-{uuid.uuid4().hex[:8]}")
    blob = bucket.blob("hello_http.zip")
    blob.upload_from_string(zip_dir(FUNCTIONS / "hello_http"))
    image = "us-central1-docker.pkg.dev/local-project/functions/ident-hello"
    build = pack_build(
        (bucket.name, blob.name, blob.generation), image, {"GOOGLE_FUNCTION_TARGET": "hello"}
    )
    result = clients.cloud_build.create_build(project_id="local-project", build=build).result(
        timeout=180
    )
    digest = result.results.images[0].digest
    service = clients.run_services.create_service(
        parent=PARENT,
        service=run_v2.Service(
            template=run_v2.RevisionTemplate(
                containers=[run_v2.Container(image=f"{image}@{digest}")]
            )
        ),
        service_id=f"ident-{uuid.uuid4().hex[:8]}",
    ).result(timeout=120)
    try:
        assert call(service.uri) == 401
        assert call(service.uri, clients.id_token(service.uri)) == 200
        issuer = Issuer(localcloud.config.data_dir / "oidc", localcloud.config.http_url)
        stranger = issuer.mint_id_token(
            service.uri, "someone@local-project.iam.gserviceaccount.com"
        )
        assert call(service.uri, stranger) == 403
        other_owner = issuer.mint_id_token(service.uri, owner_email("another-project"))
        assert call(service.uri, other_owner) == 403
    finally:
        with contextlib.suppress(exceptions.NotFound):
            clients.run_services.delete_service(name=service.name).result(timeout=60)

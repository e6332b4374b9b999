"""Every caller has an identity (issue 16).

- From inside a Cloud Run instance, the metadata server speaks only for the instance's
  revision's service account (the Compute Engine default one when the revision names none):
  email, access and ID tokens, ``google.auth.default()`` unchanged; another account is 404,
  as on Google Cloud (https://cloud.google.com/run/docs/container-contract#metadata-server).
- localcloud takes the instance's calls to be its account's, token or not.
- A caller on the user's machine with no credentials is the local user (the owner, or
  ``LOCALCLOUD_PRINCIPAL``).
- Tokens are verified on every call: expired, for another audience, signed by another key
  or not a token at all is UNAUTHENTICATED over gRPC (with the official client) and 401
  over HTTP, in Google's words.

``GET /localcloud/v1/whoami`` on the HTTP port says whom localcloud takes the caller to be.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from pathlib import Path

import google.auth.transport.requests
import google.oauth2.id_token
import jwt
import pytest
import requests
from google.api_core import exceptions

from localcloud import testing
from localcloud.core.identity import INVALID_CREDENTIALS
from localcloud.core.oidc import ACCESS_TOKEN_TYPE, Issuer, owner_email
from localcloud.testing import call, make_public, run_service
from localcloud.workflows.engine import project_number

PROJECT = "local-project"
OWNER = f"serviceAccount:{owner_email(PROJECT)}"
PROBE_SA = f"probe-sa@{PROJECT}.iam.gserviceaccount.com"
DEFAULT_SA = f"{project_number(PROJECT)}-compute@developer.gserviceaccount.com"
METADATA = "/computeMetadata/v1/"
WHOAMI = "/localcloud/v1/whoami"


@pytest.fixture(scope="module")
def issuer(localcloud) -> Issuer:
    """The session localcloud's own issuer (its key on disk), to mint tokens as it does."""
    return Issuer(localcloud.config.data_dir / "oidc", localcloud.config.http_url)


def deploy_probe(clients, graveyard, image: str, **template: str) -> str:
    """The identity probe, deployed public (deleted with the module); its URL."""
    service = clients.run_services.create_service(
        parent=f"projects/{PROJECT}/locations/us-central1",
        service=run_service(image, **template),
        service_id=f"probe-{uuid.uuid4().hex[:8]}",
    ).result(timeout=120)
    graveyard.append(service.name)
    make_public(clients, service.name)
    return service.uri


@pytest.fixture(scope="module")
def probe(build_image, clients, graveyard) -> str:
    """The identity probe running as a service account of its own."""
    image = build_image("identity_probe", "probe")
    return deploy_probe(clients, graveyard, image, service_account=PROBE_SA)


@pytest.fixture(scope="module")
def default_probe(build_image, clients, graveyard) -> str:
    """The identity probe with no service account of its own."""
    return deploy_probe(clients, graveyard, build_image("identity_probe", "probe"))


def ask(service: str, **params: str) -> dict:
    status, body = call(f"{service}/?{urllib.parse.urlencode(params)}")
    assert status == 200, body
    return json.loads(body)


def metadata(url: str, path: str, **query: str) -> tuple[int, str]:
    answer = ask(url, what="metadata", path=path, **{f"q.{k}": v for k, v in query.items()})
    return answer["status"], answer["body"]


def whoami(localcloud, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.get(localcloud.config.http_url + WHOAMI, headers=headers, timeout=10)


def forged(issuer: Issuer, **changes) -> str:
    """An access token as localcloud mints them, with ``changes`` to its claims/header."""
    claims = jwt.decode(issuer.mint_access_token(PROBE_SA), options={"verify_signature": False})
    header = {"kid": issuer.kid, "typ": ACCESS_TOKEN_TYPE, **changes.pop("header", {})}
    key = changes.pop("key", issuer._key)
    claims.update(changes)
    return jwt.encode(claims, key, "RS256", headers=header)


def bad_tokens(localcloud, issuer: Issuer, tmp_path: Path) -> dict[str, str]:
    stranger = Issuer(tmp_path / "other-key", localcloud.config.http_url)
    now = int(time.time())
    return {
        "expired": forged(issuer, iat=now - 7200, exp=now - 3600),
        "wrong audience": forged(issuer, aud="https://pubsub.googleapis.com/"),
        "an ID token": issuer.mint_id_token(localcloud.config.http_url, PROBE_SA),
        "signed by another key": stranger.mint_access_token(PROBE_SA),
        "another key, this kid": forged(issuer, key=stranger._key),
        "garbage": "ya29.not-a-token",
    }


# --- the local machine -----------------------------------------------------------------


def test_a_caller_without_credentials_on_this_machine_is_the_local_user(localcloud):
    response = whoami(localcloud)
    assert response.status_code == 200
    assert response.json() == {"member": OWNER, "via": "local user"}


def test_the_metadata_server_speaks_for_the_local_user_on_this_machine(localcloud):
    base = localcloud.config.http_url + METADATA + "instance/service-accounts/default/"
    flavor = {"Metadata-Flavor": "Google"}
    email = requests.get(base + "email", headers=flavor, timeout=10)
    assert email.status_code == 200 and email.text == owner_email(PROJECT)
    token = requests.get(base + "token", headers=flavor, timeout=10).json()
    assert token["token_type"] == "Bearer" and 3500 < token["expires_in"] <= 3599
    assert whoami(localcloud, token["access_token"]).json() == {"member": OWNER, "via": "token"}


def test_local_principal_names_someone_else(tmp_path):
    other = testing.start(
        tmp_path / "data", extra_env={"LOCALCLOUD_PRINCIPAL": "user:dev@example.com"}
    )
    try:
        response = whoami(other)
        assert response.json() == {"member": "user:dev@example.com", "via": "local user"}
        email = requests.get(
            other.config.http_url + METADATA + "instance/service-accounts/default/email",
            headers={"Metadata-Flavor": "Google"},
            timeout=10,
        )
        assert email.text == "dev@example.com"
    finally:
        assert other.stop() == 0


# --- bad tokens ------------------------------------------------------------------------


def test_bad_tokens_are_unauthenticated_over_http(localcloud, issuer, tmp_path):
    for what, token in bad_tokens(localcloud, issuer, tmp_path).items():
        response = whoami(localcloud, token)
        assert response.status_code == 401, what
        assert response.json()["error"] == {
            "code": 401,
            "message": INVALID_CREDENTIALS,
            "status": "UNAUTHENTICATED",
        }, what
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), what
    good = issuer.mint_access_token(PROBE_SA)
    assert whoami(localcloud, good).json() == {
        "member": f"serviceAccount:{PROBE_SA}",
        "via": "token",
    }


def test_bad_tokens_are_unauthenticated_over_grpc(localcloud, clients, issuer, tmp_path):
    project = f"projects/{PROJECT}"
    for what, token in bad_tokens(localcloud, issuer, tmp_path).items():
        with pytest.raises(exceptions.Unauthenticated) as refused:
            list(
                clients.publisher.list_topics(
                    request={"project": project}, metadata=[("authorization", f"Bearer {token}")]
                )
            )
        assert refused.value.message == INVALID_CREDENTIALS, what
    # No token is the local user, the owner: served. A valid one is its account, which
    # holds no grant here: authenticated, then refused by IAM (issue 16).
    list(clients.publisher.list_topics(request={"project": project}))
    good = issuer.mint_access_token(PROBE_SA)
    with pytest.raises(exceptions.PermissionDenied) as denied:
        list(
            clients.publisher.list_topics(
                request={"project": project}, metadata=[("authorization", f"Bearer {good}")]
            )
        )
    assert "pubsub.topics.list" in denied.value.message


# --- inside an instance ----------------------------------------------------------------


def test_the_metadata_server_speaks_only_for_the_instances_account(probe):
    account = "instance/service-accounts/"
    assert metadata(probe, account + "default/email") == (200, PROBE_SA)
    assert metadata(probe, account + f"{PROBE_SA}/email") == (200, PROBE_SA)
    assert metadata(probe, account) == (200, f"default/\n{PROBE_SA}/\n")
    assert metadata(probe, "project/project-id") == (200, PROJECT)
    assert metadata(probe, "project/numeric-project-id") == (200, project_number(PROJECT))
    for other in (owner_email(PROJECT), DEFAULT_SA):
        assert metadata(probe, account + f"{other}/email")[0] == 404
        assert metadata(probe, account + f"{other}/token")[0] == 404
        assert metadata(probe, account + f"{other}/identity", audience="https://x")[0] == 404
    status, body = metadata(probe, account + "default/token")
    token = json.loads(body)
    assert status == 200 and set(token) == {"access_token", "expires_in", "token_type"}
    refused = ask(probe, what="metadata", path=account + "default/email", noflavor="1")
    assert refused["status"] == 403


def test_google_auth_finds_the_instances_account_unchanged(probe, localcloud):
    found = ask(probe, what="default")
    assert found["kind"] == "google.auth.compute_engine.credentials"
    assert found["email"] == PROBE_SA and found["project"] == PROJECT
    audience = "https://svc.example.com"
    token = ask(probe, what="id_token", audience=audience)["token"]
    claims = google.oauth2.id_token.verify_token(
        token,
        google.auth.transport.requests.Request(),
        audience=audience,
        certs_url=localcloud.config.http_url + "/oauth2/v1/certs",
    )
    assert claims["email"] == PROBE_SA
    # The access token google-auth got is localcloud's, for the instance's account.
    assert whoami(localcloud, found["token"]).json()["member"] == f"serviceAccount:{PROBE_SA}"


def test_an_instances_calls_are_its_accounts_token_or_not(probe, localcloud, issuer):
    url = localcloud.config.http_url + WHOAMI
    anonymous = ask(probe, what="whoami", url=url)
    assert anonymous["status"] == 200
    assert anonymous["body"]["member"] == f"serviceAccount:{PROBE_SA}"
    assert anonymous["body"]["via"] == "instance"
    assert anonymous["body"]["revision"].startswith("projects/local-project/locations/")
    own = ask(probe, what="default")["token"]
    with_token = ask(probe, what="whoami", url=url, token=own)["body"]
    assert with_token == {"member": f"serviceAccount:{PROBE_SA}", "via": "token"}
    # A valid token for another account is that account's, wherever it comes from...
    other = issuer.mint_access_token(f"other@{PROJECT}.iam.gserviceaccount.com")
    another = ask(probe, what="whoami", url=url, token=other)["body"]
    assert another["member"] == f"serviceAccount:other@{PROJECT}.iam.gserviceaccount.com"
    # ...and a bad one is refused, never taken for the instance or the local user.
    refused = ask(probe, what="whoami", url=url, token="forged")
    assert refused["status"] == 401


def test_a_revision_without_an_account_runs_as_the_compute_default(default_probe, localcloud):
    email = metadata(default_probe, "instance/service-accounts/default/email")
    assert email == (200, DEFAULT_SA)
    seen = ask(default_probe, what="whoami", url=localcloud.config.http_url + WHOAMI)["body"]
    assert seen["member"] == f"serviceAccount:{DEFAULT_SA}"

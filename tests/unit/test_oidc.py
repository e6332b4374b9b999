"""The OIDC issuer: tokens verify here, and with google-auth exactly as Cloud Run code does."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import google.auth.transport.requests
import jwt
import pytest
from aiohttp import web
from cryptography import x509
from google.oauth2 import id_token

from localcloud.core.oidc import InvalidToken, Issuer, aiohttp_routes, subject_id

URL = "http://127.0.0.1:8085"
AUD = "https://push-target.example.run.app/events"
EMAIL = "pusher@demo-project.iam.gserviceaccount.com"


@pytest.fixture
def issuer(tmp_path: Path) -> Issuer:
    return Issuer(tmp_path / "oidc", URL)


@pytest.fixture
def server(issuer: Issuer) -> Iterator[str]:
    """The routes on a free loopback port, served from a background thread's event loop."""
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.add_routes(aiohttp_routes(issuer))
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    host, port = runner.addresses[0][:2]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


def test_mint_then_verify_has_google_shaped_claims(issuer: Issuer) -> None:
    token = issuer.mint_id_token(AUD, EMAIL)
    claims = issuer.verify(token, audience=AUD)
    assert set(claims) == {"iss", "aud", "sub", "azp", "email", "email_verified", "iat", "exp"}
    assert claims["iss"] == URL
    assert claims["aud"] == AUD
    assert claims["email"] == EMAIL
    assert claims["email_verified"] is True
    assert claims["sub"] == claims["azp"] == subject_id(EMAIL)
    assert len(claims["sub"]) == 21 and claims["sub"].isdigit()
    assert claims["exp"] - claims["iat"] == 3600
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "kid": issuer.kid, "typ": "JWT"}


def test_verify_without_audience_skips_the_audience_check(issuer: Issuer) -> None:
    assert issuer.verify(issuer.mint_id_token(AUD, EMAIL))["aud"] == AUD


def test_subject_is_stable_per_email_and_distinct_across_emails() -> None:
    assert subject_id(EMAIL) == subject_id(EMAIL.upper())
    assert subject_id(EMAIL) != subject_id("other@demo-project.iam.gserviceaccount.com")


def test_mint_rejects_empty_audience(issuer: Issuer) -> None:
    with pytest.raises(ValueError, match="audience"):
        issuer.mint_id_token("", EMAIL)


def test_wrong_audience_fails(issuer: Issuer) -> None:
    token = issuer.mint_id_token(AUD, EMAIL)
    with pytest.raises(InvalidToken, match=r"[Aa]udience"):
        issuer.verify(token, audience="https://someone-else.example")


def test_expired_token_fails(issuer: Issuer) -> None:
    token = issuer.mint_id_token(AUD, EMAIL, lifetime_seconds=-120)
    with pytest.raises(InvalidToken, match="expired"):
        issuer.verify(token, audience=AUD)


def test_expiry_within_leeway_still_verifies(issuer: Issuer) -> None:
    issuer.verify(issuer.mint_id_token(AUD, EMAIL, lifetime_seconds=-5), audience=AUD)


def test_token_minted_an_hour_ago_has_expired(
    issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_time = time.time
    monkeypatch.setattr("time.time", lambda: real_time() - 3700)
    token = issuer.mint_id_token(AUD, EMAIL)
    monkeypatch.undo()
    with pytest.raises(InvalidToken, match="expired"):
        issuer.verify(token, audience=AUD)


def test_token_from_another_issuer_fails(issuer: Issuer, tmp_path: Path) -> None:
    other = Issuer(tmp_path / "other", URL)
    assert other.kid != issuer.kid
    with pytest.raises(InvalidToken, match="key id"):
        issuer.verify(other.mint_id_token(AUD, EMAIL), audience=AUD)


def test_forged_kid_with_another_key_fails_on_signature(issuer: Issuer, tmp_path: Path) -> None:
    other = Issuer(tmp_path / "other", URL)
    claims = jwt.decode(issuer.mint_id_token(AUD, EMAIL), options={"verify_signature": False})
    forged = jwt.encode(claims, other._key, "RS256", headers={"kid": issuer.kid})
    with pytest.raises(InvalidToken, match=r"[Ss]ignature"):
        issuer.verify(forged, audience=AUD)


def test_other_issuer_url_on_same_key_fails(issuer: Issuer, tmp_path: Path) -> None:
    elsewhere = Issuer(tmp_path / "oidc", "http://localhost:9999")
    with pytest.raises(InvalidToken, match="issuer"):
        issuer.verify(elsewhere.mint_id_token(AUD, EMAIL), audience=AUD)


def test_garbage_fails_cleanly(issuer: Issuer) -> None:
    with pytest.raises(InvalidToken):
        issuer.verify("not-a-jwt", audience=AUD)


def test_key_persists_across_instances(issuer: Issuer, tmp_path: Path) -> None:
    token = issuer.mint_id_token(AUD, EMAIL)
    again = Issuer(tmp_path / "oidc", URL)
    assert again.kid == issuer.kid
    assert again.jwks() == issuer.jwks()
    assert again.pem_certs() == issuer.pem_certs()
    assert again.verify(token, audience=AUD)["email"] == EMAIL


def test_key_file_modes_and_no_temp_files(issuer: Issuer, tmp_path: Path) -> None:
    key_dir = tmp_path / "oidc"
    assert stat.S_IMODE(os.stat(key_dir / "signing-key.pem").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(key_dir).st_mode) == 0o700
    assert sorted(p.name for p in key_dir.iterdir()) == ["signing-cert.pem", "signing-key.pem"]


def test_missing_cert_is_recreated_for_the_same_key(issuer: Issuer, tmp_path: Path) -> None:
    (tmp_path / "oidc" / "signing-cert.pem").unlink()
    again = Issuer(tmp_path / "oidc", URL)
    assert again.kid == issuer.kid
    cert = x509.load_pem_x509_certificate(again.pem_certs()[again.kid].encode())
    assert cert.public_key() == issuer._key.public_key()


def test_unreadable_key_is_an_error_not_a_silent_new_key(tmp_path: Path) -> None:
    (tmp_path / "oidc").mkdir()
    (tmp_path / "oidc" / "signing-key.pem").write_text("garbage")
    with pytest.raises(ValueError, match="unreadable"):
        Issuer(tmp_path / "oidc", URL)


def test_concurrent_creation_agrees_on_one_key(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        kids = set(pool.map(lambda _: Issuer(tmp_path / "race", URL).kid, range(8)))
    assert kids == {Issuer(tmp_path / "race", URL).kid}


def test_jwks_verifies_a_token_with_pyjwk(issuer: Issuer) -> None:
    jwks = issuer.jwks()
    (entry,) = jwks["keys"]
    assert set(entry) == {"kty", "alg", "use", "kid", "n", "e"}
    assert entry["kty"] == "RSA" and entry["alg"] == "RS256" and entry["use"] == "sig"
    assert entry["kid"] == issuer.kid and entry["e"] == "AQAB"
    key = jwt.PyJWK(entry)
    claims = jwt.decode(issuer.mint_id_token(AUD, EMAIL), key.key, ["RS256"], audience=AUD)
    assert claims["email"] == EMAIL


def test_pem_cert_holds_the_signing_key(issuer: Issuer) -> None:
    cert = x509.load_pem_x509_certificate(issuer.pem_certs()[issuer.kid].encode())
    claims = jwt.decode(
        issuer.mint_id_token(AUD, EMAIL), cert.public_key(), ["RS256"], audience=AUD
    )
    assert claims["aud"] == AUD


def test_openid_configuration(issuer: Issuer) -> None:
    config = issuer.openid_configuration()
    assert config["issuer"] == URL
    assert config["jwks_uri"] == URL + "/oauth2/v3/certs"
    assert config["id_token_signing_alg_values_supported"] == ["RS256"]
    assert "id_token" in config["response_types_supported"]
    assert config["subject_types_supported"] == ["public"]
    assert {"iss", "aud", "sub", "email", "email_verified"} <= set(config["claims_supported"])


@pytest.mark.parametrize("path", ["/oauth2/v1/certs", "/oauth2/v3/certs"])
def test_google_auth_verifies_like_cloud_run(issuer: Issuer, server: str, path: str) -> None:
    token = issuer.mint_id_token(AUD, EMAIL)
    request = google.auth.transport.requests.Request()
    claims = id_token.verify_token(token, request, audience=AUD, certs_url=server + path)
    assert claims["email"] == EMAIL and claims["iss"] == URL
    # google-auth raises ValueError for PEM certs but PyJWT's error for a JWKS: catch both.
    with pytest.raises((ValueError, jwt.InvalidTokenError)):
        id_token.verify_token(token, request, audience="https://nope", certs_url=server + path)


def test_pyjwk_client_fetches_the_served_jwks(issuer: Issuer, server: str) -> None:
    token = issuer.mint_id_token(AUD, EMAIL)
    key = jwt.PyJWKClient(server + "/oauth2/v3/certs").get_signing_key_from_jwt(token)
    assert jwt.decode(token, key.key, ["RS256"], audience=AUD)["sub"] == subject_id(EMAIL)


def test_served_documents_are_cacheable_json(issuer: Issuer, server: str) -> None:
    expected = {
        "/.well-known/openid-configuration": issuer.openid_configuration(),
        "/oauth2/v3/certs": issuer.jwks(),
        "/oauth2/v1/certs": issuer.pem_certs(),
    }
    for path, document in expected.items():
        with urllib.request.urlopen(server + path, timeout=5) as response:
            assert response.headers["Content-Type"].startswith("application/json")
            assert "max-age" in response.headers["Cache-Control"]
            assert json.load(response) == document

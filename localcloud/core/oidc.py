"""An OIDC issuer that mints Google-shaped ID tokens for service accounts.

Pub/Sub push, Workflows and Eventarc attach a service account's ID token to the requests
they make; a Cloud Run-like service checks it with ``google.oauth2.id_token.verify_token``.
Serving the public key in both of Google's formats (v1 PEM certificates, v3 JWKS) lets
that unchanged code verify our tokens by pointing ``certs_url`` here.

The key lives on disk so tokens stay valid across restarts and between processes that
share the directory.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import pathlib
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from localcloud.core.peers import Identity

LOG = logging.getLogger(__name__)

ALGORITHM = "RS256"
LEEWAY_SECONDS = 30  # clock skew verify() tolerates on exp and iat
CACHE_CONTROL = "public, max-age=300, must-revalidate"  # short: a wiped key dir recovers fast
_CLAIMS = ["aud", "azp", "email", "email_verified", "exp", "iat", "iss", "sub"]
ACCESS_TOKEN_TYPE = "at+jwt"  # RFC 9068's JWT access tokens
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class InvalidToken(ValueError):
    """A token failed verification; the message says which check failed."""


def subject_id(email: str) -> str:
    """A stable 21-digit numeric id for an account, shaped like Google's service account ids."""
    digest = hashlib.sha256(email.strip().lower().encode()).digest()
    return str(10**20 + int.from_bytes(digest, "big") % 10**20)


def _write_atomic(path: pathlib.Path, data: bytes, mode: int, *, clobber: bool) -> bool:
    """Write via a temp file so no reader ever sees a half-written file.

    With ``clobber=False`` the file is published with a hard link, which fails if it
    already exists: when two processes create a key at once, one wins and the other
    returns False and loads the winner's key, so both sign with the same key.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if clobber:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links on this filesystem: last writer wins
            os.replace(tmp, path)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _load_or_create_key(path: pathlib.Path) -> rsa.RSAPrivateKey:
    if not path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        if _write_atomic(path, pem, 0o600, clobber=False):
            LOG.info("created OIDC signing key %s", path)
            return key
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise ValueError(f"OIDC signing key {path} is unreadable: {exc}") from exc
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise ValueError(f"OIDC signing key {path} is not an RSA key")
    return loaded


def _load_or_create_cert(path: pathlib.Path, key: rsa.RSAPrivateKey, kid: str) -> x509.Certificate:
    """Self-signed certificate for the key; only its public key matters to verifiers."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        if cert.public_key() == key.public_key():
            return cert
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"localcloud-oidc-{kid}")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    _write_atomic(path, cert.public_bytes(serialization.Encoding.PEM), 0o644, clobber=True)
    LOG.info("created OIDC signing certificate %s", path)
    return cert


class Issuer:
    """Mints and verifies RS256 ID tokens with one persistent key, and publishes that key."""

    def __init__(self, key_dir: pathlib.Path, issuer_url: str) -> None:
        key_dir = pathlib.Path(key_dir)
        if not key_dir.exists():
            key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(key_dir, 0o700)  # mkdir's mode is masked by the umask
        self.issuer_url = issuer_url.rstrip("/")
        self._key = _load_or_create_key(key_dir / "signing-key.pem")
        self._public_key = self._key.public_key()
        jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(self._public_key, as_dict=True)
        # RFC 7638 thumbprint (hex, cut to the 40 characters of Google's kids): stable per key.
        members = json.dumps({k: jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"))
        self.kid = hashlib.sha256(members.encode()).hexdigest()[:40]
        # Exactly Google's members: PyJWT's key_ops must not sit beside use (RFC 7517 4.3).
        self._jwk = {"kty": "RSA", "alg": ALGORITHM, "use": "sig", "kid": self.kid}
        self._jwk |= {"n": jwk["n"], "e": jwk["e"]}
        cert = _load_or_create_cert(key_dir / "signing-cert.pem", self._key, self.kid)
        self._cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()

    def mint_id_token(self, audience: str, email: str, lifetime_seconds: int = 3600) -> str:
        """An ID token for ``email`` with the claims Google puts in a service account's."""
        if not audience or not email:
            raise ValueError("an ID token needs a non-empty audience and email")
        now = int(time.time())
        sub = subject_id(email)
        claims = {
            "iss": self.issuer_url,
            "aud": audience,
            "sub": sub,
            "azp": sub,
            "email": email,
            "email_verified": True,
            "iat": now,
            "exp": now + lifetime_seconds,
        }
        return jwt.encode(claims, self._key, ALGORITHM, headers={"kid": self.kid, "typ": "JWT"})

    def verify(self, token: str, audience: str | None = None) -> dict[str, Any]:
        """The claims of an ID token this issuer minted; ``InvalidToken`` says why if not.

        An access token is not an ID token: its ``typ`` tells them apart, so one cannot
        stand in for the other (as Google's cannot)."""
        claims = self._decode(token, audience, ["iss", "sub", "iat", "exp"], "ID token")
        if jwt.get_unverified_header(token).get("typ") == ACCESS_TOKEN_TYPE:
            raise InvalidToken("invalid ID token: this is an access token")
        return claims

    def _decode(
        self, token: str, audience: str | None, required: list[str], kind: str
    ) -> dict[str, Any]:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            if kid != self.kid:
                raise InvalidToken(f"invalid {kind}: key id {kid!r} is not this issuer's")
            options: jwt.types.Options = {"require": required, "verify_aud": audience is not None}
            return jwt.decode(
                token,
                self._public_key,
                [ALGORITHM],
                options,
                audience=audience,
                issuer=self.issuer_url,
                leeway=LEEWAY_SECONDS,
            )
        except jwt.InvalidTokenError as exc:
            raise InvalidToken(f"invalid {kind}: {exc}") from exc

    @property
    def access_audience(self) -> str:
        """The audience of every access token: localcloud's APIs, and nothing else."""
        return f"{self.issuer_url}/apis"

    def mint_access_token(
        self, email: str, scopes: list[str] | None = None, lifetime_seconds: int = 3599
    ) -> str:
        """An OAuth 2 access token for ``email``: a JWT (RFC 9068) localcloud verifies
        itself on every call, where Google's are opaque strings its servers look up."""
        if not email:
            raise ValueError("an access token needs an email")
        now = int(time.time())
        claims = {
            "iss": self.issuer_url,
            "aud": self.access_audience,
            "sub": subject_id(email),
            "email": email,
            "scope": " ".join(scopes or [CLOUD_PLATFORM_SCOPE]),
            "iat": now,
            "exp": now + lifetime_seconds,
        }
        headers = {"kid": self.kid, "typ": ACCESS_TOKEN_TYPE}
        return jwt.encode(claims, self._key, ALGORITHM, headers=headers)

    def verify_access(self, token: str) -> dict[str, Any]:
        """The claims of a valid access token this issuer minted for localcloud's APIs:
        signed with this key, unexpired, of the access-token type, for the APIs' audience,
        naming an account and its scopes. ``InvalidToken`` says which check failed."""
        required = ["iss", "sub", "iat", "exp", "aud", "email", "scope"]
        claims = self._decode(token, self.access_audience, required, "access token")
        if jwt.get_unverified_header(token).get("typ") != ACCESS_TOKEN_TYPE:
            raise InvalidToken("invalid access token: this is not an access token")
        return claims

    def jwks(self) -> dict[str, Any]:
        """The key as a JWK Set, like https://www.googleapis.com/oauth2/v3/certs."""
        return {"keys": [dict(self._jwk)]}

    def pem_certs(self) -> dict[str, str]:
        """``{kid: PEM certificate}``, like https://www.googleapis.com/oauth2/v1/certs."""
        return {self.kid: self._cert_pem}

    def openid_configuration(self) -> dict[str, Any]:
        """OIDC discovery document, so generic OIDC clients find the JWKS."""
        return {
            "issuer": self.issuer_url,
            "jwks_uri": f"{self.issuer_url}/oauth2/v3/certs",
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "claims_supported": list(_CLAIMS),
        }


def aiohttp_routes(issuer: Issuer) -> list[web.RouteDef]:
    """Discovery and both certificate formats, at the paths Google serves them on."""

    def serve(document: dict[str, Any]) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(_request: web.Request) -> web.Response:
            return web.json_response(document, headers={"Cache-Control": CACHE_CONTROL})

        return handler

    return [
        web.get("/.well-known/openid-configuration", serve(issuer.openid_configuration())),
        web.get("/oauth2/v3/certs", serve(issuer.jwks())),
        web.get("/oauth2/v1/certs", serve(issuer.pem_certs())),
    ]


ACCESS_LIFETIME = 3599  # seconds, as Google's metadata server answers a fresh token
OWNER_ACCOUNT_ID = "owner"
METADATA_IDENTITY_PATH = "/computeMetadata/v1/instance/service-accounts/default/identity"


def owner_email(project: str) -> str:
    """The identity the metadata endpoint speaks for: the project's owner, as a service account.

    On Google Cloud a developer's own credentials usually hold ``roles/owner``, which includes
    ``run.routes.invoke`` on every service; localcloud gives this account the same reach.
    """
    return f"{OWNER_ACCOUNT_ID}@{project}.iam.gserviceaccount.com"


# https://cloud.google.com/run/docs/container-contract#metadata-server
METADATA_ROOT = "/computeMetadata/v1/"
FLAVOR = {"Metadata-Flavor": "Google"}
ACCOUNT_PATHS = "aliases\nemail\nidentity\nscopes\ntoken\n"


class MetadataCaller(Exception):
    """The metadata server cannot tell who asks (a 403); the message says why."""


def _text(body: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=body, content_type="application/text", headers=FLAVOR)


def metadata_routes(
    issuer: Issuer, who: Callable[[web.Request], Identity], project_number: Callable[[str], str]
) -> list[web.RouteDef]:
    """The metadata server, as a Cloud Run instance sees it: it speaks only for the asker.

    ``who`` says whom a request comes from: an instance's revision's service account, or
    on the user's machine the local user (raising ``MetadataCaller`` when it cannot tell).
    As on Google Cloud: ``Metadata-Flavor: Google`` is required (403 without it), a request
    carrying ``X-Forwarded-For`` is refused (403: the metadata server is never proxied),
    ``default`` and the account's own email name the account, any other account is 404,
    ``identity`` needs an ``audience`` (400), ``token`` answers Google's JSON. The root
    answers with the flavor header, which is how google-auth's ``is_on_gce`` finds it.
    """

    async def root(_request: web.Request) -> web.Response:
        return _text("computeMetadata/\n")

    async def handle(request: web.Request) -> web.Response:
        if request.headers.get("Metadata-Flavor") != "Google":
            return _text("Missing required header: 'Metadata-Flavor: Google'\n", 403)
        if "X-Forwarded-For" in request.headers:
            return _text("Request contains an X-Forwarded-For header and was rejected\n", 403)
        try:
            caller = who(request)
        except MetadataCaller as exc:
            return _text(f"{exc}\n", 403)
        path = request.match_info["path"]
        return _answer(issuer, caller, path, request, project_number)

    return [
        web.get("/", root),
        web.route("*", METADATA_ROOT + "{path:.*}", handle),
    ]


def _answer(
    issuer: Issuer,
    caller: Identity,
    path: str,
    request: web.Request,
    project_number: Callable[[str], str],
) -> web.Response:
    if request.method not in ("GET", "POST"):  # POST: google-auth's bound-token requests
        return _text("Method not allowed\n", 405)
    number = project_number(caller.project)
    simple = {
        "": "instance/\nproject/\n",
        "project/": "numeric-project-id\nproject-id\n",
        "project/project-id": caller.project,
        "project/numeric-project-id": number,
        "instance/": "id\nregion\nservice-accounts/\n",
        "instance/region": f"projects/{number}/regions/{caller.region}",
        "instance/id": subject_id(caller.revision or caller.email),
        "instance/service-accounts/": f"default/\n{caller.email}/\n",
        "universe/universe-domain": "googleapis.com",
    }
    if path in simple:
        return _text(simple[path])
    if not path.startswith("instance/service-accounts/"):
        return _text("Not Found\n", 404)
    account, _, leaf = path.removeprefix("instance/service-accounts/").partition("/")
    if account not in ("default", caller.email):
        return _text("Not Found\n", 404)  # another account: not this instance's to speak for
    scopes = [CLOUD_PLATFORM_SCOPE]
    if leaf == "" and request.query.get("recursive") == "true":
        body: dict[str, Any] = {"aliases": ["default"], "email": caller.email, "scopes": scopes}
        return web.json_response(body, headers=FLAVOR)
    if leaf == "":
        return _text(ACCOUNT_PATHS)
    if leaf == "email":
        return _text(caller.email)
    if leaf == "aliases":
        return _text("default")
    if leaf == "scopes":
        return _text("\n".join(scopes) + "\n")
    if leaf == "token":
        asked = request.query.get("scopes", "")
        wanted = [s for s in asked.replace(",", " ").split() if s] or scopes
        token = issuer.mint_access_token(caller.email, wanted, ACCESS_LIFETIME)
        body = {"access_token": token, "expires_in": ACCESS_LIFETIME, "token_type": "Bearer"}
        return web.json_response(body, headers=FLAVOR)
    if leaf == "identity":
        audience = request.query.get("audience", "").strip()
        if not audience:
            return _text("non-empty audience parameter required\n", 400)
        return _text(issuer.mint_id_token(audience, caller.email))
    return _text("Not Found\n", 404)

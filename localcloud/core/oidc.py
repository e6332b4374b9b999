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

LOG = logging.getLogger(__name__)

ALGORITHM = "RS256"
LEEWAY_SECONDS = 30  # clock skew verify() tolerates on exp and iat
CACHE_CONTROL = "public, max-age=300, must-revalidate"  # short: a wiped key dir recovers fast
_CLAIMS = ["aud", "azp", "email", "email_verified", "exp", "iat", "iss", "sub"]


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
        """The claims of a token this issuer minted; ``InvalidToken`` says why if not."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            if kid != self.kid:
                raise InvalidToken(f"invalid ID token: key id {kid!r} is not this issuer's")
            options: jwt.types.Options = {
                "require": ["iss", "sub", "iat", "exp"],
                "verify_aud": audience is not None,
            }
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
            raise InvalidToken(f"invalid ID token: {exc}") from exc

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


OWNER_ACCOUNT_ID = "owner"
METADATA_IDENTITY_PATH = "/computeMetadata/v1/instance/service-accounts/default/identity"


def owner_email(project: str) -> str:
    """The identity the metadata endpoint speaks for: the project's owner, as a service account.

    On Google Cloud a developer's own credentials usually hold ``roles/owner``, which includes
    ``run.routes.invoke`` on every service; localcloud gives this account the same reach.
    """
    return f"{OWNER_ACCOUNT_ID}@{project}.iam.gserviceaccount.com"


def metadata_routes(issuer: Issuer, project: str) -> list[web.RouteDef]:
    """The metadata server's ``identity`` endpoint: an ID token for the project's owner.

    Like ``metadata.google.internal``: the ``Metadata-Flavor: Google`` header is required
    (403 without it), ``audience`` is required (400 without it), the token is the body as
    ``text/plain``. ``format`` and ``licenses`` are accepted and change nothing.
    """
    email = owner_email(project)

    async def identity(request: web.Request) -> web.Response:
        if request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(
                status=403,
                text="Missing required header: 'Metadata-Flavor: Google'\n",
                headers={"Metadata-Flavor": "Google"},
            )
        audience = request.query.get("audience", "").strip()
        if not audience:
            return web.Response(
                status=400,
                text="non-empty audience parameter required\n",
                headers={"Metadata-Flavor": "Google"},
            )
        token = issuer.mint_id_token(audience, email)
        return web.Response(text=token, headers={"Metadata-Flavor": "Google"})

    return [web.get(METADATA_IDENTITY_PATH, identity)]

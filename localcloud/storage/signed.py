"""Signed URLs: a capability to read or write one object without credentials.

Google's services hand these out where a client must move bytes without holding a
permission on the bucket: the Cloud Functions API's ``GenerateUploadUrl`` and
``GenerateDownloadUrl`` answer V2 signed URLs on the XML API
(``https://storage.googleapis.com/BUCKET/OBJECT?GoogleAccessId=...&Expires=...&Signature=...``,
https://cloud.google.com/storage/docs/access-control/signed-urls-v2). The signature covers
``VERB\\nContent-MD5\\nContent-Type\\nExpiration\\n/BUCKET/OBJECT``, so a PUT whose
``Content-Type`` is not the signed one is refused, as Google refuses it (403
``SignatureDoesNotMatch``); a URL past its ``Expires`` is 400 ``ExpiredToken``.

Google signs with the service account's RSA key; localcloud signs with an HMAC key of its
own, kept under the data directory, so only URLs localcloud made are honoured and they
stay valid across restarts until they expire. The request is then served as the signer
(a Google-managed service agent), not as whoever sends it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import quote, urlencode

KEY_FILE = Path("keys") / "url-signing.key"
QUERY = ("GoogleAccessId", "Expires", "Signature")


@dataclass(frozen=True)
class Refusal(Exception):
    """A signed request Cloud Storage refuses: its status, XML error code and message."""

    status: int
    code: str
    message: str

    def xml(self) -> str:
        return (
            "<?xml version='1.0' encoding='UTF-8'?><Error>"
            f"<Code>{self.code}</Code><Message>{self.message}</Message></Error>"
        )


@cache
def _key(data_dir: Path) -> bytes:
    path = data_dir / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(os.urandom(32))
    return path.read_bytes()


def _signature(data_dir: Path, verb: str, content_type: str, expires: int, resource: str) -> str:
    text = f"{verb}\n\n{content_type}\n{expires}\n{resource}"
    digest = hmac.new(_key(data_dir), text.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _resource(bucket: str, name: str) -> str:
    return f"/{bucket}/{quote(name, safe='/~')}"


def sign(
    data_dir: Path,
    base_url: str,
    *,
    verb: str,
    bucket: str,
    name: str,
    signer: str,
    seconds: int,
    content_type: str = "",
) -> str:
    """A V2-style signed URL on the XML API for ``verb`` on one object, valid ``seconds``."""
    expires = int(time.time()) + seconds
    resource = _resource(bucket, name)
    query = urlencode(
        {
            "GoogleAccessId": signer,
            "Expires": str(expires),
            "Signature": _signature(data_dir, verb, content_type, expires, resource),
        }
    )
    return f"{base_url.rstrip('/')}{resource}?{query}"


def is_signed(query: dict[str, str] | object) -> bool:
    return all(k in query for k in QUERY)  # type: ignore[operator]


def verify(
    data_dir: Path, verb: str, content_type: str, bucket: str, name: str, query: object
) -> str:
    """The signer a request's signature speaks for; ``Refusal`` when it does not hold."""
    get = query.get  # type: ignore[attr-defined]
    try:
        expires = int(get("Expires", ""))
    except ValueError:
        raise Refusal(400, "InvalidArgument", "Expires must be a number of seconds.") from None
    # HEAD is signed as GET (https://cloud.google.com/storage/docs/access-control/signed-urls-v2)
    signed_verb = "GET" if verb == "HEAD" else verb
    wanted = _signature(data_dir, signed_verb, content_type, expires, _resource(bucket, name))
    if not hmac.compare_digest(wanted, get("Signature", "")):
        raise Refusal(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. "
            f"The signed string covers {signed_verb}, Content-Type {content_type!r} and "
            f"/{bucket}/{name}: send the Content-Type the URL was made for.",
        )
    if expires < time.time():
        raise Refusal(
            400,
            "ExpiredToken",
            f"The provided token has expired. Request signature expired at: "
            f"{time.strftime('%Y-%m-%dT%H:%M:%S+00:00', time.gmtime(expires))}",
        )
    return str(get("GoogleAccessId", ""))

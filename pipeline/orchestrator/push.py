"""The ``push`` step: publish the built image under the service's own repository path.

Builds land under ``functions/staging/SERVICE``; a deployed service's images live under
``functions/SERVICE`` with a tag per deployment and ``latest``. Publishing speaks the OCI
distribution API: every blob is mounted from the staging repository (no byte is uploaded
again), then the manifest is put under each tag and the digest the registry reports is
checked against the built one, so what is deployed is exactly what was built.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from orchestrator.step import Context, Deployment, StepFailed

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


# At most this many registry calls at once: within requests' pool of 10 connections, and
# few blobs copied through memory at a time when a mount is refused.
PARALLEL_CALLS = 4


def split_image(image: str) -> tuple[str, str, str]:
    """``HOST/PATH@sha256:...`` -> (host, path, digest)."""
    name, at, digest = image.partition("@")
    if not at or not digest.startswith("sha256:"):
        raise StepFailed("PUSH_FAILED", f"image {image!r} is not pinned by digest")
    host, _, path = name.partition("/")
    return host, path, digest


class Registry:
    """The few OCI distribution calls ``push`` needs, through the client factory's session."""

    def __init__(self, ctx: Context, host: str) -> None:
        self.base = ctx.clients.registry_url(host)
        self.http = ctx.clients.http
        self.headers = ctx.clients.registry_headers()

    def _call(self, method: str, url: str, **kwargs: Any) -> Any:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        response = self.http.request(method, url, headers=headers, timeout=120, **kwargs)
        if response.status_code >= 500:
            response.raise_for_status()  # transient: the workflow retries the step
        return response

    def manifest(self, path: str, digest: str) -> tuple[bytes, str]:
        response = self._call(
            "GET",
            f"{self.base}/v2/{path}/manifests/{digest}",
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
        )
        if response.status_code != 200:
            raise StepFailed(
                "PUSH_FAILED",
                f"the built image {path}@{digest} is not in the registry "
                f"({response.status_code}: {response.text[:200]})",
            )
        body = response.content
        if "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise StepFailed(
                "PUSH_FAILED", f"the registry's manifest for {digest} does not match it"
            )
        kind = response.headers.get("Content-Type", "").split(";")[0].strip()
        return body, kind or json.loads(body).get("mediaType", MANIFEST_TYPES[0])

    def has_blob(self, path: str, digest: str) -> bool:
        return self._call("HEAD", f"{self.base}/v2/{path}/blobs/{digest}").status_code == 200

    def mount(self, path: str, digest: str, source: str) -> bool:
        """Cross-repository mount; False when the registry wants an upload instead."""
        response = self._call(
            "POST",
            f"{self.base}/v2/{path}/blobs/uploads/",
            params={"mount": digest, "from": source},
        )
        if response.status_code == 201:
            return True
        if response.status_code == 202:  # an upload session was opened instead: drop it
            location = response.headers.get("Location", "")
            if location:
                url = location if location.startswith("http") else self.base + location
                self._call("DELETE", url)
            return False
        raise StepFailed(
            "PUSH_FAILED", f"mounting {digest} into {path} failed: {response.status_code}"
        )

    def copy_blob(self, path: str, digest: str, source: str) -> None:
        """The fallback when a mount is refused: stream the blob through."""
        blob = self._call("GET", f"{self.base}/v2/{source}/blobs/{digest}")
        if blob.status_code != 200:
            raise StepFailed("PUSH_FAILED", f"blob {digest} is missing from {source}")
        start = self._call("POST", f"{self.base}/v2/{path}/blobs/uploads/")
        location = start.headers.get("Location", "")
        url = location if location.startswith("http") else self.base + location
        done = self._call(
            "PUT",
            url,
            params={"digest": digest},
            data=blob.content,
            headers={"Content-Type": "application/octet-stream"},
        )
        if done.status_code != 201:
            raise StepFailed("PUSH_FAILED", f"uploading {digest} to {path} failed")

    def put_manifest(self, path: str, tag: str, body: bytes, kind: str) -> str:
        response = self._call(
            "PUT",
            f"{self.base}/v2/{path}/manifests/{tag}",
            data=body,
            headers={"Content-Type": kind},
        )
        if response.status_code not in (200, 201):
            raise StepFailed(
                "PUSH_FAILED",
                f"the registry refused the manifest for {path}:{tag}: "
                f"{response.status_code} {response.text[:200]}",
            )
        return response.headers.get("Docker-Content-Digest", "")


def _blobs(manifest: dict[str, Any]) -> list[str]:
    if "manifests" in manifest:  # an index: every platform's manifest would need copying
        raise StepFailed("PUSH_FAILED", "multi-platform image indexes are not supported")
    return [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]


def publish(
    registry: Registry, source: str, digest: str, target: str, tags: list[str]
) -> dict[str, int]:
    """Put image ``source@digest`` under ``target:tag`` for each tag, blobs mounted, not
    uploaded; how many blobs were mounted, already present or copied."""
    body, kind = registry.manifest(source, digest)

    def place(blob: str) -> str:
        if registry.has_blob(target, blob):
            return "present"
        if registry.mount(target, blob, source):
            return "mounted"
        registry.copy_blob(target, blob, source)
        return "copied"

    def tag(name: str) -> None:
        reported = registry.put_manifest(target, name, body, kind)
        if reported and reported != digest:
            raise StepFailed(
                "PUSH_FAILED",
                f"the registry stored {target}:{name} as {reported}, not the built {digest}",
            )

    # The blobs are independent of each other, and so are the tags once every blob is in
    # place (the registry refuses a manifest naming a missing one): each group at once,
    # as `docker push` uploads layers in parallel. A failure is raised as it came.
    blobs = list(dict.fromkeys(_blobs(json.loads(body))))  # a layer may be listed twice
    with ThreadPoolExecutor(min(max(len(blobs), len(tags), 1), PARALLEL_CALLS)) as pool:
        placed = list(pool.map(place, blobs))
        list(pool.map(tag, tags))
    counts = {"mounted": 0, "present": 0, "copied": 0}
    for how in placed:
        counts[how] += 1
    return counts


def skip(ctx: Context, deployment: Deployment) -> dict[str, Any] | None:
    """The result of a push this deployment does not need (``api: functions``), else None."""
    if deployment.manifest.api != "functions":
        return None
    from orchestrator import functions_api

    return functions_api.push(ctx, deployment)


def work(ctx: Context, deployment: Deployment) -> dict[str, Any]:
    host, source, digest = split_image(deployment.output("build", "image"))
    target_image = ctx.settings.image(deployment.service)
    tags = [deployment.deployment_id, "latest"]
    counts = publish(Registry(ctx, host), source, digest, target_image.partition("/")[2], tags)
    return {"image": f"{target_image}@{digest}", "digest": digest, "tags": tags, **counts}

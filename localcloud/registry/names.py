"""Artifact Registry image references: ``LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE``.

localcloud keeps Google's image names so that what a user deploys locally is what they
would deploy to Google Cloud; the local registry stores the image under
``PROJECT/REPOSITORY/IMAGE``. References are parsed part by part and each part is checked
against the rule Google (or the OCI distribution spec) gives for it, so a typo is reported
as "the project id 'My_Project' is not valid" rather than as a 404 from the registry later.

Rules used:

- host: ``LOCATION-docker.pkg.dev``; LOCATION is a region (``us-central1``,
  ``europe-west4``) or a multi-region (``us``, ``europe``, ``asia``).
  https://cloud.google.com/artifact-registry/docs/docker/names
- project: 6-30 characters, lowercase letters, digits and hyphens, starting with a
  letter and not ending with a hyphen (``local-project`` satisfies this).
  https://cloud.google.com/resource-manager/docs/creating-managing-projects
- repository: lowercase letters, digits and hyphens, starting with a letter, ending
  with a letter or digit, at most 63 characters.
- image: ``/``-separated components, each ``[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*``.
  https://github.com/opencontainers/distribution-spec/blob/main/spec.md#pulling-manifests
- tag: ``[A-Za-z0-9_][A-Za-z0-9._-]{0,127}``; digest: ``sha256:`` and 64 lowercase hex.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace

LOG = logging.getLogger(__name__)

HOST_SUFFIX = "-docker.pkg.dev"
ACCEPTED_SHAPE = "LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE[:TAG][@sha256:DIGEST]"
MULTI_REGIONS = frozenset({"us", "europe", "asia"})

REGION_RE = re.compile(r"[a-z]+-[a-z]+[0-9]+")
PROJECT_RE = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
REPOSITORY_RE = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
# One path component of a repository name, from the OCI distribution spec.
COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
# A whole repository name (``<name>`` in ``/v2/<name>/...``), from the same spec.
REPOSITORY_PATH_RE = re.compile(
    r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*"
)
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")
# The distribution registry refuses longer repository names (NAME_INVALID).
MAX_PATH_LENGTH = 255


class ImageNameError(ValueError):
    """An image reference is malformed; the message names the offending part."""


def check_digest(digest: str) -> str:
    """The digest unchanged if it is ``sha256:<64 lowercase hex>``; ImageNameError if not.

    Only sha256 is accepted: it is what every registry and builder produces, and it is
    the algorithm this package verifies content with.
    """
    if not isinstance(digest, str) or DIGEST_RE.fullmatch(digest) is None:
        raise ImageNameError(
            f"digest {digest!r} is not valid: expected sha256: and 64 lowercase hex digits"
        )
    return digest


def check_tag(tag: str) -> str:
    """The tag unchanged if it matches the OCI tag rule; ImageNameError if not."""
    if not isinstance(tag, str) or TAG_RE.fullmatch(tag) is None:
        raise ImageNameError(
            f"tag {tag!r} is not valid: 1-128 characters of letters, digits, '_', '.', '-', "
            "not starting with '.' or '-'"
        )
    return tag


def check_repository_path(path: str) -> str:
    """The registry repository name unchanged if the OCI spec allows it; ImageNameError if not.

    Used by the registry client so that a name can never smuggle ``..`` or a query
    string into a request URL.
    """
    if not isinstance(path, str) or REPOSITORY_PATH_RE.fullmatch(path) is None:
        raise ImageNameError(
            f"repository name {path!r} is not valid: '/'-separated components of lowercase "
            "letters and digits, joined by '.', '_', '__' or '-'"
        )
    if len(path) > MAX_PATH_LENGTH:
        raise ImageNameError(
            f"repository name {path[:40]!r}... is {len(path)} characters; the registry allows {MAX_PATH_LENGTH}"
        )
    return path


def _check_location(location: str, host: str) -> None:
    if location in MULTI_REGIONS or REGION_RE.fullmatch(location):
        return
    raise ImageNameError(
        f"location {location!r} in host {host!r} is not valid: expected a region such as "
        f"'us-central1' or a multi-region ({', '.join(sorted(MULTI_REGIONS))})"
    )


def _check_project(project: str) -> None:
    if PROJECT_RE.fullmatch(project) is None:
        raise ImageNameError(
            f"project id {project!r} is not valid: 6-30 lowercase letters, digits and hyphens, "
            "starting with a letter and not ending with a hyphen"
        )


def _check_repository(repository: str) -> None:
    if REPOSITORY_RE.fullmatch(repository) is None:
        raise ImageNameError(
            f"repository id {repository!r} is not valid: up to 63 lowercase letters, digits and "
            "hyphens, starting with a letter and ending with a letter or digit"
        )


def _check_image(image: str) -> None:
    if not image:
        raise ImageNameError(f"image name is missing: expected {ACCEPTED_SHAPE}")
    for component in image.split("/"):
        if COMPONENT_RE.fullmatch(component) is None:
            raise ImageNameError(
                f"image path component {component!r} of image {image!r} is not valid: lowercase "
                "letters and digits, joined by '.', '_', '__' or '-'"
            )


@dataclass(frozen=True)
class ImageRef:
    """One image in Artifact Registry, optionally pinned to a tag and/or a digest.

    Every field is validated on construction, so ``with_tag``/``with_digest`` and direct
    construction cannot produce a reference that ``parse_image`` would refuse.
    """

    host: str
    project: str
    repository: str
    image: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        if not self.host.endswith(HOST_SUFFIX):
            raise ImageNameError(
                f"host {self.host!r} is not an Artifact Registry Docker host: expected {ACCEPTED_SHAPE}"
            )
        _check_location(self.host[: -len(HOST_SUFFIX)], self.host)
        _check_project(self.project)
        _check_repository(self.repository)
        _check_image(self.image)
        if self.tag is not None:
            check_tag(self.tag)
        if self.digest is not None:
            check_digest(self.digest)
        if len(self.path) > MAX_PATH_LENGTH:
            raise ImageNameError(
                f"image path {self.path!r} is {len(self.path)} characters; the registry allows "
                f"{MAX_PATH_LENGTH}"
            )

    @property
    def location(self) -> str:
        """The region or multi-region: ``us-central1`` for ``us-central1-docker.pkg.dev``."""
        return self.host[: -len(HOST_SUFFIX)]

    @property
    def path(self) -> str:
        """The repository name on the local registry, as in ``/v2/<path>/manifests/...``."""
        return f"{self.project}/{self.repository}/{self.image}"

    @property
    def reference(self) -> str:
        """What to fetch the manifest by: the digest if pinned, else the tag, else ``latest``.

        A digest wins over a tag because it names immutable content, which is what Docker
        does with ``name:tag@digest``.
        """
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> ImageRef:
        return replace(self, digest=digest)

    def with_tag(self, tag: str) -> ImageRef:
        return replace(self, tag=tag)

    def __str__(self) -> str:
        text = f"{self.host}/{self.path}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_image(ref: str) -> ImageRef:
    """Parse ``LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/IMAGE[:TAG][@sha256:...]``.

    The reference is taken apart from the outside in: the digest after the single ``@``,
    the host before the first ``/``, the tag after a ``:`` in the last path component
    (a ``:`` anywhere else is an error, since these hosts never carry a port), then the
    project and repository. Each part is validated with its own rule and error message.
    """
    if not isinstance(ref, str):
        raise ImageNameError(f"image reference must be a string, not {type(ref).__name__}")
    if not ref or ref != ref.strip():
        raise ImageNameError(f"image reference {ref!r} is empty or has surrounding whitespace")
    if "://" in ref:
        raise ImageNameError(
            f"image reference {ref!r} must not have a scheme: expected {ACCEPTED_SHAPE}"
        )

    name, at, digest = ref.partition("@")
    if at:
        if "@" in digest:
            raise ImageNameError(f"image reference {ref!r} has more than one '@'")
        check_digest(digest)

    host, slash, rest = name.partition("/")
    if not slash and host.endswith(HOST_SUFFIX):
        raise ImageNameError(
            f"image reference {ref!r} must have a project, a repository and an image after the "
            f"host: expected {ACCEPTED_SHAPE}"
        )
    if not slash or not host:
        raise ImageNameError(f"image reference {ref!r} has no host: expected {ACCEPTED_SHAPE}")
    if not host.endswith(HOST_SUFFIX):
        raise ImageNameError(
            f"host {host!r} is not an Artifact Registry Docker host: expected {ACCEPTED_SHAPE} "
            "(gcr.io, docker.io and other registries are not served by localcloud)"
        )

    last_slash = rest.rfind("/")
    colon = rest.find(":")
    tag: str | None = None
    if colon != -1:
        if colon < last_slash:
            raise ImageNameError(
                f"image reference {ref!r} has ':' inside its path {rest[:last_slash]!r}; a tag "
                "may only follow the image name"
            )
        rest, tag = rest[:colon], rest[colon + 1 :]
        check_tag(tag)

    parts = rest.split("/", 2)
    if len(parts) < 3 or not all(parts):
        raise ImageNameError(
            f"image reference {ref!r} must have a project, a repository and an image after the "
            f"host: expected {ACCEPTED_SHAPE}"
        )
    project, repository, image = parts
    return ImageRef(
        host=host,
        project=project,
        repository=repository,
        image=image,
        tag=tag,
        digest=digest if at else None,
    )

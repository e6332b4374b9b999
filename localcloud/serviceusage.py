"""Service Usage (``serviceusage.googleapis.com/v1``): is an API enabled for a project?

``gcloud functions deploy`` asks ``services.get`` for ``run``, ``cloudbuild`` and
``artifactregistry`` before it deploys (``PromptToEnableApiIfDisabled``; no gcloud property
skips it), and fails when Service Usage does not answer. localcloud serves the read side
only, over HTTP/JSON as Google does
(https://cloud.google.com/service-usage/docs/reference/rest/v1/services/get and
``services:batchGet``): the APIs localcloud serves are ``ENABLED`` in every project, any
other is ``DISABLED`` (localcloud has no other, and nothing enables one: ``services.enable``
is not served). The caller needs ``serviceusage.services.get`` on the project, which
Google's basic roles hold (viewer, editor, owner: ``core/roles.json``).

A project is named by id or number (``projects/123`` in Google's examples); the answer names
it by number, as Google's does (``name: projects/123/services/run.googleapis.com``,
``parent: projects/123``).
"""

from __future__ import annotations

import logging
import re

from aiohttp import web

from localcloud.core import authz, identity, permissions
from localcloud.core.errors import GoogleError, InvalidArgument
from localcloud.core.projects import project_number
from localcloud.rest.front import error_response

LOG = logging.getLogger(__name__)
PERMISSION = "serviceusage.services.get"
# The APIs localcloud serves, with the titles Google gives them.
SERVED = {
    "artifactregistry.googleapis.com": "Artifact Registry API",
    "cloudbuild.googleapis.com": "Cloud Build API",
    "cloudfunctions.googleapis.com": "Cloud Functions API",
    "cloudresourcemanager.googleapis.com": "Cloud Resource Manager API",
    "eventarc.googleapis.com": "Eventarc API",
    "iam.googleapis.com": "Identity and Access Management (IAM) API",
    "pubsub.googleapis.com": "Cloud Pub/Sub API",
    "run.googleapis.com": "Cloud Run Admin API",
    "serviceusage.googleapis.com": "Service Usage API",
    "storage.googleapis.com": "Cloud Storage API",
    "storage-api.googleapis.com": "Google Cloud Storage JSON API",
    "workflowexecutions.googleapis.com": "Workflow Executions API",
    "workflows.googleapis.com": "Workflows API",
}
_SERVICE = re.compile(r"[a-z0-9][a-z0-9.-]*\.[a-z]+")
BATCH_LIMIT = 30  # "A single request can get a maximum of 30 services at a time."


def routes(project: str) -> list[web.RouteDef]:
    """The routes, for localcloud's HTTP app (before the REST front's catch-all);
    ``project`` is localcloud's project, the one a number names."""
    usage = _ServiceUsage(project)
    return [
        web.get(
            "/v1/{kind:projects|folders|organizations}/{consumer}/services:batchGet",
            usage.batch_get,
        ),
        web.get(
            "/v1/{kind:projects|folders|organizations}/{consumer}/services/{service}", usage.get
        ),
    ]


class _ServiceUsage:
    def __init__(self, project: str) -> None:
        self.project = project

    def _project(self, request: web.Request) -> str:
        kind, consumer = request.match_info["kind"], request.match_info["consumer"]
        if kind != "projects":
            # Folders and organizations are consumers at Google; localcloud has neither,
            # so the caller holds nothing on one.
            raise authz.denied(_member(request), PERMISSION, f"{kind}/{consumer}")
        if consumer.isdigit() and consumer == project_number(self.project):
            return self.project
        return consumer

    def _authorize(self, request: web.Request, project: str) -> None:
        if not permissions.checking():
            return
        member = _member(request)
        resource = f"projects/{project}"
        if authz.permitted(member, (PERMISSION,), resource):
            return
        error = authz.denied(member, PERMISSION, resource)
        if not permissions.audited(member, "Authorization" in request.headers):
            raise error
        LOG.warning("IAM audit: %s would be denied %s: %s", member, PERMISSION, error.message)

    async def get(self, request: web.Request) -> web.StreamResponse:
        try:
            project = self._project(request)
            self._authorize(request, project)
            return _json(_service(project, request.match_info["service"]))
        except GoogleError as exc:
            return _error(exc)

    async def batch_get(self, request: web.Request) -> web.StreamResponse:
        try:
            project = self._project(request)
            self._authorize(request, project)
            names = request.query.getall("names", [])
            if len(names) > BATCH_LIMIT:
                raise InvalidArgument(
                    f"A single request can get a maximum of {BATCH_LIMIT} services at a time; "
                    f"{len(names)} were named."
                )
            parent = f"{request.match_info['kind']}/{request.match_info['consumer']}/services/"
            services = []
            for name in names:
                if not name.startswith(parent):
                    raise InvalidArgument(
                        f"Invalid service name {name!r}: names must be of the form "
                        f"{parent}SERVICE, in the parent of the request."
                    )
                services.append(_service(project, name[len(parent) :]))
            return _json({"services": services})
        except GoogleError as exc:
            return _error(exc)


def _member(request: web.Request) -> str:
    return identity.resolve_http(request)


def _service(project: str, service: str) -> dict[str, object]:
    if not _SERVICE.fullmatch(service):
        raise InvalidArgument(
            f"Invalid service name {service!r}: expected an API's service name, such as "
            "run.googleapis.com."
        )
    parent = f"projects/{project_number(project)}"
    config: dict[str, object] = {"name": service}
    if service in SERVED:
        config["title"] = SERVED[service]
    return {
        "name": f"{parent}/services/{service}",
        "parent": parent,
        "config": config,
        "state": "ENABLED" if service in SERVED else "DISABLED",
    }


def _json(body: dict[str, object]) -> web.Response:
    return web.json_response(body)


def _error(exc: GoogleError) -> web.StreamResponse:
    """Google's JSON error, as the REST front answers (401s with their challenge)."""
    return error_response(exc)

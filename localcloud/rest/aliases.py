"""v1 paths gcloud still calls for methods localcloud serves in a later version.

gcloud reads projects through Cloud Resource Manager v1 (``projects_api``: ``gcloud projects
describe``, ``get-iam-policy``; ``gcloud functions deploy`` asks a project's number and
policy before it deploys) and Cloud Run services' IAM policies through Cloud Run v1
(``gcloud functions deploy --allow-unauthenticated``, ``gcloud run services
add-iam-policy-binding``), while localcloud serves Resource Manager v3 and Cloud Run v2, and
the client libraries carry no v1 protos. Where the v1 method takes and answers the same
messages as the later one (the ``google.iam.v1`` mixins), ``ALIASES`` adds v1's HTTP
binding to the later method, and the REST front serves it like any other binding. v1's
``projects.get`` answers another ``Project``: it is the v3 method's checked call, reshaped
(``routes``).

- Resource Manager v1 ``projects.get``, ``getIamPolicy``, ``setIamPolicy``
  (https://cloud.google.com/resource-manager/reference/rest/v1/projects);
- Cloud Run v1 ``projects.locations.services.getIamPolicy``, ``setIamPolicy``,
  ``testIamPermissions`` (https://cloud.google.com/run/docs/reference/rest/v1/projects.locations.services).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web
from google.cloud.resourcemanager_v3 import types

from localcloud.core import identity, wire
from localcloud.rest.context import RestContext
from localcloud.rest.front import error_response

SERVICE = "google.cloud.resourcemanager.v3.Projects"
PROJECT = "{project:[^/:]+}"
_RUN = "google.cloud.run.v2.Services"
_RUN_V1 = "/v1/{resource=projects/*/locations/*/services/*}"
# method -> extra HTTP bindings, in api_annotations.json's "http" shape.
ALIASES: dict[str, list[dict[str, str]]] = {
    f"{SERVICE}/GetIamPolicy": [
        {"method": "POST", "path": "/v1/{resource=projects/*}:getIamPolicy", "body": "*"}
    ],
    f"{SERVICE}/SetIamPolicy": [
        {"method": "POST", "path": "/v1/{resource=projects/*}:setIamPolicy", "body": "*"}
    ],
    f"{_RUN}/GetIamPolicy": [{"method": "GET", "path": f"{_RUN_V1}:getIamPolicy", "body": ""}],
    f"{_RUN}/SetIamPolicy": [{"method": "POST", "path": f"{_RUN_V1}:setIamPolicy", "body": "*"}],
    f"{_RUN}/TestIamPermissions": [
        {"method": "POST", "path": f"{_RUN_V1}:testIamPermissions", "body": "*"}
    ],
}


def routes(served: Iterable[wire.Bound]) -> list[web.RouteDef]:
    """v1's ``projects.get``, for localcloud's HTTP app before the REST front's catch-all;
    ``served`` are the methods the gRPC server binds (v3's GetProject answers)."""
    bound = {b.method: b for b in served}
    get = bound[f"{SERVICE}/GetProject"]

    async def get_project(request: web.Request) -> web.StreamResponse:
        message = types.GetProjectRequest(name=f"projects/{request.match_info['project']}")
        return await _call(request, get, message, _project_v1)

    return [web.get(f"/v1/projects/{PROJECT}", get_project)]


async def _call(request: web.Request, bound: wire.Bound, message: Any, shape: Any) -> web.Response:
    try:
        member = identity.resolve_http(request)
        response = await wire.call(bound, message, RestContext(request), member=member)
    except Exception as exc:
        return error_response(wire.failure(exc, bound.method))
    return web.json_response(shape(response))


def _project_v1(project: Any) -> dict[str, Any]:
    """v3's ``Project`` in v1's words: the number apart, the state as ``lifecycleState``."""
    state = types.Project.State(project.state).name
    body: dict[str, Any] = {
        "projectNumber": project.name.rsplit("/", 1)[-1],
        "projectId": project.project_id,
        "lifecycleState": state if state != "STATE_UNSPECIFIED" else "LIFECYCLE_STATE_UNSPECIFIED",
        "name": project.display_name,
    }
    if project.HasField("create_time"):
        body["createTime"] = project.create_time.ToJsonString()
    return body

"""Cloud Run's Knative-style v1 API, read side and service deletion, over the v2 state.

``gcloud run services list/describe/delete`` and ``gcloud run revisions list/describe``
speak the v1 API (https://cloud.google.com/run/docs/reference/rest), not the v2 one the
official client libraries use. These routes answer it from the same ``Controller`` the v2
servicer serves, converted on the way out, so the two APIs never disagree.

Where gcloud sends what (SDK 528, with ``api_endpoint_overrides/run = http://H:P/``):

- ``--region R`` (and every describe and delete): the regional endpoint, which gcloud makes
  by prefixing the override's host with ``R-`` (``http://R-H:P/``, as
  ``us-central1-run.googleapis.com``), then
  ``GET|DELETE /apis/serving.knative.dev/v1/namespaces/PROJECT/services[/NAME]`` and
  ``GET /apis/serving.knative.dev/v1/namespaces/PROJECT/revisions[/NAME]``
  (``labelSelector=serving.knative.dev/service = NAME`` for ``--service``,
  ``limit``/``continue`` for paging). The region is read from that host name.
- ``services list`` without ``--region``: the global endpoint,
  ``GET /v1/projects/PROJECT/locations/-/services``.

``R-127.0.0.1`` resolves nowhere, so ``orch local gcloud`` points gcloud's proxy at
localcloud's HTTP port: the request then arrives here whole, in absolute form, and the
Host names the region. (``localcloud/core/proxying.py`` serves the proxy's other traffic.)

Every request is checked as the v2 method would be: the caller (``identity.resolve_http``)
needs ``run.services.list/get/delete`` or ``run.revisions.list/get`` on the resource
(https://cloud.google.com/run/docs/reference/iam/permissions), checked before whether it
exists; errors are Google's JSON errors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf import json_format

from localcloud.core import authz, identity, permissions
from localcloud.core.errors import GoogleError, InvalidArgument, NotFound, Unauthenticated
from localcloud.core.paging import page
from localcloud.core.projects import project_number
from localcloud.run import names
from localcloud.run.autoscaler import DEFAULT_CONCURRENCY
from localcloud.run.controller import DEFAULT_TIMEOUT, LATEST, Controller

API = "serving.knative.dev/v1"
KNATIVE = "/apis/serving.knative.dev/v1/namespaces/{namespace}"
ONE_PLATFORM = "/v1/projects/{project}/locations/{location}"
LOCATION_LABEL = "cloud.googleapis.com/location"
SERVICE_LABEL = "serving.knative.dev/service"
INTERNAL = "localcloud."  # annotations localcloud keeps for itself (the template key)
# v2 enum values as v1 annotations spell them
# (https://cloud.google.com/run/docs/reference/rest/v1/namespaces.services).
INGRESS = {
    "INGRESS_TRAFFIC_ALL": "all",
    "INGRESS_TRAFFIC_INTERNAL_ONLY": "internal",
    "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER": "internal-and-cloud-load-balancing",
    "INGRESS_TRAFFIC_NONE": "none",
}
EXECUTION_ENVIRONMENT = {
    "EXECUTION_ENVIRONMENT_GEN1": "gen1",
    "EXECUTION_ENVIRONMENT_GEN2": "gen2",
}
STATUS = {  # v2 Condition.State -> v1 condition status
    "CONDITION_SUCCEEDED": "True",
    "CONDITION_FAILED": "False",
}
# What Cloud Run reports for a container that asked for none
# (https://cloud.google.com/run/docs/configuring/services/memory-limits, .../cpu).
DEFAULT_LIMITS = {"cpu": "1000m", "memory": "512Mi"}
DEFAULT_PORT = {"name": "http1", "containerPort": 8080}
REGIONAL_ONLY = (
    "{what} is served by the regional endpoints only (https://REGION-run.googleapis.com); "
    "pass --region to gcloud"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- conversion ----------------------------------------------------------------------


def _enum(message: Any, field: str) -> str:
    value = getattr(message, field)
    enum = message.DESCRIPTOR.fields_by_name[field].enum_type
    return enum.values_by_number[value].name if value in enum.values_by_number else ""


def _camel(name: str) -> str:
    """``REVISION_FAILED`` -> ``RevisionFailed``: v2 reason enums as v1 reason strings."""
    return "".join(part.capitalize() for part in name.split("_"))


def _time(stamp: Any) -> str | None:
    return stamp.ToJsonString() if stamp.seconds or stamp.nanos else None


def _pruned(value: Any) -> Any:
    """Empty fields left out, as proto3 JSON leaves them out."""
    if isinstance(value, dict):
        out = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


def _condition(cond: Any) -> dict[str, Any]:
    reason = cond.WhichOneof("reasons")
    reason_name = _enum(cond, reason) if reason else ""
    severity = _enum(cond, "severity")
    return {
        "type": cond.type_,
        "status": STATUS.get(_enum(cond, "state"), "Unknown"),
        "reason": _camel(reason_name)
        if reason_name and not reason_name.endswith("UNDEFINED")
        else "",
        "message": cond.message,
        "lastTransitionTime": _time(cond.last_transition_time),
        "severity": severity.capitalize()
        if severity and severity != "SEVERITY_UNSPECIFIED"
        else "",
    }


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _parts(name: str) -> tuple[str, str]:
    """``projects/P/locations/L/...`` -> (P, L)."""
    parts = name.split("/")
    return parts[1], parts[3]


def _containers(containers: Iterable[Any]) -> list[dict[str, Any]]:
    out = []
    for c in containers:
        env = []
        for e in c.env:
            if e.HasField("value_source"):
                ref = e.value_source.secret_key_ref
                env.append(
                    {
                        "name": e.name,
                        "valueFrom": {
                            "secretKeyRef": {"name": ref.secret, "key": ref.version or "latest"}
                        },
                    }
                )
            else:
                env.append({"name": e.name, "value": e.value})
        ports = [{"name": p.name, "containerPort": p.container_port} for p in c.ports] or [
            dict(DEFAULT_PORT)
        ]
        out.append(
            {
                "name": c.name,
                "image": c.image,
                "command": list(c.command),
                "args": list(c.args),
                "env": env,
                "resources": {"limits": dict(c.resources.limits) or dict(DEFAULT_LIMITS)},
                "ports": ports,
                "workingDir": c.working_dir,
                "volumeMounts": [
                    {"name": m.name, "mountPath": m.mount_path} for m in c.volume_mounts
                ],
            }
        )
    return out


def _scale_annotations(scaling: Any) -> dict[str, str]:
    out = {}
    if scaling.min_instance_count:
        out["autoscaling.knative.dev/minScale"] = str(scaling.min_instance_count)
    if scaling.max_instance_count:
        out["autoscaling.knative.dev/maxScale"] = str(scaling.max_instance_count)
    return out


def _default_account(project: str) -> str:
    # Cloud Run runs a revision that names none as the Compute Engine default service account
    # (https://cloud.google.com/run/docs/securing/service-identity), and reports it.
    return f"{project_number(project)}-compute@developer.gserviceaccount.com"


def service_json(svc: Any) -> dict[str, Any]:
    """A v2 ``Service`` as v1's Knative ``Service``."""
    project, region = _parts(svc.name)
    number = project_number(project)
    service_id = _short(svc.name)
    annotations = {k: v for k, v in svc.annotations.items() if not k.startswith(INTERNAL)}
    annotations.update(
        {
            "serving.knative.dev/creator": svc.creator,
            "serving.knative.dev/lastModifier": svc.last_modifier,
            "run.googleapis.com/ingress": INGRESS.get(_enum(svc, "ingress"), "all"),
            "run.googleapis.com/ingress-status": INGRESS.get(_enum(svc, "ingress"), "all"),
            "run.googleapis.com/urls": json.dumps(list(svc.urls)) if svc.urls else "",
            "run.googleapis.com/description": svc.description,
            "run.googleapis.com/client-name": svc.client,
        }
    )
    stage = _enum(svc, "launch_stage")
    if stage and stage != "LAUNCH_STAGE_UNSPECIFIED":
        annotations["run.googleapis.com/launch-stage"] = stage
    if svc.invoker_iam_disabled:
        annotations["run.googleapis.com/invoker-iam-disabled"] = "true"
    t = svc.template
    template_annotations = {k: v for k, v in t.annotations.items() if not k.startswith(INTERNAL)}
    template_annotations.update(_scale_annotations(t.scaling))
    environment = EXECUTION_ENVIRONMENT.get(_enum(t, "execution_environment"))
    if environment:
        template_annotations["run.googleapis.com/execution-environment"] = environment
    spec_traffic = [
        {"percent": target.percent, "tag": target.tag, "latestRevision": True}
        if (target.type_ or LATEST) == LATEST
        else {"percent": target.percent, "tag": target.tag, "revisionName": target.revision}
        for target in svc.traffic
    ]
    status_traffic = [
        {
            "revisionName": status.revision,
            "percent": status.percent,
            "tag": status.tag,
            "url": status.uri,
            "latestRevision": (status.type_ or LATEST) == LATEST or None,
        }
        for status in svc.traffic_statuses
    ]
    conditions = []
    if svc.HasField("terminal_condition"):
        conditions.append(_condition(svc.terminal_condition))
    conditions += [_condition(c) for c in svc.conditions if c.type_ != "Ready"]
    body = {
        "apiVersion": API,
        "kind": "Service",
        "metadata": {
            "name": service_id,
            "namespace": number,
            "selfLink": f"/apis/serving.knative.dev/v1/namespaces/{number}/services/{service_id}",
            "uid": svc.uid,
            "resourceVersion": svc.etag,
            "generation": svc.generation,
            "creationTimestamp": _time(svc.create_time),
            "labels": {**svc.labels, LOCATION_LABEL: region},
            "annotations": annotations,
        },
        "spec": {
            "template": {
                "metadata": {
                    "name": t.revision,
                    "labels": dict(t.labels),
                    "annotations": template_annotations,
                },
                "spec": {
                    "containerConcurrency": t.max_instance_request_concurrency
                    or DEFAULT_CONCURRENCY,
                    "timeoutSeconds": t.timeout.seconds or DEFAULT_TIMEOUT,
                    "serviceAccountName": t.service_account or _default_account(project),
                    "containers": _containers(t.containers),
                },
            },
            "traffic": spec_traffic,
        },
        "status": {
            "observedGeneration": svc.observed_generation,
            "conditions": conditions,
            "latestReadyRevisionName": _short(svc.latest_ready_revision)
            if svc.latest_ready_revision
            else "",
            "latestCreatedRevisionName": _short(svc.latest_created_revision)
            if svc.latest_created_revision
            else "",
            "traffic": status_traffic,
            "url": svc.uri,
            "address": {"url": svc.uri},
        },
    }
    return _pruned(body)


def revision_json(rev: Any, svc: Any | None) -> dict[str, Any]:
    """A v2 ``Revision`` as v1's Knative ``Revision``; ``svc`` (its service, when it still
    exists) says whether it serves traffic (the ``Active`` condition)."""
    project, region = _parts(rev.name)
    number = project_number(project)
    rev_id = _short(rev.name)
    service_id = _short(rev.service)
    labels = {
        **rev.labels,
        SERVICE_LABEL: service_id,
        "serving.knative.dev/configuration": service_id,
        "serving.knative.dev/configurationGeneration": str(rev.generation),
        LOCATION_LABEL: region,
    }
    annotations = {k: v for k, v in rev.annotations.items() if not k.startswith(INTERNAL)}
    annotations.update(_scale_annotations(rev.scaling))
    annotations["serving.knative.dev/creator"] = rev.creator or (svc.creator if svc else "")
    environment = EXECUTION_ENVIRONMENT.get(_enum(rev, "execution_environment"))
    if environment:
        annotations["run.googleapis.com/execution-environment"] = environment
    conditions = [_condition(c) for c in rev.conditions]
    serving = svc is not None and any(
        t.revision == rev_id and t.percent > 0 for t in svc.traffic_statuses
    )
    if svc is not None:
        labels["serving.knative.dev/serviceUid"] = svc.uid
        if serving:
            labels["serving.knative.dev/route"] = service_id
    # Knative's Active condition: whether the revision is routed traffic
    # (https://github.com/knative/serving/blob/main/docs/spec/spec.md, RevisionStatus).
    conditions.append(
        {"type": "Active", "status": "True" if serving else "False"}
        | ({} if serving else {"reason": "Reserve", "severity": "Info"})
    )
    containers = _containers(rev.containers)
    body = {
        "apiVersion": API,
        "kind": "Revision",
        "metadata": {
            "name": rev_id,
            "namespace": number,
            "selfLink": f"/apis/serving.knative.dev/v1/namespaces/{number}/revisions/{rev_id}",
            "uid": rev.uid,
            "resourceVersion": rev.etag,
            "generation": 1,
            "creationTimestamp": _time(rev.create_time),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [
                {
                    "kind": "Configuration",
                    "name": service_id,
                    "uid": svc.uid if svc is not None else "",
                    "apiVersion": API,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "containerConcurrency": rev.max_instance_request_concurrency or DEFAULT_CONCURRENCY,
            "timeoutSeconds": rev.timeout.seconds or DEFAULT_TIMEOUT,
            "serviceAccountName": rev.service_account or _default_account(project),
            "containers": containers,
        },
        "status": {
            "observedGeneration": 1 if rev.observed_generation else 0,
            "conditions": conditions,
            "logUrl": rev.log_uri,
            "imageDigest": rev.containers[0].image if rev.containers else "",
        },
    }
    return _pruned(body)


# -- label selectors -----------------------------------------------------------------

_REQUIREMENT = re.compile(
    r"^\s*(?P<key>[A-Za-z0-9./_-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9._-]*)"
    r"|\s(?P<set>in|notin)\s*\((?P<values>[^)]*)\))?\s*$"
)


@dataclass(frozen=True)
class Requirement:
    """One requirement of a label selector: ``key`` compared by ``op`` with ``values``."""

    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str]

    def holds(self, labels: dict[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op == "exists":
            return value is not None
        if self.op == "!exists":
            return value is None
        inside = value in self.values
        return inside if self.op in ("=", "in") else not inside


def label_filter(selector: str) -> Callable[[dict[str, str]], bool]:
    """Kubernetes label selector (``a = b``, ``a != b``, ``a``, ``!a``, ``a in (b, c)``,
    ``a notin (b)``, comma-joined), as v1's ``labelSelector`` takes it."""
    requirements: list[Requirement] = []
    for raw in _split(selector):
        text = raw.strip()
        negated = text.startswith("!")
        match = _REQUIREMENT.match(text.lstrip("!"))
        if match is None or (negated and (match.group("op") or match.group("set"))):
            raise InvalidArgument(f"Invalid labelSelector {selector!r}: cannot parse {text!r}")
        key, op = match.group("key"), match.group("op")
        if match.group("set"):
            values = frozenset(v.strip() for v in match.group("values").split(","))
            requirements.append(Requirement(key, match.group("set"), values))
        elif op:
            value = frozenset({match.group("value") or ""})
            requirements.append(Requirement(key, "!=" if op == "!=" else "=", value))
        else:
            requirements.append(Requirement(key, "!exists" if negated else "exists", frozenset()))
    return lambda labels: all(r.holds(labels) for r in requirements)


def _split(selector: str) -> list[str]:
    """Split on the commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


# -- the routes ------------------------------------------------------------------------


def json_error(error: GoogleError) -> web.Response:
    """Google's JSON error (https://cloud.google.com/apis/design/errors#http_mapping)."""
    if isinstance(error, Unauthenticated):
        return identity.http_error(error)
    status = error.to_proto()
    body: dict[str, Any] = {
        "code": error.http_status,
        "message": error.message,
        "status": error.status_name,
    }
    if status.details:
        body["details"] = [json_format.MessageToDict(d) for d in status.details]
    return web.json_response({"error": body}, status=error.http_status)


class Knative:
    """The v1 routes over one ``Controller``."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        config = controller.config
        self.hosts = {config.host, "127.0.0.1", "localhost"}

    # -- request helpers

    def region(self, request: web.Request) -> str | None:
        """The region of a regional endpoint (``REGION-HOST:PORT``), None on the global one."""
        host = request.host.rsplit(":", 1)[0] if not request.host.startswith("[") else ""
        for name in self.hosts:
            if host.endswith("-" + name):
                region = host[: -len(name) - 1]
                if re.fullmatch(r"[a-z][a-z0-9-]*[0-9]", region):
                    return region
        return None

    def project(self, namespace: str) -> str:
        """The project a namespace names: its id or its number (v1 accepts both)."""
        if not namespace.isdigit():
            return namespace
        known = {self.controller.config.project}
        known.update(n.split("/")[1] for n in self.controller.store.services)
        return next((p for p in sorted(known) if project_number(p) == namespace), namespace)

    def authorize(self, request: web.Request, permission: str, resource: str) -> None:
        if not permissions.checking():
            return
        member = request["member"]
        resource = permissions.scope(resource)
        if permission in authz.permitted(member, (permission,), resource):
            return
        if permissions.let_through(member, permission, resource, "Cloud Run v1"):
            return
        raise authz.denied(member, permission, resource)

    def parent(self, request: web.Request) -> str:
        """``projects/P/locations/L`` for the request: from the path, or from the namespace
        and the regional endpoint (``-``, every location, on the global one)."""
        info = request.match_info
        if "location" in info:
            location = info["location"]
            parent = f"projects/{self.project(info['project'])}/locations/{location}"
            if location != "-":
                names.parent(parent)
            return parent
        region = self.region(request) or "-"
        return f"projects/{self.project(info['namespace'])}/locations/{region}"

    def regional_parent(self, request: web.Request, what: str) -> str:
        parent = self.parent(request)
        if parent.endswith("/-"):
            raise InvalidArgument(REGIONAL_ONLY.format(what=what))
        return parent

    def services_in(self, parent: str) -> list[Any]:
        if not parent.endswith("/-"):
            return self.controller.list(parent)
        prefix = parent[:-1]
        return [
            s for n, s in sorted(self.controller.store.services.items()) if n.startswith(prefix)
        ]

    def revisions_in(self, parent: str) -> list[Any]:
        prefix = parent[:-1] if parent.endswith("/-") else parent + "/"
        revs = [r for n, r in self.controller.store.revisions.items() if n.startswith(prefix)]
        # Newest first, as Cloud Run lists them ("sorted by creation time, descending").
        return sorted(
            revs, key=lambda r: (r.create_time.seconds, r.create_time.nanos), reverse=True
        )

    def find_revision(self, parent: str, rev_id: str) -> Any | None:
        if not re.fullmatch(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?", rev_id):
            raise InvalidArgument(f"Invalid revision name {rev_id!r}")
        suffix = f"/revisions/{rev_id}"
        return next((r for r in self.revisions_in(parent) if r.name.endswith(suffix)), None)

    # -- handlers

    async def list_services(self, request: web.Request) -> web.StreamResponse:
        parent = self.parent(request)
        self.authorize(request, "run.services.list", parent)
        items = [service_json(s) for s in self.services_in(parent)]
        return self.listing(request, "ServiceList", items)

    async def get_service(self, request: web.Request) -> web.StreamResponse:
        name = f"{self.regional_parent(request, 'namespaces.services.get')}/services/{request.match_info['name']}"
        self.authorize(request, "run.services.get", name)
        return web.json_response(service_json(self.controller.get(name)))

    async def delete_service(self, request: web.Request) -> web.StreamResponse:
        parent = self.regional_parent(request, "namespaces.services.delete")
        name = f"{parent}/services/{request.match_info['name']}"
        self.authorize(request, "run.services.delete", name)
        svc = self.controller.get(name)
        # dryRun=All validates only (https://cloud.google.com/run/docs/reference/rest/v1/namespaces.services/delete).
        dry_run = request.query.get("dryRun", "")
        if dry_run not in ("", "All"):
            raise InvalidArgument(f"Invalid dryRun {dry_run!r}: the only value is 'All'")
        await self.controller.delete(name, "", bool(dry_run))
        return web.json_response(
            {
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": _short(name),
                    "group": "serving.knative.dev",
                    "kind": "services",
                    "uid": svc.uid,
                },
            }
        )

    async def list_revisions(self, request: web.Request) -> web.StreamResponse:
        parent = self.parent(request)
        self.authorize(request, "run.revisions.list", parent)
        items = [
            revision_json(r, self.controller.find(r.service)) for r in self.revisions_in(parent)
        ]
        return self.listing(request, "RevisionList", items)

    async def get_revision(self, request: web.Request) -> web.StreamResponse:
        parent = self.regional_parent(request, "namespaces.revisions.get")
        rev_id = request.match_info["name"]
        rev = self.find_revision(parent, rev_id)
        # Checked on the revision (inheriting its service's policy) when it exists, else on
        # the location: a caller without the permission learns nothing about what exists.
        self.authorize(request, "run.revisions.get", rev.name if rev is not None else parent)
        if rev is None:
            raise NotFound(f"Revision {rev_id} does not exist.")
        return web.json_response(revision_json(rev, self.controller.find(rev.service)))

    def listing(self, request: web.Request, kind: str, items: list[dict[str, Any]]) -> web.Response:
        selector = request.query.get("labelSelector", "")
        if selector:
            wanted = label_filter(selector)
            items = [i for i in items if wanted(i["metadata"].get("labels", {}))]
        try:
            limit = int(request.query.get("limit") or 0)
        except ValueError:
            raise InvalidArgument(
                f"Invalid limit {request.query['limit']!r}: not a number"
            ) from None
        chosen, token = page(
            items, limit, request.query.get("continue", ""), bound_to=f"{request.path}?{selector}"
        )
        body: dict[str, Any] = {
            "apiVersion": API,
            "kind": kind,
            "metadata": {"continue": token} if token else {},
            "items": list(chosen),
        }
        if kind == "ServiceList":
            body["unreachable"] = []
        return web.json_response(_pruned(body) | {"metadata": body["metadata"]})


def _guarded(handler: Handler) -> Handler:
    """Serve as the caller, and answer any GoogleError in Google's JSON shape."""

    async def serve(request: web.Request) -> web.StreamResponse:
        try:
            if permissions.checking():
                request["member"] = identity.resolve_http(request)
                permissions.audit_request(request["member"], "Authorization" in request.headers)
            return await handler(request)
        except GoogleError as exc:
            return json_error(exc)

    return serve


def routes(controller: Controller) -> list[web.RouteDef]:
    """The v1 routes, for the HTTP app of ``localcloud/server.py``."""
    k = Knative(controller)
    # A name never holds a colon: ".../services/NAME:getIamPolicy" is a custom method
    # (https://cloud.google.com/apis/design/custom_methods), left to localcloud/rest.
    name = "{name:[^/:]+}"
    table = [
        ("GET", f"{KNATIVE}/services", k.list_services),
        ("GET", f"{KNATIVE}/services/{name}", k.get_service),
        ("DELETE", f"{KNATIVE}/services/{name}", k.delete_service),
        ("GET", f"{KNATIVE}/revisions", k.list_revisions),
        ("GET", f"{KNATIVE}/revisions/{name}", k.get_revision),
        ("GET", f"{ONE_PLATFORM}/services", k.list_services),
        ("GET", f"{ONE_PLATFORM}/services/{name}", k.get_service),
        ("DELETE", f"{ONE_PLATFORM}/services/{name}", k.delete_service),
        ("GET", f"{ONE_PLATFORM}/revisions", k.list_revisions),
        ("GET", f"{ONE_PLATFORM}/revisions/{name}", k.get_revision),
    ]
    return [web.route(method, path, _guarded(handler)) for method, path, handler in table]

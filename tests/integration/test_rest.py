"""Every method over HTTP/JSON on localcloud's HTTP port, as Google's REST front ends serve it.

- Table-driven, every served method: one request to its first HTTP binding, naming
  resources that do not exist, answers exactly what the same request answers over gRPC (the
  status Google maps the code to, https://cloud.google.com/apis/design/errors#http_mapping,
  the same message), in Google's JSON error shape: the REST call takes the gRPC call's
  checked path (validation, IAM, the servicer).
- Per service, a create/get/list chain shows the JSON a user sees: camelCase keys, int64 as
  strings, bytes in base64, long-running operations as JSON with their ``@type``d response,
  paging through ``pageToken``.
- Bad requests: unknown path 404, wrong method 405, malformed JSON and unknown fields 400
  naming the problem, an oversized body 413, and the server keeps serving; a principal
  without the permission gets 403 PERMISSION_DENIED naming it, a bad token 401.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.protobuf import json_format

from localcloud import testing
from localcloud.core import wire
from localcloud.core.oidc import Issuer
from localcloud.rest.front import Front, Route
from localcloud.testing import image_name, pack_args, wait_for
from tests.integration.test_request_validation import SERVED

PROJECT = "rest-project"  # apart from every other suite's resources
LOCATION = f"projects/{PROJECT}/locations/us-central1"
FRONT = Front([wire.bind(service, None, spec, None) for service, spec in SERVED], 1 << 20)
FIRST: dict[str, Route] = {}
for _route in FRONT.routes:
    FIRST.setdefault(_route.bound.method, _route)
# https://cloud.google.com/apis/design/errors#http_mapping, written here apart from errors.py
HTTP_OF = {
    "OK": 200,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ABORTED": 409,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "DATA_LOSS": 500,
    "UNKNOWN": 500,
    "INTERNAL": 500,
    "NOT_IMPLEMENTED": 501,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
CAMEL = re.compile(r"^[@a-z][A-Za-z0-9]*$")


@pytest.fixture(scope="module")
def base(localcloud) -> str:
    return localcloud.config.http_url


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@pytest.fixture(scope="module")
def channel(localcloud) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(localcloud.config.grpc_address) as ch:
        yield ch


def _ghost(collection: str, tag: str) -> str:
    """An id of a resource that does not exist, of a shape its collection accepts."""
    if collection == "projects":
        return PROJECT
    if collection == "locations":
        return "us-central1"
    if collection == "serviceAccounts":
        return f"ghost-{tag}@{PROJECT}.iam.gserviceaccount.com"
    return f"ghost-{tag}"


def _fill(pattern: str, tag: str) -> str:
    """A variable's pattern (``projects/*/topics/*``, ``operations/**``) with ids in it."""
    parts = pattern.split("/")
    out = []
    for i, part in enumerate(parts):
        previous = parts[i - 1] if i else ""
        out.append(_ghost(previous, tag) if part in ("*", "**") else part)
    return "/".join(out)


def _values(route: Route, tag: str) -> dict[str, str]:
    """The path variables a request of ``route`` names (a bare ``{var}`` is one id)."""
    values = {}
    for match in re.finditer(r"\{([^}=]+)(?:=([^}]*))?\}", route.template.source):
        field, pattern = match.group(1), match.group(2)
        if pattern is None:
            before = route.template.source[: match.start()].rstrip("/").rsplit("/", 1)[-1]
            values[field] = _ghost(before, tag)
        else:
            values[field] = _fill(pattern, tag)
    return values


def _url(route: Route, values: dict[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        return requests.utils.quote(values[match.group(1)], safe="/@")

    return re.sub(r"\{([^}=]+)(?:=[^}]*)?\}", sub, route.template.source)


def _grpc_request(route: Route, values: dict[str, str]) -> Any:
    spec = route.bound.spec
    cls = spec.request.pb() if hasattr(spec.request, "pb") else spec.request
    message = cls()
    if route.body and route.body != "*":
        getattr(message, route.body).SetInParent()  # over REST the body field is there
    for path, value in values.items():
        *parents, last = path.split(".")
        target = message
        for part in parents:
            target = getattr(target, part)
        setattr(target, last, value)
    return message


def _grpc(channel: grpc.Channel, route: Route, request: Any) -> tuple[str, str]:
    call = channel.unary_unary(
        f"/{route.bound.method}",
        request_serializer=type(request).SerializeToString,
        response_deserializer=bytes,
    )
    try:
        call(request, timeout=20)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details()  # type: ignore[attr-defined]
    return "OK", ""


def _error(response: requests.Response) -> dict[str, Any]:
    """Google's JSON error shape, held to its rules; the ``error`` object."""
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) <= {"code", "message", "status", "details"}, error
    assert error["code"] == response.status_code
    assert HTTP_OF[error["status"]] == response.status_code or response.status_code in (405, 413)
    for detail in error.get("details", []):
        assert detail["@type"].startswith("type.googleapis.com/google.rpc."), detail
    return error


@pytest.mark.parametrize("method", sorted(FIRST), ids=lambda m: m.rsplit(".", 1)[-1])
def test_every_method_answers_over_rest_what_it_answers_over_grpc(base, session, channel, method):
    route = FIRST[method]
    rest_values = _values(route, uuid.uuid4().hex[:6])
    grpc_values = _values(route, uuid.uuid4().hex[:6])
    code, message = _grpc(channel, route, _grpc_request(route, grpc_values))
    response = session.request(
        route.http_method,
        base + _url(route, rest_values),
        data=b"{}" if route.body else None,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == HTTP_OF[code], (response.status_code, response.text, code)
    if code == "OK":
        body = response.json()
        assert isinstance(body, dict)
        assert all(CAMEL.match(key) for key in body), body
        return
    error = _error(response)
    assert error["status"] == code
    for rest_value, grpc_value in zip(rest_values.values(), grpc_values.values(), strict=True):
        message = message.replace(grpc_value, rest_value)
        message = message.replace(grpc_value.rsplit("/", 1)[-1], rest_value.rsplit("/", 1)[-1])
    assert error["message"] == message


# ------------------------------------------------------------------ what a user sees


def _ok(response: requests.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def _wait(session: requests.Session, base: str, version: str, operation: dict) -> dict:
    """Poll an operation over REST (its API's own operations path) until done."""
    for _ in range(100):
        if operation.get("done"):
            return operation
        operation = _ok(session.get(f"{base}/{version}/{operation['name']}", timeout=10))
    raise AssertionError(f"operation never finished: {operation}")


def test_pubsub_over_rest(base, session):
    topic = f"projects/{PROJECT}/topics/rest-{uuid.uuid4().hex[:8]}"
    sub = f"projects/{PROJECT}/subscriptions/rest-{uuid.uuid4().hex[:8]}"
    made = _ok(session.put(f"{base}/v1/{topic}", json={"labels": {"team": "a"}}))
    assert made == {"name": topic, "labels": {"team": "a"}, "state": "ACTIVE"}
    assert _ok(session.get(f"{base}/v1/{topic}"))["name"] == topic
    created = _ok(
        session.put(
            f"{base}/v1/{sub}",
            json={"topic": topic, "ackDeadlineSeconds": 15, "retainAckedMessages": True},
        )
    )
    assert created["ackDeadlineSeconds"] == 15
    assert created["messageRetentionDuration"] == "604800s"  # a Duration, as JSON writes it
    published = _ok(
        session.post(
            f"{base}/v1/{topic}:publish",
            json={
                "messages": [
                    {"data": base64.b64encode(b"\x00hi").decode(), "attributes": {"k": "v"}}
                ]
            },
        )
    )
    (message_id,) = published["messageIds"]
    pulled = _ok(session.post(f"{base}/v1/{sub}:pull", json={"maxMessages": 10}))
    (received,) = pulled["receivedMessages"]
    assert base64.b64decode(received["message"]["data"]) == b"\x00hi"
    assert received["message"]["attributes"] == {"k": "v"}
    assert received["message"]["messageId"] == message_id
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", received["message"]["publishTime"])
    assert (
        _ok(session.post(f"{base}/v1/{sub}:acknowledge", json={"ackIds": [received["ackId"]]}))
        == {}
    )
    patched = _ok(
        session.patch(
            f"{base}/v1/{sub}",
            json={"subscription": {"ackDeadlineSeconds": 42}, "updateMask": "ackDeadlineSeconds"},
        )
    )
    assert patched["ackDeadlineSeconds"] == 42
    policy = _ok(session.get(f"{base}/v1/{topic}:getIamPolicy"))
    assert "etag" in policy
    assert _ok(session.delete(f"{base}/v1/{sub}")) == {}
    assert _ok(session.delete(f"{base}/v1/{topic}")) == {}
    gone = session.get(f"{base}/v1/{topic}")
    assert _error(gone)["status"] == "NOT_FOUND"


def test_listing_pages_through_page_tokens(base, session):
    names = []
    for _ in range(3):
        name = f"projects/{PROJECT}/topics/page-{uuid.uuid4().hex[:8]}"
        _ok(session.put(f"{base}/v1/{name}", json={}))
        names.append(name)
    seen: list[str] = []
    token = ""
    for _ in range(20):
        query = {"pageSize": "1", **({"pageToken": token} if token else {})}
        page = _ok(session.get(f"{base}/v1/projects/{PROJECT}/topics", params=query))
        assert len(page.get("topics", [])) <= 1
        seen.extend(t["name"] for t in page.get("topics", []))
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert set(names) <= set(seen)
    assert len(seen) == len(set(seen))


def test_workflows_over_rest(base, session):
    workflow = f"rest-wf-{uuid.uuid4().hex[:6]}"
    source = "main:\n  params: [args]\n  steps:\n    - done:\n        return: ${args.n + 1}\n"
    operation = _ok(
        session.post(
            f"{base}/v1/{LOCATION}/workflows",
            params={"workflowId": workflow},
            json={"sourceContents": source},
        )
    )
    assert operation["name"].startswith(f"{LOCATION}/operations/")
    done = _wait(session, base, "v1", operation)
    assert done["response"]["@type"] == "type.googleapis.com/google.cloud.workflows.v1.Workflow"
    assert done["response"]["name"] == f"{LOCATION}/workflows/{workflow}"
    execution = _ok(
        session.post(
            f"{base}/v1/{LOCATION}/workflows/{workflow}/executions", json={"argument": '{"n": 1}'}
        )
    )
    for _ in range(100):
        execution = _ok(session.get(f"{base}/v1/{execution['name']}"))
        if execution["state"] != "ACTIVE":
            break
    assert (execution["state"], execution["result"]) == ("SUCCEEDED", "2")
    listed = _ok(
        session.get(
            f"{base}/v1/{LOCATION}/workflows/{workflow}/executions", params={"view": "FULL"}
        )
    )
    assert [e["name"] for e in listed["executions"]] == [execution["name"]]


def test_cloud_run_and_eventarc_over_rest(base, session):
    """A service (its image does not exist, so its revision fails: enough for the API),
    its revision, its IAM policy, an Eventarc trigger to it."""
    service_id = f"rest-svc-{uuid.uuid4().hex[:6]}"
    image = f"us-central1-docker.pkg.dev/{PROJECT}/functions/ghost@sha256:" + "0" * 64
    operation = _ok(
        session.post(
            f"{base}/v2/{LOCATION}/services",
            params={"serviceId": service_id},
            json={"template": {"containers": [{"image": image}]}},
        )
    )
    _wait(session, base, "v2", operation)
    service = _ok(session.get(f"{base}/v2/{LOCATION}/services/{service_id}"))
    assert service["generation"] == "1"  # int64: a JSON string
    assert service["template"]["containers"][0]["image"] == image
    revisions = _ok(session.get(f"{base}/v2/{LOCATION}/services/{service_id}/revisions"))
    revision = revisions["revisions"][0]["name"]
    assert (
        _ok(session.get(f"{base}/v2/{revision}"))["service"] == f"{LOCATION}/services/{service_id}"
    )
    assert "etag" in _ok(session.get(f"{base}/v2/{LOCATION}/services/{service_id}:getIamPolicy"))
    trigger_id = f"rest-trg-{uuid.uuid4().hex[:6]}"
    operation = _ok(
        session.post(
            f"{base}/v1/{LOCATION}/triggers",
            params={"triggerId": trigger_id},
            json={
                "eventFilters": [
                    {"attribute": "type", "value": "google.cloud.pubsub.topic.v1.messagePublished"}
                ],
                "destination": {"cloudRun": {"service": service_id, "region": "us-central1"}},
            },
        )
    )
    trigger = _wait(session, base, "v1", operation)["response"]
    assert trigger["@type"] == "type.googleapis.com/google.cloud.eventarc.v1.Trigger"
    listed = _ok(session.get(f"{base}/v1/{LOCATION}/triggers"))
    assert f"{LOCATION}/triggers/{trigger_id}" in [t["name"] for t in listed["triggers"]]
    _wait(session, base, "v1", _ok(session.delete(f"{base}/v1/{LOCATION}/triggers/{trigger_id}")))
    _wait(session, base, "v2", _ok(session.delete(f"{base}/v2/{LOCATION}/services/{service_id}")))


def test_cloud_build_over_rest_by_either_path(base, session):
    """A build whose source is missing fails (FETCH_SOURCE_FAILED); both its names work."""
    build = {
        "source": {"storageSource": {"bucket": "no-such-bucket-rest", "object": "x.zip"}},
        "steps": [
            {
                "name": "gcr.io/k8s-skaffold/pack",
                "entrypoint": "pack",
                "args": pack_args(image_name("rest", PROJECT), {"GOOGLE_FUNCTION_TARGET": "f"}),
            }
        ],
    }
    operation = _ok(session.post(f"{base}/v1/projects/{PROJECT}/builds", json=build))
    build_id = operation["metadata"]["build"]["id"]
    done = _wait(session, base, "v1", operation)
    assert done["done"] is True
    legacy = _ok(session.get(f"{base}/v1/projects/{PROJECT}/builds/{build_id}"))
    located = _ok(session.get(f"{base}/v1/projects/{PROJECT}/locations/global/builds/{build_id}"))
    assert legacy["id"] == located["id"] == build_id
    assert legacy["status"] == "FAILURE"
    listed = _ok(session.get(f"{base}/v1/projects/{PROJECT}/locations/global/builds"))
    assert build_id in [b["id"] for b in listed["builds"]]


def test_iam_and_projects_over_rest(base, session):
    account_id = f"rest-{uuid.uuid4().hex[:8]}"
    made = _ok(
        session.post(
            f"{base}/v1/projects/{PROJECT}/serviceAccounts",
            json={"accountId": account_id, "serviceAccount": {"displayName": "REST"}},
        )
    )
    assert made["email"] == f"{account_id}@{PROJECT}.iam.gserviceaccount.com"
    got = _ok(session.get(f"{base}/v1/projects/{PROJECT}/serviceAccounts/{made['email']}"))
    assert got["displayName"] == "REST"
    project = _ok(session.get(f"{base}/v3/projects/{PROJECT}"))
    assert project["projectId"] == PROJECT
    policy = _ok(session.post(f"{base}/v3/projects/{PROJECT}:getIamPolicy", json={}))
    assert any(b["role"] == "roles/owner" for b in policy.get("bindings", [])) or "etag" in policy


# ------------------------------------------------------------------ bad requests


def test_bad_requests_are_refused_in_googles_shape_and_the_server_keeps_serving(base, session):
    topics = f"{base}/v1/projects/{PROJECT}/topics"
    unknown = session.get(f"{base}/v9/nothing/here")
    assert (unknown.status_code, _error(unknown)["status"]) == (404, "NOT_FOUND")
    assert "/v9/nothing/here" in _error(unknown)["message"]
    wrong = session.delete(f"{topics}/t-x:publish")
    assert wrong.status_code == 405 and wrong.headers["Allow"] == "POST"
    _error(wrong)
    broken = session.post(f"{topics}/t-x:publish", data=b'{"messages": [', timeout=10)
    error = _error(broken)
    assert (broken.status_code, error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["message"].startswith("Invalid JSON payload received.")
    assert "line 1 column" in error["message"]
    unknown_field = session.put(f"{topics}/t-unknown", json={"labelz": {}})
    error = _error(unknown_field)
    assert error["message"] == (
        'Invalid JSON payload received. Unknown name "labelz": Cannot find field.'
    )
    bad_param = session.get(topics, params={"pageSise": "3"})
    assert 'Unknown name "pageSise"' in _error(bad_param)["message"]
    bad_value = session.get(topics, params={"pageSize": "three"})
    assert "pageSize" in _error(bad_value)["message"]
    huge = session.post(f"{topics}/t-x:publish", data=b"x" * (33 * 1024 * 1024), timeout=60)
    assert huge.status_code == 413
    assert "exceeds the limit" in _error(huge)["message"]
    validation = session.post(f"{topics}/t-x:publish", json={"messages": []})
    error = _error(validation)
    assert error["status"] == "INVALID_ARGUMENT"
    assert error["details"][0]["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    assert error["details"][0]["fieldViolations"][0]["field"] == "messages"
    assert _ok(session.get(topics, params={"alt": "json", "prettyPrint": "false"})) is not None
    proto = session.get(topics, params={"alt": "proto"})
    assert proto.headers["Content-Type"].startswith("application/x-protobuf")


@pytest.fixture(scope="module")
def issuer(localcloud) -> Issuer:
    return Issuer(localcloud.config.data_dir / "oidc", localcloud.config.http_url)


def test_a_principal_without_the_permission_is_denied_over_rest(base, session, issuer):
    token = issuer.mint_access_token("nobody@example.com")
    response = session.get(
        f"{base}/v1/projects/{PROJECT}/topics", headers={"Authorization": f"Bearer {token}"}
    )
    error = _error(response)
    assert (response.status_code, error["status"]) == (403, "PERMISSION_DENIED")
    assert "pubsub.topics.list" in error["message"]
    (info,) = error["details"]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert info["metadata"]["permission"] == "pubsub.topics.list"
    # The same token as a query parameter (access_token=, a system parameter) is the same.
    as_param = session.get(f"{base}/v1/projects/{PROJECT}/topics", params={"access_token": token})
    assert as_param.status_code == 403


def test_a_bad_token_is_unauthenticated_over_rest(base, session):
    response = session.get(
        f"{base}/v1/projects/{PROJECT}/topics", headers={"Authorization": "Bearer forged"}
    )
    assert (response.status_code, _error(response)["status"]) == (401, "UNAUTHENTICATED")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_the_apps_own_routes_still_answer(base, session):
    assert session.get(f"{base}/healthz").status_code in (200, 503)
    assert "keys" in _ok(session.get(f"{base}/oauth2/v3/certs"))


def _descendants(pid: int) -> list[str]:
    """The command lines of a process's descendants (from /proc)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            for child in (task / "children").read_text().split():
                try:
                    found.append(Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" "))
                except OSError:
                    continue
                todo.append(int(child))
    return [line.decode(errors="replace") for line in found]


def _large_source(n: int) -> str:
    """A workflow past ``workers.THRESHOLD`` (a Workflow has enums, so its JSON is
    ``json_format``'s, which the workers run)."""
    filler = f"{n}-" + "x" * 20_000
    return f'main:\n  steps:\n    - done:\n        return: "{filler}"\n'


def _create_workflow(session: requests.Session, base: str, workflow: str, body: Any) -> Any:
    return session.post(
        f"{base}/v1/{LOCATION}/workflows", params={"workflowId": workflow}, json=body
    )


def _workers_run(pid: int) -> bool:
    return any("forkserver" in line for line in _descendants(pid))


def test_large_bodies_are_transcoded_on_workers_to_the_same_json(base, session, localcloud):
    """A body past ``workers.THRESHOLD`` whose JSON ``json_format`` makes is transcoded in
    a worker process (``localcloud/rest/workers.py``): the JSON is the same as in-process,
    bad JSON gets the same error, and the first large body is never kept waiting for the
    workers to start. (Plain messages, Pub/Sub's bulk, are transcoded in-process at any
    size: ``test_large_pub_sub_bodies_round_trip``.)"""
    from google.cloud.workflows_v1.types import Workflow

    name = f"large-{uuid.uuid4().hex[:6]}"
    source = _large_source(0)
    _wait(
        session, base, "v1", _ok(_create_workflow(session, base, name, {"sourceContents": source}))
    )
    url = f"{base}/v1/{LOCATION}/workflows/{name}"
    wait_for(
        lambda: _ok(session.get(url)) and _workers_run(localcloud.process.pid),
        60,
        "REST transcoding workers to start",
        every=0.2,
    )
    printed = _ok(session.get(url))  # printed by a worker
    binary = session.get(url, params={"alt": "proto"})
    assert binary.status_code == 200
    in_process = json_format.MessageToDict(Workflow.pb().FromString(binary.content))
    assert printed == in_process
    assert printed["sourceContents"] == source and printed["state"] == "ACTIVE"
    # A large body parsed by a worker, and its workflow as sent.
    second = f"large-{uuid.uuid4().hex[:6]}"
    created = _create_workflow(session, base, second, {"sourceContents": _large_source(1)})
    _wait(session, base, "v1", _ok(created))
    got = _ok(session.get(f"{base}/v1/{LOCATION}/workflows/{second}"))
    assert got["sourceContents"] == _large_source(1)
    # A large body with an unknown field: the same 400 as a small one.
    small, large = (
        _error(
            _create_workflow(session, base, "unknown", {"sourceContents": s, "sourceContent": 1})
        )
        for s in ("x", _large_source(2))
    )
    assert large == small
    assert large["message"] == (
        "Invalid JSON payload received. Unknown name \"sourceContent\" at 'workflow': "
        "Cannot find field."
    )


def test_large_pub_sub_bodies_round_trip(base, session):
    """A publish and a pull of hundreds of messages (each body past the workers'
    threshold, transcoded in-process: ``protojson``) keep every message as sent."""
    topic = f"projects/{PROJECT}/topics/large-{uuid.uuid4().hex[:8]}"
    sub = f"projects/{PROJECT}/subscriptions/large-{uuid.uuid4().hex[:8]}"
    _ok(session.put(f"{base}/v1/{topic}", json={}))
    _ok(session.put(f"{base}/v1/{sub}", json={"topic": topic}))
    sent: dict[str, dict[str, Any]] = {}
    for n in range(3):
        messages = [
            {
                "data": base64.b64encode(f"{n}-{i}".encode() * 40).decode(),
                "attributes": {"i": str(i), "é": "ü"},
            }
            for i in range(300)
        ]
        ids = _ok(session.post(f"{base}/v1/{topic}:publish", json={"messages": messages}))
        sent.update(zip(ids["messageIds"], messages, strict=True))
    received: dict[str, dict[str, Any]] = {}
    while len(received) < len(sent):
        pulled = _ok(session.post(f"{base}/v1/{sub}:pull", json={"maxMessages": 1000}))
        for item in pulled["receivedMessages"]:
            received[item["message"]["messageId"]] = item
        _ok(
            session.post(
                f"{base}/v1/{sub}:acknowledge",
                json={"ackIds": [item["ackId"] for item in pulled["receivedMessages"]]},
            )
        )
    for message_id, item in received.items():
        message = item["message"]
        assert {k: message[k] for k in ("data", "attributes")} == sent[message_id]
        assert set(message) == {"data", "attributes", "messageId", "publishTime"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", message["publishTime"])
    bad = {"messages": [*list(sent.values())[:300], {"data": "", "atributes": {}}]}
    error = _error(session.post(f"{base}/v1/{topic}:publish", json=bad))
    assert error["message"] == (
        "Invalid JSON payload received. Unknown name \"atributes\" at 'messages[300]': "
        "Cannot find field."
    )


def test_transcoding_workers_end_with_a_killed_server(tmp_path):
    """A localcloud killed outright (SIGKILL: no shutdown runs) leaves no transcoding
    worker behind: the pool's workers hold their own queue open, so only watching the
    server lets them go."""
    instance = testing.start(tmp_path, repository=False)
    try:
        base, pid = instance.config.http_url, instance.process.pid
        with requests.Session() as s:
            created = _create_workflow(s, base, "killed", {"sourceContents": _large_source(0)})
            _wait(s, base, "v1", _ok(created))
            url = f"{base}/v1/{LOCATION}/workflows/killed"
            running = wait_for(
                lambda: _ok(s.get(url)) and _workers_run(pid),
                60,
                "REST transcoding workers to start",
                every=0.2,
            )
        pids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        forkserver = [p for p in pids if b"forkserver" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert running and forkserver
        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: not any(Path(f"/proc/{p}").exists() for p in forkserver),
            30,
            "the forkserver and its workers to end with the server",
        )
    finally:
        instance.stop()

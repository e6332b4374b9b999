"""Cloud Run's Knative-style v1 API over HTTP (what ``gcloud run`` speaks), served from the
state the v2 API serves: the JSON shape of services and revisions, the regional endpoint
reached through localcloud's HTTP port as a proxy, Google's JSON errors and IAM.

Expectations come from https://cloud.google.com/run/docs/reference/rest/v1/namespaces.services
and .../namespaces.revisions; gcloud itself is exercised in ``test_gcloud_localcloud.py``.
"""

from __future__ import annotations

import uuid

import pytest
import requests

from localcloud import testing
from localcloud.core.oidc import Issuer
from localcloud.core.projects import project_number
from localcloud.testing import run_service

PROJECT = "local-project"
PARENT = f"projects/{PROJECT}/locations/us-central1"
KNATIVE = "apis/serving.knative.dev/v1/namespaces"


@pytest.fixture(scope="module")
def image(build_image) -> str:
    return build_image("behaviours", "handle")


@pytest.fixture(scope="module")
def service(image, clients, graveyard):
    """One service (two revisions: the second takes all traffic), deployed with the v2 API."""
    result = clients.run_services.create_service(
        parent=PARENT,
        service=run_service(image, {"GREETING": "hi"}, max_instance_request_concurrency=7),
        service_id=f"v1-{uuid.uuid4().hex[:8]}",
    ).result(timeout=120)
    graveyard.append(result.name)
    result.template.containers[0].env.append({"name": "SECOND", "value": "yes"})
    return clients.run_services.update_service(service=result).result(timeout=120)


class Regional:
    """Requests to the regional endpoint ``us-central1-127.0.0.1:PORT`` through localcloud's
    HTTP port as a proxy, as gcloud sends them."""

    def __init__(self, instance: testing.Instance, region: str = "us-central1") -> None:
        port = instance.config.http_port
        self.base = f"http://{region}-127.0.0.1:{port}"
        self.proxies = {"http": instance.config.http_url}

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(f"{self.base}/{path}", proxies=self.proxies, timeout=30, **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return requests.delete(f"{self.base}/{path}", proxies=self.proxies, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def regional(localcloud) -> Regional:
    return Regional(localcloud)


def test_service_in_knative_shape(service, regional, localcloud):
    service_id = service.name.rsplit("/", 1)[-1]
    body = regional.get(f"{KNATIVE}/{PROJECT}/services/{service_id}").json()
    assert body["apiVersion"] == "serving.knative.dev/v1"
    assert body["kind"] == "Service"
    meta = body["metadata"]
    assert meta["name"] == service_id
    assert meta["namespace"] == project_number(PROJECT)
    assert meta["uid"] == service.uid
    assert meta["generation"] == 2
    assert meta["labels"]["cloud.googleapis.com/location"] == "us-central1"
    assert meta["annotations"]["run.googleapis.com/ingress"] == "all"
    assert meta["annotations"]["serving.knative.dev/creator"] == service.creator
    spec = body["spec"]["template"]["spec"]
    assert spec["containerConcurrency"] == 7
    assert spec["timeoutSeconds"] == 300
    (container,) = spec["containers"]
    assert container["image"] == service.template.containers[0].image
    assert container["env"] == [
        {"name": "GREETING", "value": "hi"},
        {"name": "SECOND", "value": "yes"},
    ]
    assert body["spec"]["traffic"] == [{"percent": 100, "latestRevision": True}]
    status = body["status"]
    assert status["observedGeneration"] == 2
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Ready": "True",
        "ConfigurationsReady": "True",
        "RoutesReady": "True",
    }
    latest = service.latest_ready_revision.rsplit("/", 1)[-1]
    assert status["latestReadyRevisionName"] == latest
    assert status["latestCreatedRevisionName"] == latest
    assert status["traffic"] == [{"revisionName": latest, "percent": 100, "latestRevision": True}]
    assert status["url"] == status["address"]["url"] == service.uri
    # The same service, named by project number and by its one-platform name.
    number = project_number(PROJECT)
    assert regional.get(f"{KNATIVE}/{number}/services/{service_id}").json() == body
    direct = requests.get(f"{localcloud.config.http_url}/v1/{service.name}", timeout=30)
    assert direct.json() == body


def test_lists_services_regional_and_global(service, regional, localcloud):
    service_id = service.name.rsplit("/", 1)[-1]
    listed = regional.get(f"{KNATIVE}/{PROJECT}/services").json()
    assert listed["kind"] == "ServiceList"
    assert service_id in [s["metadata"]["name"] for s in listed["items"]]
    everywhere = requests.get(
        f"{localcloud.config.http_url}/v1/projects/{PROJECT}/locations/-/services", timeout=30
    ).json()
    assert service_id in [s["metadata"]["name"] for s in everywhere["items"]]
    # Another region of the same project holds none of them.
    elsewhere = Regional(localcloud, "europe-west1").get(f"{KNATIVE}/{PROJECT}/services").json()
    assert service_id not in [s["metadata"]["name"] for s in elsewhere.get("items", [])]


def test_revisions_by_service_and_one_by_name(service, regional, clients):
    service_id = service.name.rsplit("/", 1)[-1]
    listed = regional.get(
        f"{KNATIVE}/{PROJECT}/revisions",
        params={"labelSelector": f"serving.knative.dev/service = {service_id}"},
    ).json()
    assert listed["kind"] == "RevisionList"
    v2 = [
        r.name.rsplit("/", 1)[-1] for r in clients.run_revisions.list_revisions(parent=service.name)
    ]
    assert [r["metadata"]["name"] for r in listed["items"]] == v2  # newest first
    assert len(v2) == 2
    newest, oldest = listed["items"]
    active = {r["metadata"]["name"]: _condition(r, "Active") for r in listed["items"]}
    assert active == {v2[0]: "True", v2[1]: "False"}
    assert newest["metadata"]["labels"]["serving.knative.dev/service"] == service_id
    assert newest["metadata"]["ownerReferences"][0]["kind"] == "Configuration"
    assert [e["name"] for e in newest["spec"]["containers"][0]["env"]] == ["GREETING", "SECOND"]
    assert [e["name"] for e in oldest["spec"]["containers"][0]["env"]] == ["GREETING"]
    one = regional.get(f"{KNATIVE}/{PROJECT}/revisions/{v2[1]}").json()
    assert one == oldest
    # Paging: limit and continue, as gcloud pages.
    first = regional.get(
        f"{KNATIVE}/{PROJECT}/revisions",
        params={"labelSelector": f"serving.knative.dev/service={service_id}", "limit": 1},
    ).json()
    assert [r["metadata"]["name"] for r in first["items"]] == v2[:1]
    rest = regional.get(
        f"{KNATIVE}/{PROJECT}/revisions",
        params={
            "labelSelector": f"serving.knative.dev/service={service_id}",
            "limit": 1,
            "continue": first["metadata"]["continue"],
        },
    ).json()
    assert [r["metadata"]["name"] for r in rest["items"]] == v2[1:]


def _condition(resource: dict, kind: str) -> str:
    return next(c["status"] for c in resource["status"]["conditions"] if c["type"] == kind)


def test_missing_resources_are_404_in_googles_shape(regional):
    answer = regional.get(f"{KNATIVE}/{PROJECT}/services/no-such-service")
    assert answer.status_code == 404
    assert answer.json() == {
        "error": {
            "code": 404,
            "status": "NOT_FOUND",
            "message": "Resource 'no-such-service' of kind 'SERVICE' in region 'us-central1' "
            f"in project '{PROJECT}' does not exist.",
        }
    }
    revision = regional.get(f"{KNATIVE}/{PROJECT}/revisions/no-such-revision")
    assert revision.status_code == 404
    assert revision.json()["error"]["status"] == "NOT_FOUND"
    deleted = regional.delete(f"{KNATIVE}/{PROJECT}/services/no-such-service")
    assert deleted.status_code == 404


def test_get_on_the_global_endpoint_is_refused(localcloud):
    """The global endpoint serves lists only (namespaces.services.get: "only when the
    endpoint is regional")."""
    answer = requests.get(
        f"{localcloud.config.http_url}/{KNATIVE}/{PROJECT}/services/anything", timeout=30
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert "regional" in answer.json()["error"]["message"]


def test_callers_without_the_permission_are_denied(service, regional, localcloud):
    issuer = Issuer(localcloud.config.data_dir / "oidc", localcloud.config.http_url)
    stranger = f"stranger-{uuid.uuid4().hex[:6]}@{PROJECT}.iam.gserviceaccount.com"
    headers = {"Authorization": f"Bearer {issuer.mint_access_token(stranger)}"}
    service_id = service.name.rsplit("/", 1)[-1]
    answer = regional.get(f"{KNATIVE}/{PROJECT}/services/{service_id}", headers=headers)
    assert answer.status_code == 403
    error = answer.json()["error"]
    assert error["status"] == "PERMISSION_DENIED"
    assert error["message"] == (
        f"Permission 'run.services.get' denied on resource '{service.name}' "
        "(or resource may not exist)."
    )
    assert error["details"][0]["reason"] == "IAM_PERMISSION_DENIED"
    # Refused before existence is known: a missing service is denied the same way.
    missing = regional.get(f"{KNATIVE}/{PROJECT}/services/no-such-service", headers=headers)
    assert missing.status_code == 403
    listed = regional.get(f"{KNATIVE}/{PROJECT}/services", headers=headers)
    assert listed.status_code == 403
    assert "run.services.list" in listed.json()["error"]["message"]
    revisions = regional.get(f"{KNATIVE}/{PROJECT}/revisions", headers=headers)
    assert "run.revisions.list" in revisions.json()["error"]["message"]
    deleted = regional.delete(f"{KNATIVE}/{PROJECT}/services/{service_id}", headers=headers)
    assert deleted.status_code == 403
    assert "run.services.delete" in deleted.json()["error"]["message"]
    bad = regional.get(
        f"{KNATIVE}/{PROJECT}/services", headers={"Authorization": "Bearer not-a-token"}
    )
    assert bad.status_code == 401
    assert bad.json()["error"]["status"] == "UNAUTHENTICATED"


def test_delete_removes_the_service_from_both_apis(image, clients, regional):
    from google.api_core import exceptions

    created = clients.run_services.create_service(
        parent=PARENT, service=run_service(image), service_id=f"v1-del-{uuid.uuid4().hex[:6]}"
    ).result(timeout=120)
    service_id = created.name.rsplit("/", 1)[-1]
    dry = regional.delete(f"{KNATIVE}/{PROJECT}/services/{service_id}", params={"dryRun": "All"})
    assert dry.status_code == 200
    assert clients.run_services.get_service(name=created.name).uid == created.uid
    answer = regional.delete(f"{KNATIVE}/{PROJECT}/services/{service_id}")
    assert answer.status_code == 200
    assert answer.json()["status"] == "Success"
    assert answer.json()["details"] == {
        "name": service_id,
        "group": "serving.knative.dev",
        "kind": "services",
        "uid": created.uid,
    }
    with pytest.raises(exceptions.NotFound):
        clients.run_services.get_service(name=created.name)
    assert regional.get(f"{KNATIVE}/{PROJECT}/services/{service_id}").status_code == 404


def test_the_proxy_reaches_localcloud_only(localcloud):
    """Through the HTTP port as a proxy: its own routes and Cloud Storage, nothing else."""
    proxies = {"http": localcloud.config.http_url}
    storage = localcloud.config.storage_port
    buckets = requests.get(
        f"http://127.0.0.1:{storage}/storage/v1/b",
        params={"project": PROJECT},
        proxies=proxies,
        timeout=30,
    )
    assert buckets.status_code == 200
    assert buckets.json()["kind"] == "storage#buckets"
    elsewhere = requests.get("http://127.0.0.1:1/", proxies=proxies, timeout=30)
    assert elsewhere.status_code == 403
    assert elsewhere.json()["error"]["status"] == "PERMISSION_DENIED"

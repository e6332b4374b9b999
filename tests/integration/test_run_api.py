"""The Cloud Run Admin API on services and revisions: updates that make a revision or not,
validate_only, allow_missing, etags, what is refused as INVALID_ARGUMENT (naming the
field), revision deletion rules, and updates or a delete while a reconcile is under way.

Expectations come from https://cloud.google.com/run/docs/reference/rpc/google.cloud.run.v2.
Services run ``tests/functions/behaviours``.
"""

from __future__ import annotations

import json
import uuid

import pytest
from google.api_core import exceptions
from google.cloud import run_v2

from localcloud.testing import call, run_service, wait_for

PARENT = "projects/local-project/locations/us-central1"


@pytest.fixture(scope="module")
def image(build_image) -> str:
    return build_image("behaviours", "handle")


def validate(clients, service: run_v2.Service) -> run_v2.Service:
    """CreateService with validate_only (nothing is created), waited for."""
    return clients.run_services.create_service(
        request={
            "parent": PARENT,
            "service": service,
            "service_id": f"bad-{uuid.uuid4().hex[:6]}",
            "validate_only": True,
        }
    ).result(timeout=30)


# -- services and revisions ----------------------------------------------------------


def test_label_only_update_makes_no_revision(image, deploy, clients):
    service = deploy(image)
    first = service.latest_ready_revision
    service.labels["team"] = "blue"
    operation = clients.run_services.update_service(service=service)
    updated = operation.result(timeout=60)
    assert updated.labels["team"] == "blue"
    assert updated.generation == service.generation + 1
    assert updated.observed_generation == updated.generation
    assert not updated.reconciling
    assert updated.latest_ready_revision == first
    assert updated.latest_created_revision == first
    revisions = [r.name for r in clients.run_revisions.list_revisions(parent=service.name)]
    assert revisions == [first]


def test_update_metadata_has_no_duplicated_traffic_statuses(image, deploy, clients):
    """The LRO's metadata is the Service being reconciled; traffic_statuses are output only
    and must not be doubled by echoing back the ones the client sent."""
    service = deploy(image)
    assert len(service.traffic_statuses) == 1
    service.labels["x"] = "y"
    operation = clients.run_services.update_service(service=service)
    first = run_v2.Service.deserialize(operation.operation.metadata.value)
    operation.result(timeout=60)
    assert len(first.traffic_statuses) <= 1, first.traffic_statuses
    assert first.reconciling and first.generation == service.generation + 1
    assert first.observed_generation == service.generation


def test_allow_missing_update_creates(image, deploy, clients):
    service_id = f"svc-{uuid.uuid4().hex[:8]}"
    service = run_service(image)
    service.name = f"{PARENT}/services/{service_id}"
    created = clients.run_services.update_service(
        request={"service": service, "allow_missing": True}
    ).result(timeout=120)
    deploy.created.append(created.name)
    assert created.name == service.name
    assert created.generation == 1
    assert created.latest_ready_revision
    with pytest.raises(exceptions.NotFound):
        missing = run_service(image)
        missing.name = f"{PARENT}/services/svc-{uuid.uuid4().hex[:8]}"
        clients.run_services.update_service(service=missing)


def test_validate_only_creates_and_changes_nothing(image, deploy, clients):
    service_id = f"svc-{uuid.uuid4().hex[:8]}"
    result = clients.run_services.create_service(
        request={
            "parent": PARENT,
            "service": run_service(image),
            "service_id": service_id,
            "validate_only": True,
        }
    ).result(timeout=30)
    assert result.name.endswith(service_id)
    with pytest.raises(exceptions.NotFound):
        clients.run_services.get_service(name=f"{PARENT}/services/{service_id}")

    service = deploy(image)
    service.template.containers[0].env.append({"name": "GREETING", "value": "changed"})
    clients.run_services.update_service(request={"service": service, "validate_only": True}).result(
        timeout=30
    )
    after = clients.run_services.get_service(name=service.name)
    assert after.generation == service.generation
    assert [r.name for r in clients.run_revisions.list_revisions(parent=service.name)] == [
        service.latest_ready_revision
    ]
    clients.run_services.delete_service(
        request={"name": service.name, "validate_only": True}
    ).result(timeout=30)
    assert clients.run_services.get_service(name=service.name).name == service.name


def test_invoker_iam_disabled_is_kept_and_returned(image, deploy, clients):
    """A service-level setting (``Service.invoker_iam_disabled``, field 21 of
    google.cloud.run.v2.Service): stored, returned by Get and List, changed by an update
    without a new revision."""
    service_id = f"svc-{uuid.uuid4().hex[:8]}"
    public = run_service(image)
    public.invoker_iam_disabled = True
    created = clients.run_services.create_service(
        parent=PARENT, service=public, service_id=service_id
    ).result(timeout=120)
    deploy.created.append(created.name)
    assert created.invoker_iam_disabled
    assert clients.run_services.get_service(name=created.name).invoker_iam_disabled
    listed = {s.name: s for s in clients.run_services.list_services(parent=PARENT)}
    assert listed[created.name].invoker_iam_disabled
    created.invoker_iam_disabled = False
    updated = clients.run_services.update_service(service=created).result(timeout=60)
    assert not updated.invoker_iam_disabled
    assert not clients.run_services.get_service(name=created.name).invoker_iam_disabled
    assert updated.latest_ready_revision == created.latest_ready_revision


def test_stale_etag_is_aborted(image, deploy, clients):
    service = deploy(image)
    service.etag = "not-the-etag"
    with pytest.raises(exceptions.Aborted):
        clients.run_services.update_service(service=service)
    with pytest.raises(exceptions.Aborted):
        clients.run_services.delete_service(request={"name": service.name, "etag": "nope"})


def test_bad_input_is_invalid_argument(image, clients):
    bad = {
        "min above max": run_service(
            image, scaling={"min_instance_count": 3, "max_instance_count": 1}
        ),
        "traffic not 100": run_v2.Service(
            template=run_service(image).template,
            traffic=[{"type_": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 50}],
        ),
        "two containers": run_v2.Service(
            template=run_v2.RevisionTemplate(
                containers=[run_v2.Container(image=image), run_v2.Container(image=image)]
            )
        ),
    }
    for what, service in bad.items():
        with pytest.raises(exceptions.InvalidArgument):
            clients.run_services.create_service(
                parent=PARENT, service=service, service_id=f"bad-{uuid.uuid4().hex[:6]}"
            )
            pytest.fail(what)
    with pytest.raises(exceptions.InvalidArgument):
        clients.run_services.get_service(name="projects/x/services/y")
    with pytest.raises(exceptions.InvalidArgument):
        clients.run_revisions.get_revision(name=f"{PARENT}/services/a/revisions/Bad_Rev")


_MISSING_REVISION = run_v2.TrafficTarget(
    type_=run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION,
    revision="nope-00001-abc",
    percent=100,
)
_UNCHECKED = {
    "negative min instances": {"scaling": {"min_instance_count": -1}},
    "negative timeout": {"timeout": {"seconds": -5}},
    "timeout over 3600 s": {"timeout": {"seconds": 7200}},
    "traffic to a missing revision": {"traffic": [_MISSING_REVISION]},
    "negative traffic percent": {
        "traffic": [
            {"type_": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 150},
            {"type_": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": -50, "tag": "neg"},
        ]
    },
}


@pytest.mark.parametrize("what", sorted(_UNCHECKED))
def test_more_bad_input_is_invalid_argument(image, clients, what):
    fields = dict(_UNCHECKED[what])
    service = run_v2.Service(
        traffic=fields.pop("traffic", []), template=run_service(image).template
    )
    for key, value in fields.items():
        setattr(service.template, key, value)
    with pytest.raises(exceptions.InvalidArgument):
        validate(clients, service)


def test_reusing_a_revision_name_is_not_internal(image, deploy, clients):
    service = deploy(image)
    taken = service.latest_ready_revision.rsplit("/", 1)[-1]
    service.template.revision = taken
    service.template.containers[0].env.append({"name": "GREETING", "value": "other"})
    with pytest.raises(exceptions.GoogleAPICallError) as failure:
        clients.run_services.update_service(service=service).result(timeout=60)
    assert not isinstance(failure.value, (exceptions.InternalServerError, exceptions.Unknown))


def test_delete_revision_rules(image, deploy, clients):
    service = deploy(image, public=True, env={"GREETING": "one"})
    first = service.latest_ready_revision
    service.template.containers[0].env[0].value = "two"
    updated = clients.run_services.update_service(service=service).result(timeout=120)
    with pytest.raises(exceptions.FailedPrecondition):
        clients.run_revisions.delete_revision(name=updated.latest_ready_revision)
    clients.run_revisions.delete_revision(request={"name": first, "validate_only": True}).result(
        timeout=30
    )
    assert clients.run_revisions.get_revision(name=first).name == first
    deleted = clients.run_revisions.delete_revision(name=first).result(timeout=30)
    assert deleted.name == first
    with pytest.raises(exceptions.NotFound):
        clients.run_revisions.get_revision(name=first)
    assert json.loads(call(updated.uri)[1])["greeting"] == "two"


# -- updates under way ------------------------------------------------------------------


def test_update_during_a_reconcile_is_not_lost(image, deploy, clients):
    service = deploy(image, env={"GREETING": "one"})
    service.template.containers[0].env[0].value = "two"
    slow = clients.run_services.update_service(service=service)  # new revision: ~1 s

    def under_way():
        # The reconcile made its new revision (and is starting its instance, or done).
        found = clients.run_services.get_service(name=service.name)
        return found if found.latest_created_revision != service.latest_created_revision else None

    current = wait_for(under_way, 30, "the reconcile to create its revision", every=0.02)
    current.labels["second"] = "update"
    quick = clients.run_services.update_service(service=current)
    slow.result(timeout=120)
    quick.result(timeout=120)
    final = clients.run_services.get_service(name=service.name)
    assert final.generation == service.generation + 2
    assert final.labels.get("second") == "update"
    assert final.observed_generation == final.generation


def test_delete_during_a_reconcile_finishes_the_operation_and_leaks_nothing(
    localcloud, image, clients
):
    service_id = f"svc-{uuid.uuid4().hex[:8]}"
    name = f"{PARENT}/services/{service_id}"
    creating = clients.run_services.create_service(
        parent=PARENT, service=run_service(image), service_id=service_id
    )
    wait_for(lambda: localcloud.service_pids(service_id), 30, "an instance to start", every=0.02)
    clients.run_services.delete_service(name=name).result(timeout=30)
    assert clients.operations.get_operation(creating.operation.name).done
    wait_for(lambda: not localcloud.service_pids(service_id), 30, "the instance processes to go")


# -- resources --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "named"),
    [
        ({"memory": "64Mi"}, "limits.memory: 64Mi is outside what Cloud Run allows"),
        ({"memory": "lots"}, "limits.memory: 'lots' is not a quantity"),
        ({"cpu": "3"}, "limits.cpu: 3 is not allowed"),
        ({"memory": "5Gi", "cpu": "1"}, "5Gi of memory needs at least 2 CPUs"),
    ],
)
def test_resource_limits_google_refuses_are_refused_by_the_api(image, clients, limits, named):
    service = run_service(image)
    service.template.containers[0].resources.limits.update(limits)
    with pytest.raises(exceptions.InvalidArgument) as refused:
        validate(clients, service)
    assert named in str(refused.value)

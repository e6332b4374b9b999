"""Every gRPC method checks the permission Google documents for it (issue 16).

The table (``localcloud/core/permissions.json``) says, per method, which permission is
needed on which resource; these tests hold it to three things:

- it is complete and sound: every method localcloud serves is in it, every permission in it
  is one Google's roles grant (``roles.json``), every request field it reads exists; and,
  for the methods the issue names, it says what Google's access-control pages say
  (https://cloud.google.com/pubsub/docs/access-control, https://cloud.google.com/run/docs/reference/iam/permissions,
  https://cloud.google.com/build/docs/iam-roles-permissions, https://cloud.google.com/workflows/docs/access-control,
  https://cloud.google.com/eventarc/docs/access-control);
- a principal with no grants (a bearer token for ``user:nobody@example.com``, minted with
  the session localcloud's own key) is refused every method with PERMISSION_DENIED naming
  the permission and the resource, in the message and in the ``ErrorInfo`` Google's
  clients read;
- the same kind of principal granted the one role that includes the permission passes that
  check (it may fail later, for the resource not existing: never for that permission);
- naming a service account a build (or a revision) runs as needs
  ``iam.serviceAccounts.actAs`` on it.

The requests are the complete ones ``test_request_validation.py`` builds for every method
(in project ``strict-project``), sent over the wire with the client libraries' own types.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import resourcemanager_v3, run_v2, workflows_v1
from google.cloud.devtools import cloudbuild_v1
from google.cloud.devtools.cloudbuild_v1.services.cloud_build.transports import (
    CloudBuildGrpcTransport,
)
from google.cloud.resourcemanager_v3.services.projects.transports import ProjectsGrpcTransport
from google.cloud.workflows_v1.services.workflows.transports import WorkflowsGrpcTransport
from google.pubsub_v1.services.publisher import PublisherClient
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber import SubscriberClient
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from localcloud.core import authz, permissions
from localcloud.core.oidc import Issuer
from tests.integration.test_request_validation import METHODS, Method

PROJECT = "strict-project"  # the project the complete requests name
NOBODY = "nobody@example.com"
TABLE = permissions.table()
CHECKED = [m for m in METHODS if TABLE[f"{m.service}/{m.verb}"].checks]
TOPIC = f"projects/{PROJECT}/topics/permissions-topic"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/permissions-sub"


def _id(method: Method) -> str:
    return f"{method.service.rsplit('.', 1)[-1]}.{method.verb}"


def _rule(method: Method) -> permissions.Rule:
    return TABLE[f"{method.service}/{method.verb}"]


# ------------------------------------------------------------------ the table itself


def test_every_served_method_is_in_the_table_and_only_those():
    served = {f"{m.service}/{m.verb}" for m in METHODS}
    assert served == set(TABLE), served ^ set(TABLE)


def test_every_permission_in_the_table_is_one_a_role_grants():
    known = authz.known_permissions()
    for rule in TABLE.values():
        asked = {p for check in rule.checks for p in check.permissions()}
        if rule.act_as:
            asked.add(permissions.ACT_AS)
        # google.iam.v1.IAMPolicy asks SERVICE.COLLECTION.getIamPolicy of the resource's kind
        for permission in asked:
            if permission.startswith("*."):
                assert any(fnmatch.fnmatch(k, permission) for k in known), rule.method
            else:
                assert permission in known, f"{rule.method}: {permission} is in no role"
        assert rule.checks or rule.why, f"{rule.method} checks nothing and says not why"
        assert rule.doc.startswith("https://cloud.google.com/"), rule.method


def _has_path(descriptor: Any, path: str) -> bool:
    for part in path.split("."):
        fd = descriptor.fields_by_name.get(part)
        if fd is None:
            return False
        descriptor = fd.message_type
    return True


@pytest.mark.parametrize("method", METHODS, ids=_id)
def test_every_field_the_table_reads_is_a_field_of_the_request(method):
    rule = _rule(method)
    descriptor = method.request.DESCRIPTOR
    for check in rule.checks:
        for template in check.resource:
            # A template naming no field is a literal: the fallback when the request names
            # nothing (ListOperations without a name lists every project's).
            for path in [part.split("}")[0] for part in template.split("{")[1:]]:
                assert _has_path(descriptor, path), f"{rule.method}: no field {path}"
    for path in rule.act_as:
        assert _has_path(descriptor, path), f"{rule.method}: no field {path}"


# What Google's access-control pages say for the methods the issue names (written here apart
# from the table, so a wrong entry fails).
GOOGLE = {
    "google.pubsub.v1.Publisher/Publish": [("pubsub.topics.publish", "topic")],
    "google.pubsub.v1.Publisher/CreateTopic": [("pubsub.topics.create", "project")],
    "google.pubsub.v1.Subscriber/CreateSubscription": [
        ("pubsub.subscriptions.create", "project"),
        ("pubsub.topics.attachSubscription", "topic"),
    ],
    "google.pubsub.v1.Subscriber/Pull": [("pubsub.subscriptions.consume", "subscription")],
    "google.pubsub.v1.Publisher/ListTopics": [("pubsub.topics.list", "project")],
    "google.cloud.run.v2.Services/UpdateService": [("run.services.update", "service")],
    "google.cloud.run.v2.Services/CreateService": [("run.services.create", "location")],
    "google.devtools.cloudbuild.v1.CloudBuild/CreateBuild": [
        ("cloudbuild.builds.create", "location")
    ],
    "google.cloud.workflows.executions.v1.Executions/CreateExecution": [
        ("workflows.executions.create", "workflow")
    ],
    "google.cloud.eventarc.v1.Eventarc/CreateTrigger": [("eventarc.triggers.create", "location")],
}
ACT_AS_FIELDS = {
    "google.devtools.cloudbuild.v1.CloudBuild/CreateBuild": "build.service_account",
    "google.cloud.run.v2.Services/CreateService": "service.template.service_account",
    "google.cloud.run.v2.Services/UpdateService": "service.template.service_account",
    "google.cloud.eventarc.v1.Eventarc/CreateTrigger": "trigger.service_account",
    "google.cloud.workflows.v1.Workflows/CreateWorkflow": "workflow.service_account",
    "google.pubsub.v1.Subscriber/CreateSubscription": (
        "push_config.oidc_token.service_account_email"
    ),
}
KINDS = {
    "project": f"projects/{PROJECT}",
    "location": f"projects/{PROJECT}/locations/us-central1",
    "topic": f"projects/{PROJECT}/topics/t",
    "subscription": f"projects/{PROJECT}/subscriptions/s",
    "service": f"projects/{PROJECT}/locations/us-central1/services/s",
    "workflow": f"projects/{PROJECT}/locations/us-central1/workflows/w",
}


def _request_naming(method: str) -> Any:
    """A request of ``method`` whose every name field names a resource of its kind."""
    verb = method.rsplit("/", 1)[1]
    request = next(m for m in METHODS if f"{m.service}/{m.verb}" == method).request()
    values = {
        "topic": KINDS["topic"],
        "subscription": KINDS["subscription"],
        "name": KINDS["topic" if verb == "CreateTopic" else "subscription"],
        "project": KINDS["project"],
        "parent": KINDS["workflow" if verb == "CreateExecution" else "location"],
    }
    for field_name, value in values.items():
        if field_name in request.DESCRIPTOR.fields_by_name:
            setattr(request, field_name, value)
    if verb == "UpdateService":
        request.service.name = KINDS["service"]
    return request


@pytest.mark.parametrize("method", sorted(GOOGLE), ids=lambda m: m.rsplit("/", 1)[1])
def test_the_table_says_what_googles_pages_say(method):
    asked = list(TABLE[method].required(_request_naming(method), servicer=None))
    assert asked == [(p, KINDS[kind]) for p, kind in GOOGLE[method]]


@pytest.mark.parametrize("method", sorted(ACT_AS_FIELDS), ids=lambda m: m.rsplit("/", 1)[1])
def test_a_service_account_to_run_as_needs_act_as(method):
    assert ACT_AS_FIELDS[method] in TABLE[method].act_as


def test_a_wildcard_location_is_checked_on_the_project():
    """ListServices across locations (``locations/-``) needs run.services.list on the
    project, as Google answers it (https://google.aip.dev/159)."""
    request = run_v2.ListServicesRequest.pb()(parent=f"projects/{PROJECT}/locations/-")
    rule = TABLE["google.cloud.run.v2.Services/ListServices"]
    assert list(rule.required(request, None)) == [("run.services.list", f"projects/{PROJECT}")]


def test_act_as_is_checked_on_the_account_however_the_request_names_it():
    email = f"builder@{PROJECT}.iam.gserviceaccount.com"
    build = cloudbuild_v1.CreateBuildRequest.pb()(project_id=PROJECT)
    build.build.service_account = f"projects/{PROJECT}/serviceAccounts/{email}"
    rule = TABLE["google.devtools.cloudbuild.v1.CloudBuild/CreateBuild"]
    assert list(rule.required(build, None))[-1] == (
        "iam.serviceAccounts.actAs",
        f"projects/{PROJECT}/serviceAccounts/{email}",
    )
    service = run_v2.CreateServiceRequest.pb()(parent=KINDS["location"])
    service.service.template.service_account = email
    rule = TABLE["google.cloud.run.v2.Services/CreateService"]
    assert list(rule.required(service, None))[-1] == (
        "iam.serviceAccounts.actAs",
        f"projects/-/serviceAccounts/{email}",
    )


# ------------------------------------------------------------------ against the server


@pytest.fixture(scope="module")
def issuer(localcloud) -> Issuer:
    return Issuer(localcloud.config.data_dir / "oidc", localcloud.config.http_url)


def token(issuer: Issuer, email: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {issuer.mint_access_token(email)}")]


@pytest.fixture(scope="module")
def channel(localcloud) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(localcloud.config.grpc_address) as ch:
        yield ch


@dataclasses.dataclass
class Existing:
    """Resources the owner makes, for the methods whose check needs one that exists (the
    topic of a subscription, the service owning an operation, a policy's resource)."""

    operation: str
    owner: str = "workflows"

    # The servicer methods the table's lookups call, answered from what the owner made.
    def subscription_topic(self, subscription: str) -> str | None:
        return TOPIC if subscription == SUBSCRIPTION else None

    def operation_service(self, name: str) -> str | None:
        return self.owner if name == self.operation else None


@pytest.fixture(scope="module")
def existing(localcloud) -> Existing:
    host = localcloud.config.grpc_address
    publisher = PublisherClient(
        transport=PublisherGrpcTransport(channel=grpc.insecure_channel(host))
    )
    subscriber = SubscriberClient(
        transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(host))
    )
    workflows = workflows_v1.WorkflowsClient(
        transport=WorkflowsGrpcTransport(channel=grpc.insecure_channel(host))
    )
    for make in (
        lambda: publisher.create_topic(name=TOPIC),
        lambda: subscriber.create_subscription(name=SUBSCRIPTION, topic=TOPIC),
    ):
        with contextlib.suppress(exceptions.AlreadyExists):
            make()
    op = workflows.create_workflow(
        parent=f"projects/{PROJECT}/locations/us-central1",
        workflow=workflows_v1.Workflow(
            source_contents="main:\n  steps:\n    - done:\n        return: 1\n"
        ),
        workflow_id=f"perm-{uuid.uuid4().hex[:8]}",
    )
    op.result(timeout=30)
    return Existing(operation=op.operation.name)


POLICY_RESOURCES = {
    "google.cloud.resourcemanager.v3.Projects": f"projects/{PROJECT}",
    "google.iam.admin.v1.IAM": (
        f"projects/{PROJECT}/serviceAccounts/ghost@{PROJECT}.iam.gserviceaccount.com"
    ),
    "google.cloud.run.v2.Services": f"projects/{PROJECT}/locations/us-central1/services/ghost",
    "google.devtools.artifactregistry.v1.ArtifactRegistry": (
        f"projects/{PROJECT}/locations/us-central1/repositories/ghost"
    ),
}


# Names the annotations leave free ("*" patterns) that the handlers read as these.
OVERRIDES = {
    "google.iam.admin.v1.IAM/CreateServiceAccount": {"account_id": "ghost-account"},
    "google.iam.admin.v1.IAM/CreateRole": {"parent": f"projects/{PROJECT}", "role_id": "ghost"},
    "google.iam.admin.v1.IAM/GetRole": {"name": f"projects/{PROJECT}/roles/ghost"},
    "google.iam.admin.v1.IAM/DeleteRole": {"name": f"projects/{PROJECT}/roles/ghost"},
    "google.devtools.cloudbuild.v1.CloudBuild/ApproveBuild": {
        "name": f"projects/{PROJECT}/builds/ghost"
    },
    "google.longrunning.Operations/ListOperations": {
        "name": f"projects/{PROJECT}/locations/us-central1"
    },
}


# Requests whose check needs a resource that exists (see Existing), by method.
def _request(method: Method, existing: Existing) -> Any:
    request = method.complete()
    key = f"{method.service}/{method.verb}"
    if key == "google.pubsub.v1.Publisher/DetachSubscription":
        request.subscription = SUBSCRIPTION
    elif method.service == "google.longrunning.Operations" and method.verb != "ListOperations":
        request.name = existing.operation
    elif key in OVERRIDES:
        for field_name, value in OVERRIDES[key].items():
            setattr(request, field_name, value)
    elif method.service == "google.iam.v1.IAMPolicy":
        request.resource = TOPIC
    elif "resource" in request.DESCRIPTOR.fields_by_name:  # the other IAM policy methods
        request.resource = POLICY_RESOURCES[method.service]
    return request


def expected(method: Method, request: Any, existing: Existing) -> list[tuple[str, str]]:
    """What the table asks of ``request`` (a handler-checked method: what its handler asks)."""
    rule = dataclasses.replace(_rule(method), handler=False)
    asked = list(rule.required(request, existing))
    if method.service == "google.iam.v1.IAMPolicy":
        verb = method.verb[0].lower() + method.verb[1:]
        asked = [(f"pubsub.topics.{verb}", TOPIC)]
    return asked


def _call(
    channel: grpc.Channel, method: Method, request: Any, metadata: list[tuple[str, str]]
) -> grpc.RpcError | None:
    serialize = type(request).SerializeToString
    try:
        if method.spec.request_streaming:
            call = channel.stream_stream(
                method.path, request_serializer=serialize, response_deserializer=bytes
            )
            for _ in call(iter([request]), timeout=10, metadata=metadata):
                break
        elif method.spec.response_streaming:
            stream = channel.unary_stream(
                method.path, request_serializer=serialize, response_deserializer=bytes
            )
            for _ in stream(request, timeout=10, metadata=metadata):
                break
        else:
            channel.unary_unary(
                method.path, request_serializer=serialize, response_deserializer=bytes
            )(request, timeout=10, metadata=metadata)
    except grpc.RpcError as exc:
        return exc
    return None


def _error_info(error: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return dict(info.metadata)
    return {}


def _denial(error: grpc.RpcError | None) -> dict[str, str] | None:
    """The permission and resource of a PERMISSION_DENIED (None for any other answer)."""
    if error is None or error.code() != grpc.StatusCode.PERMISSION_DENIED:  # type: ignore[attr-defined]
        return None
    return _error_info(error)


@pytest.mark.parametrize("method", CHECKED, ids=_id)
def test_a_principal_without_grants_is_refused_naming_permission_and_resource(
    channel, issuer, existing, method
):
    request = _request(method, existing)
    permission, resource = expected(method, request, existing)[0]
    error = _call(channel, method, request, token(issuer, NOBODY))
    denial = _denial(error)
    assert denial is not None, f"{method.path} let {NOBODY} through: {error}"
    assert denial == {"permission": permission, "resource": resource}, error
    assert permission in error.details()  # type: ignore[union-attr]
    assert resource.rsplit("/", 1)[-1] in error.details()  # type: ignore[union-attr]


def _projects(channel: grpc.Channel) -> Any:
    return resourcemanager_v3.ProjectsClient(transport=ProjectsGrpcTransport(channel=channel))


def _smallest_role(permission: str) -> str:
    roles = [r for r in authz.predefined().values() if permission in r.permissions]
    return min(roles, key=lambda r: (len(r.permissions), r.name)).name


def _grantee(method: Method) -> str:
    return f"grant-{method.verb.lower()}-{abs(hash(method.service)) % 10**6}@example.com"


@pytest.fixture(scope="module")
def granted(localcloud, existing) -> dict[str, list[str]]:
    """Each method's own principal, granted on the project the one role per permission the
    method asks (as the owner, through the official Resource Manager client)."""
    projects = resourcemanager_v3.ProjectsClient(
        transport=ProjectsGrpcTransport(
            channel=grpc.insecure_channel(localcloud.config.grpc_address)
        )
    )
    policy = projects.get_iam_policy(resource=f"projects/{PROJECT}")
    roles: dict[str, list[str]] = {}
    for method in CHECKED:
        asked = expected(method, _request(method, existing), existing)
        if _rule(method).any_of:
            asked = asked[:1]
        roles[method.path] = sorted({_smallest_role(p) for p, _ in asked})
        for role in roles[method.path]:
            policy.bindings.add(role=role, members=[f"user:{_grantee(method)}"])
    projects.set_iam_policy(request={"resource": f"projects/{PROJECT}", "policy": policy})
    return roles


@pytest.mark.parametrize("method", CHECKED, ids=_id)
def test_the_role_that_grants_the_permission_passes_the_check(
    channel, issuer, existing, granted, method
):
    request = _request(method, existing)
    asked = {p for p, _ in expected(method, request, existing)}
    if f"{method.service}/{method.verb}" == "google.cloud.resourcemanager.v3.Projects/SetIamPolicy":
        # Granted, it replaces the project's policy: with the policy it has, so the grants
        # (and the owner) stay.
        request.policy.CopyFrom(_projects(channel).get_iam_policy(resource=request.resource))
    error = _call(channel, method, request, token(issuer, _grantee(method)))
    denial = _denial(error)
    assert denial is None or denial.get("permission") not in asked, (granted[method.path], error)


# ------------------------------------------------------------------ actAs, through the clients


def _build_client(localcloud) -> Any:
    return cloudbuild_v1.CloudBuildClient(
        transport=CloudBuildGrpcTransport(
            channel=grpc.insecure_channel(localcloud.config.grpc_address)
        )
    )


def test_a_build_naming_an_account_the_caller_cannot_act_as_is_refused(localcloud, issuer):
    builder = f"user:builds-{uuid.uuid4().hex[:6]}@example.com"
    projects = resourcemanager_v3.ProjectsClient(
        transport=ProjectsGrpcTransport(
            channel=grpc.insecure_channel(localcloud.config.grpc_address)
        )
    )
    policy = projects.get_iam_policy(resource=f"projects/{PROJECT}")
    policy.bindings.add(role="roles/cloudbuild.builds.editor", members=[builder])
    projects.set_iam_policy(request={"resource": f"projects/{PROJECT}", "policy": policy})
    account = f"projects/{PROJECT}/serviceAccounts/runner@{PROJECT}.iam.gserviceaccount.com"
    build = cloudbuild_v1.Build(
        steps=[cloudbuild_v1.BuildStep(name="python", args=["-c", "print(1)"])],
        service_account=account,
        options=cloudbuild_v1.BuildOptions(logging="CLOUD_LOGGING_ONLY"),
    )
    metadata = token(issuer, builder.partition(":")[2])
    client = _build_client(localcloud)
    with pytest.raises(exceptions.PermissionDenied) as denied:
        client.create_build(project_id=PROJECT, build=build, metadata=metadata)
    assert "iam.serviceAccounts.actAs" in denied.value.message
    assert f"runner@{PROJECT}.iam.gserviceaccount.com" in denied.value.message

    # Granted Service Account User, the same request passes the actAs check.
    policy = projects.get_iam_policy(resource=f"projects/{PROJECT}")
    policy.bindings.add(role="roles/iam.serviceAccountUser", members=[builder])
    projects.set_iam_policy(request={"resource": f"projects/{PROJECT}", "policy": policy})
    try:
        client.create_build(project_id=PROJECT, build=build, metadata=metadata)
    except exceptions.PermissionDenied as exc:  # pragma: no cover - the failure reported
        pytest.fail(f"still refused after the grant: {exc.message}")
    except exceptions.GoogleAPICallError:
        pass  # refused for another reason (the account does not exist here): not IAM's


def test_publishing_without_the_grant_is_refused_by_the_official_client(
    localcloud, issuer, existing
):
    publisher = PublisherClient(
        transport=PublisherGrpcTransport(
            channel=grpc.insecure_channel(localcloud.config.grpc_address)
        )
    )
    with pytest.raises(exceptions.PermissionDenied) as denied:
        publisher.publish(topic=TOPIC, messages=[{"data": b"x"}], metadata=token(issuer, NOBODY))
    assert "pubsub.topics.publish" in denied.value.message
    assert TOPIC in denied.value.message


def test_the_enforcement_switch_is_read_from_localcloud_iam():
    """``enforce`` by default (``orch local up`` applies Terraform's grants), ``audit`` on
    request; a typo is refused at start, naming the variable."""
    from localcloud.core.config import Config, ConfigError

    assert Config.from_env({}).iam == "enforce"
    assert Config.from_env({"LOCALCLOUD_IAM": "audit"}).iam == "audit"
    with pytest.raises(ConfigError, match="LOCALCLOUD_IAM"):
        Config.from_env({"LOCALCLOUD_IAM": "enforcing"})

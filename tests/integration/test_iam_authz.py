"""IAM as Google evaluates it, through the official clients: roles, inheritance, conditions,
denials, and the Resource Manager and IAM Admin APIs.

Google's rules these tests hold localcloud to:

- policy inheritance, resource -> project: https://cloud.google.com/iam/docs/overview#policy_inheritance
- predefined roles and their permissions: https://cloud.google.com/iam/docs/understanding-roles
- conditions on ``resource.name``: https://cloud.google.com/iam/docs/conditions-resource-attributes
- conditional bindings need policy version 3: https://cloud.google.com/iam/docs/policies#versions
- TestIamPermissions answers the subset the caller holds:
  https://cloud.google.com/iam/docs/reference/rpc/google.iam.v1#google.iam.v1.IAMPolicy.TestIamPermissions
- service accounts: https://cloud.google.com/iam/docs/reference/rpc/google.iam.admin.v1
- projects: https://cloud.google.com/resource-manager/reference/rpc/google.cloud.resourcemanager.v3

Most run against a localcloud of their own whose local user is ``user:dev@example.com``
(``LOCALCLOUD_PRINCIPAL``): dev owns the project until it hands ownership to someone else,
and is then held to what the remaining grants give it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import iam_admin_v1, resourcemanager_v3
from google.cloud.iam_admin_v1.services.iam.transports import IAMGrpcTransport
from google.cloud.resourcemanager_v3.services.projects.transports import ProjectsGrpcTransport
from google.iam.v1 import policy_pb2
from google.rpc import error_details_pb2
from google.type import expr_pb2

from localcloud import testing
from localcloud.core.oidc import owner_email
from localcloud.workflows.engine import project_number
from orchestrator.clients import Clients, Environment

DEV = "user:dev@example.com"


def projects_client(host: str) -> Any:
    return resourcemanager_v3.ProjectsClient(
        transport=ProjectsGrpcTransport(channel=grpc.insecure_channel(host))
    )


def iam_client(host: str) -> Any:
    return iam_admin_v1.IAMClient(transport=IAMGrpcTransport(channel=grpc.insecure_channel(host)))


def _members(policy: policy_pb2.Policy, role: str) -> set[str]:
    return {m for b in policy.bindings if b.role == role for m in b.members}


def _error_info(error: exceptions.GoogleAPICallError) -> dict[str, str]:
    for detail in error.details or []:
        if isinstance(detail, error_details_pb2.ErrorInfo):
            return dict(detail.metadata)
    return {}


# ------------------------------------------------------------------ the session's localcloud


@pytest.fixture(scope="module")
def host(localcloud: testing.Instance) -> str:
    return localcloud.config.grpc_address


def test_predefined_roles_resolve_to_googles_permissions(host: str) -> None:
    iam = iam_client(host)
    publisher = iam.get_role(request={"name": "roles/pubsub.publisher"})
    assert list(publisher.included_permissions) == ["pubsub.topics.publish"]
    assert publisher.title == "Pub/Sub Publisher"
    invoker = iam.get_role(request={"name": "roles/run.invoker"})
    assert "run.routes.invoke" in invoker.included_permissions
    user = iam.get_role(request={"name": "roles/iam.serviceAccountUser"})
    assert "iam.serviceAccounts.actAs" in user.included_permissions
    with pytest.raises(exceptions.NotFound):
        iam.get_role(request={"name": "roles/pubsub.publishr"})


def test_an_unknown_role_is_refused_when_granted(host: str, publisher: Any, local_topic) -> None:
    """Google answers INVALID_ARGUMENT "Role roles/X is not supported for this resource."
    and stores nothing; localcloud used to store the binding, granting nothing."""
    topic = local_topic()
    before = publisher.get_iam_policy(request={"resource": topic})
    policy = policy_pb2.Policy()
    policy.CopyFrom(before)
    policy.bindings.add(role="roles/pubsub.publishr", members=[DEV])
    with pytest.raises(exceptions.InvalidArgument) as caught:
        publisher.set_iam_policy(request={"resource": topic, "policy": policy})
    assert "Role roles/pubsub.publishr is not supported for this resource." in str(caught.value)
    assert publisher.get_iam_policy(request={"resource": topic}).etag == before.etag

    projects = projects_client(host)
    with pytest.raises(exceptions.InvalidArgument, match=r"roles/pubsub\.publishr"):
        projects.set_iam_policy(request={"resource": "projects/local-project", "policy": policy})
    missing = policy_pb2.Policy(
        bindings=[policy_pb2.Binding(role="projects/local-project/roles/absent", members=[DEV])]
    )
    with pytest.raises(exceptions.InvalidArgument, match="does not exist in the resource's"):
        publisher.set_iam_policy(request={"resource": topic, "policy": missing})


def test_a_conditional_binding_needs_policy_version_3(publisher: Any, local_topic) -> None:
    topic = local_topic()
    binding = policy_pb2.Binding(
        role="roles/pubsub.publisher",
        members=[DEV],
        condition=expr_pb2.Expr(title="t", expression='resource.name.startsWith("projects/")'),
    )
    with pytest.raises(exceptions.InvalidArgument, match="version 3"):
        publisher.set_iam_policy(
            request={"resource": topic, "policy": policy_pb2.Policy(version=1, bindings=[binding])}
        )
    stored = publisher.set_iam_policy(
        request={"resource": topic, "policy": policy_pb2.Policy(version=3, bindings=[binding])}
    )
    assert stored.version == 3 and stored.bindings[0].condition.expression


def test_project_id_number_and_default_owner(host: str, localcloud: testing.Instance) -> None:
    """A project is named ``projects/NUMBER``; until its policy is set, the local user owns
    it (as a new project's creator does)."""
    projects = projects_client(host)
    project = projects.get_project(name="projects/local-project")
    number = project_number("local-project")
    assert project.project_id == "local-project"
    assert project.name == f"projects/{number}"
    assert project.state == resourcemanager_v3.Project.State.ACTIVE
    assert projects.get_project(name=f"projects/{number}").project_id == "local-project"
    # A project nobody can see is refused as Google refuses it, not NOT_FOUND.
    with pytest.raises(exceptions.PermissionDenied, match="or it may not exist"):
        projects.get_project(name="projects/999")
    policy = projects.get_iam_policy(request={"resource": "projects/local-project"})
    assert _members(policy, "roles/owner") == {
        f"serviceAccount:{owner_email(localcloud.config.project)}"
    }
    held = projects.test_iam_permissions(
        request={
            "resource": "projects/local-project",
            "permissions": ["pubsub.topics.create", "resourcemanager.projects.setIamPolicy"],
        }
    )
    assert list(held.permissions) == [
        "pubsub.topics.create",
        "resourcemanager.projects.setIamPolicy",
    ]


def test_service_accounts_lifecycle(host: str) -> None:
    iam = iam_client(host)
    account_id = f"sa-{uuid.uuid4().hex[:8]}"
    email = f"{account_id}@local-project.iam.gserviceaccount.com"
    created = iam.create_service_account(
        request={
            "name": "projects/local-project",
            "account_id": account_id,
            "service_account": {"display_name": "Test account"},
        }
    )
    assert created.email == email
    assert created.name == f"projects/local-project/serviceAccounts/{email}"
    assert created.project_id == "local-project" and len(created.unique_id) == 21
    assert created.display_name == "Test account"
    # "-" stands for the project, and the unique id for the email.
    assert iam.get_service_account(name=f"projects/-/serviceAccounts/{email}").email == email
    assert (
        iam.get_service_account(name=f"projects/-/serviceAccounts/{created.unique_id}").email
        == email
    )
    listed = [a.email for a in iam.list_service_accounts(name="projects/local-project")]
    assert email in listed

    with pytest.raises(exceptions.AlreadyExists) as caught:
        iam.create_service_account(
            request={"name": "projects/local-project", "account_id": account_id}
        )
    assert (
        f"Service account {account_id} already exists within project projects/local-project"
        in str(caught.value)
    )
    for bad in ("short", "Upper-case-id", "ends-with-dash-", "x" * 31, "9starts-with-digit"):
        with pytest.raises(exceptions.InvalidArgument, match="account_id"):
            iam.create_service_account(
                request={"name": "projects/local-project", "account_id": bad}
            )

    # roles/iam.serviceAccountUser is granted on the account itself.
    policy = iam.get_iam_policy(request={"resource": created.name})
    policy.bindings.add(role="roles/iam.serviceAccountUser", members=[DEV])
    iam.set_iam_policy(request={"resource": created.name, "policy": policy})
    assert _members(
        iam.get_iam_policy(request={"resource": created.name}), "roles/iam.serviceAccountUser"
    ) == {DEV}

    iam.delete_service_account(name=created.name)
    with pytest.raises(exceptions.NotFound, match="Unknown service account"):
        iam.get_service_account(name=created.name)


# ------------------------------------------------------------------ a principal with fewer rights


@dataclass
class Limited:
    """dev's localcloud after dev handed the project to someone else."""

    instance: testing.Instance
    clients: Clients
    project: str
    topics: dict[str, str] = field(default_factory=dict)
    account: str = ""


def _project_policy(project: str, custom_role: str) -> policy_pb2.Policy:
    policy = policy_pb2.Policy(version=3)
    policy.bindings.add(
        role="roles/owner", members=[f"serviceAccount:admin@{project}.iam.gserviceaccount.com"]
    )
    policy.bindings.add(role="roles/pubsub.viewer", members=[DEV])
    policy.bindings.add(role=custom_role, members=[DEV])
    policy.bindings.add(
        role="roles/pubsub.publisher",
        members=[DEV],
        condition=expr_pb2.Expr(
            title="cond- topics only",
            expression=f'resource.name.startsWith("projects/{project}/topics/cond-")',
        ),
    )
    # A condition on the request time is beyond what localcloud evaluates: it grants nothing.
    policy.bindings.add(
        role="roles/pubsub.editor",
        members=[DEV],
        condition=expr_pb2.Expr(
            title="until 2999", expression='request.time < timestamp("2999-01-01T00:00:00Z")'
        ),
    )
    return policy


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Limited]:
    instance = testing.start(
        tmp_path_factory.mktemp("iam-limited"), extra_env={"LOCALCLOUD_PRINCIPAL": DEV}
    )
    try:
        clients = Clients(Environment.from_env(instance.env))
        project = instance.config.project
        setup = Limited(instance, clients, project)
        host = instance.config.grpc_address
        projects, iam = projects_client(host), iam_client(host)

        # While dev still owns the project (nobody set its policy yet):
        for key in ("granted", "inherited", "cond-a", "other"):
            setup.topics[key] = f"projects/{project}/topics/{key}-{uuid.uuid4().hex[:6]}"
            if key == "cond-a":
                setup.topics[key] = f"projects/{project}/topics/cond-{uuid.uuid4().hex[:6]}"
            clients.publisher.create_topic(name=setup.topics[key])
        topic_policy = policy_pb2.Policy()
        topic_policy.bindings.add(role="roles/pubsub.publisher", members=[DEV])
        clients.publisher.set_iam_policy(
            request={"resource": setup.topics["granted"], "policy": topic_policy}
        )
        account = iam.create_service_account(
            request={"name": f"projects/{project}", "account_id": "runtime-account"}
        )
        setup.account = account.name
        account_policy = policy_pb2.Policy()
        account_policy.bindings.add(role="roles/iam.serviceAccountUser", members=[DEV])
        iam.set_iam_policy(request={"resource": account.name, "policy": account_policy})
        role = iam.create_role(
            request={
                "parent": f"projects/{project}",
                "role_id": "bucketLocationReader",
                "role": {
                    "title": "Bucket location reader",
                    "included_permissions": ["storage.buckets.get"],
                },
            }
        )
        current = projects.get_iam_policy(request={"resource": f"projects/{project}"})
        assert _members(current, "roles/owner") == {DEV}
        new = _project_policy(project, role.name)
        new.etag = current.etag
        projects.set_iam_policy(request={"resource": f"projects/{project}", "policy": new})
        yield setup
    finally:
        instance.stop()


def _held(limited: Limited, topic: str, asked: list[str]) -> list[str]:
    answer = limited.clients.publisher.test_iam_permissions(
        request={"resource": topic, "permissions": asked}
    )
    return list(answer.permissions)


ASKED = [
    "pubsub.topics.publish",
    "pubsub.topics.get",
    "pubsub.topics.delete",
    "pubsub.topics.setIamPolicy",
]


def test_a_grant_on_the_resource_adds_to_the_projects(limited: Limited) -> None:
    """publish from the topic's own policy, get from roles/pubsub.viewer on the project."""
    assert _held(limited, limited.topics["granted"], ASKED) == [
        "pubsub.topics.publish",
        "pubsub.topics.get",
    ]


def test_a_project_grant_is_inherited_by_its_topics(limited: Limited) -> None:
    assert _held(limited, limited.topics["inherited"], ASKED) == ["pubsub.topics.get"]


def test_a_conditional_binding_grants_only_where_its_condition_holds(limited: Limited) -> None:
    """publisher on the project, if resource.name starts with .../topics/cond-."""
    assert _held(limited, limited.topics["cond-a"], ASKED) == [
        "pubsub.topics.publish",
        "pubsub.topics.get",
    ]
    assert "pubsub.topics.publish" not in _held(limited, limited.topics["other"], ASKED)


def test_a_condition_beyond_the_local_subset_grants_nothing(limited: Limited) -> None:
    """roles/pubsub.editor under a request.time condition: delete stays denied."""
    assert "pubsub.topics.delete" not in _held(limited, limited.topics["other"], ASKED)


def test_a_denial_names_the_permission_and_the_resource(limited: Limited) -> None:
    topic = limited.topics["inherited"]
    with pytest.raises(exceptions.PermissionDenied) as caught:
        limited.clients.publisher.set_iam_policy(
            request={"resource": topic, "policy": policy_pb2.Policy()}
        )
    message = str(caught.value)
    assert "User not authorized to perform this action." in message
    assert f"Permission 'pubsub.topics.setIamPolicy' denied on resource '{topic}'" in message
    assert _error_info(caught.value) == {
        "permission": "pubsub.topics.setIamPolicy",
        "resource": topic,
    }
    with pytest.raises(exceptions.PermissionDenied) as caught:
        limited.clients.publisher.get_iam_policy(request={"resource": topic})
    assert "'pubsub.topics.getIamPolicy'" in str(caught.value)


def test_the_project_policy_is_guarded_by_its_own_permission(limited: Limited) -> None:
    projects = projects_client(limited.instance.config.grpc_address)
    name = f"projects/{limited.project}"
    with pytest.raises(exceptions.PermissionDenied) as caught:
        projects.set_iam_policy(request={"resource": name, "policy": policy_pb2.Policy()})
    assert (
        f"Permission 'resourcemanager.projects.setIamPolicy' denied on resource "
        f"'//cloudresourcemanager.googleapis.com/{name}' (or it may not exist)."
    ) in str(caught.value)
    # roles/pubsub.viewer includes resourcemanager.projects.get: dev may still read it.
    assert projects.get_project(name=name).project_id == limited.project
    held = projects.test_iam_permissions(
        request={
            "resource": name,
            "permissions": [
                "resourcemanager.projects.get",
                "resourcemanager.projects.setIamPolicy",
                "storage.buckets.get",
                "pubsub.topics.create",
            ],
        }
    )
    # storage.buckets.get comes from the project's custom role.
    assert list(held.permissions) == ["resourcemanager.projects.get", "storage.buckets.get"]


def test_act_as_is_granted_on_the_account(limited: Limited) -> None:
    iam = iam_client(limited.instance.config.grpc_address)
    held = iam.test_iam_permissions(
        request={
            "resource": limited.account,
            "permissions": ["iam.serviceAccounts.actAs", "iam.serviceAccounts.getIamPolicy"],
        }
    )
    assert list(held.permissions) == ["iam.serviceAccounts.actAs"]
    with pytest.raises(exceptions.PermissionDenied) as caught:
        iam.delete_service_account(name=limited.account)
    email = limited.account.rsplit("/", 1)[-1]
    assert (
        f"Permission 'iam.serviceAccounts.delete' denied on service account {email} "
        "(or it may not exist)."
    ) in str(caught.value)
    # Denied whether or not it exists: a caller without the permission learns nothing.
    with pytest.raises(exceptions.PermissionDenied):
        iam.get_service_account(
            name=f"projects/{limited.project}/serviceAccounts/nobody@{limited.project}.iam.gserviceaccount.com"
        )

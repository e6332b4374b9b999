"""core/authz.py on its own: inheritance, members, conditions, defaults and wording.

Google's rules: https://cloud.google.com/iam/docs/overview#policy_inheritance (a policy on a
resource adds to its ancestors'), https://cloud.google.com/iam/docs/principal-identifiers
(members), https://cloud.google.com/iam/docs/conditions-resource-attributes (resource.name,
resource.type), https://cloud.google.com/storage/docs/access-control/iam#convenience-values
(projectOwner: and friends on a bucket's default policy).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.iam.v1 import policy_pb2
from google.type import expr_pb2

from localcloud.core import authz, identity

ROOT = Path(__file__).parents[2]
OWNER = "serviceAccount:owner@p.iam.gserviceaccount.com"
DEV = "user:dev@example.com"


class Policies(dict):
    """Policies by resource; a resource never set reads as the authorizer's default."""

    def __init__(self) -> None:
        super().__init__()
        self.authorizer = authz.Authorizer(self.of, default_project="p")

    def of(self, resource: str) -> policy_pb2.Policy:
        if resource in self:
            return self[resource]
        return self.authorizer.default_policy(resource) or policy_pb2.Policy()

    def grant(self, resource: str, role: str, *members: str, condition: str = "") -> None:
        policy = self.setdefault(resource, policy_pb2.Policy(version=3))
        binding = policy.bindings.add(role=role, members=members)
        if condition:
            binding.condition.CopyFrom(expr_pb2.Expr(expression=condition))


@pytest.fixture
def policies() -> Policies:
    identity.configure(OWNER)
    return Policies()


def test_the_local_user_owns_a_project_whose_policy_was_never_set(policies: Policies) -> None:
    assert policies.authorizer.permitted(OWNER, ["pubsub.topics.publish"], "projects/p/topics/t")
    assert not policies.authorizer.permitted(DEV, ["pubsub.topics.get"], "projects/p/topics/t")
    policies.grant("projects/p", "roles/viewer", DEV)  # now set: the owner binding is gone
    assert not policies.authorizer.permitted(
        OWNER, ["pubsub.topics.publish"], "projects/p/topics/t"
    )


def test_inheritance_runs_from_revision_to_service_to_project(policies: Policies) -> None:
    service = "projects/p/locations/l/services/s"
    policies.grant("projects/p", "roles/run.viewer", DEV)
    policies.grant(service, "roles/run.invoker", DEV)
    revision = f"{service}/revisions/s-001"
    asked = ["run.routes.invoke", "run.services.get", "run.services.delete"]
    assert policies.authorizer.permitted(DEV, asked, revision) == {
        "run.routes.invoke",
        "run.services.get",
    }
    assert policies.authorizer.permitted(DEV, asked, "projects/p/locations/l/services/other") == {
        "run.services.get"
    }
    assert policies.authorizer.permitted(DEV, asked, "projects/q/locations/l/services/s") == set()


def test_members_match_as_googles_do(policies: Policies) -> None:
    topic = "projects/p/topics/t"
    check = policies.authorizer.permitted
    policies.grant(topic, "roles/pubsub.publisher", "user:Dev@Example.com")
    assert check(DEV, ["pubsub.topics.publish"], topic)  # emails match case-insensitively
    policies.grant(topic, "roles/pubsub.viewer", "group:team@example.com")
    assert not check("user:team@example.com", ["pubsub.topics.get"], topic)
    policies.grant(topic, "roles/pubsub.subscriber", "domain:example.com")
    assert check("user:x@example.com", ["pubsub.topics.attachSubscription"], topic)
    assert not check("serviceAccount:x@example.com", ["pubsub.topics.attachSubscription"], topic)
    policies.grant(topic, "roles/pubsub.viewer", "allAuthenticatedUsers")
    assert check("serviceAccount:any@q.iam.gserviceaccount.com", ["pubsub.topics.get"], topic)
    assert not check("allUsers", ["pubsub.topics.get"], topic)
    policies.grant(topic, "roles/pubsub.viewer", "allUsers")
    assert check("allUsers", ["pubsub.topics.get"], topic)


def test_a_buckets_default_policy_gives_its_projects_owners_the_objects(policies: Policies) -> None:
    obj = "projects/_/buckets/b/objects/dir/o.zip"
    check = policies.authorizer.permitted
    assert check(OWNER, ["storage.objects.get", "storage.objects.create"], obj) == {
        "storage.objects.get",
        "storage.objects.create",
    }
    policies.grant("projects/p", "roles/owner", OWNER)
    policies.grant("projects/p", "roles/viewer", DEV)
    assert check(DEV, ["storage.objects.get", "storage.objects.delete"], obj) == {
        "storage.objects.get"
    }
    policies.grant("projects/_/buckets/b", "roles/storage.objectViewer", "user:x@example.com")
    assert not check(OWNER, ["storage.objects.get"], obj)  # the bucket's policy is now set


def test_terraforms_condition_limits_a_project_grant_to_one_bucket(policies: Policies) -> None:
    """The grants file (Terraform's and orch local up's) grants the builder objectViewer on
    the project, conditioned on the gcf-v2-sources bucket (resource.name == bucket ||
    startsWith(bucket + "/"))."""
    grants = json.loads((ROOT / "pipeline" / "orchestrator" / "grants.json").read_text())
    conditions = [g["condition"] for g in grants["grants"] if g.get("condition")]
    (sources,) = [c for c in conditions if "{function_sources_bucket}" in c["expression"]]
    expression = sources["expression"].replace(
        "{function_sources_bucket}", "gcf-v2-sources-1-us-central1"
    )
    builder = "serviceAccount:builder@p.iam.gserviceaccount.com"
    policies.grant("projects/p", "roles/storage.objectViewer", builder, condition=expression)
    check = policies.authorizer.permitted
    inside = "projects/_/buckets/gcf-v2-sources-1-us-central1/objects/fn/source.zip"
    assert check(builder, ["storage.objects.get"], inside) == {"storage.objects.get"}
    assert not check(builder, ["storage.objects.get"], "projects/_/buckets/other/objects/x")
    lookalike = "projects/_/buckets/gcf-v2-sources-1-us-central1-evil/objects/x"
    assert not check(builder, ["storage.objects.get"], lookalike)


def test_terraforms_condition_limits_a_project_writer_grant_to_gcf_artifacts(
    policies: Policies,
) -> None:
    """The build account's artifactregistry.writer on the project (the functions path's
    images) holds on the gcf-artifacts repository only."""
    grants = json.loads((ROOT / "pipeline" / "orchestrator" / "grants.json").read_text())
    (condition,) = [
        g["condition"]
        for g in grants["grants"]
        if g.get("condition") and g["role"] == "roles/artifactregistry.writer"
    ]
    builder = "serviceAccount:builder@p.iam.gserviceaccount.com"
    policies.grant(
        "projects/p", "roles/artifactregistry.writer", builder, condition=condition["expression"]
    )
    check = policies.authorizer.permitted
    upload = ["artifactregistry.repositories.uploadArtifacts"]
    assert check(builder, upload, "projects/p/locations/us-central1/repositories/gcf-artifacts")
    assert not check(builder, upload, "projects/p/locations/us-central1/repositories/functions")
    assert not check(
        builder, upload, "projects/p/locations/us-central1/repositories/gcf-artifacts-evil"
    )


@pytest.mark.parametrize(
    ("expression", "resource", "holds"),
    [
        ('resource.type == "pubsub.googleapis.com/Topic"', "projects/p/topics/t", True),
        ('resource.type == "pubsub.googleapis.com/Topic"', "projects/p/subscriptions/s", False),
        ('resource.service == "run.googleapis.com"', "projects/p/locations/l/services/s", True),
        ('!(resource.name.endsWith("-prod"))', "projects/p/topics/t-prod", False),
        ('resource.name != "projects/p/topics/a" && true', "projects/p/topics/b", True),
    ],
)
def test_the_cel_subset(expression: str, resource: str, holds: bool) -> None:
    assert authz.evaluate(expression, resource) is holds


def test_a_condition_beyond_the_subset_grants_nothing(policies: Policies) -> None:
    with pytest.raises(authz.Unsupported):
        authz.evaluate('request.time < timestamp("2999-01-01T00:00:00Z")', "projects/p")
    policies.grant("projects/p", "roles/owner", OWNER)
    policies.grant("projects/p", "roles/pubsub.editor", DEV, condition="request.time < x")
    assert not policies.authorizer.permitted(DEV, ["pubsub.topics.delete"], "projects/p/topics/t")


@pytest.mark.parametrize(
    ("permission", "resource", "words"),
    [
        (
            "pubsub.topics.publish",
            "projects/p/topics/t",
            "User not authorized to perform this action. Permission 'pubsub.topics.publish' "
            "denied on resource 'projects/p/topics/t' (or it may not exist).",
        ),
        (
            "run.services.update",
            "projects/p/locations/l/services/s",
            "Permission 'run.services.update' denied on resource "
            "'projects/p/locations/l/services/s' (or resource may not exist).",
        ),
        (
            "workflows.executions.create",
            "projects/p/locations/l/workflows/w",
            "Permission 'workflows.executions.create' denied on resource "
            "'projects/p/locations/l/workflows/w' (or it may not exist).",
        ),
        (
            "storage.objects.get",
            "projects/_/buckets/b/objects/o",
            "dev@example.com does not have storage.objects.get access to the Google Cloud "
            "Storage object. Permission 'storage.objects.get' denied on resource (or it may "
            "not exist). (resource: projects/_/buckets/b/objects/o)",
        ),
        (
            "artifactregistry.repositories.uploadArtifacts",
            "projects/p/locations/l/repositories/r",
            'Permission "artifactregistry.repositories.uploadArtifacts" denied on resource '
            '"projects/p/locations/l/repositories/r" (or it may not exist)',
        ),
        (
            "iam.serviceAccounts.actAs",
            "projects/p/serviceAccounts/a@p.iam.gserviceaccount.com",
            "Permission 'iam.serviceAccounts.actAs' denied on service account "
            "a@p.iam.gserviceaccount.com (or it may not exist).",
        ),
    ],
)
def test_denials_are_worded_as_each_service_words_them(
    policies: Policies, permission: str, resource: str, words: str
) -> None:
    with pytest.raises(authz.PermissionDenied) as caught:
        policies.authorizer.check(DEV, permission, resource)
    assert caught.value.message == words


def test_a_deleted_custom_role_grants_nothing() -> None:
    """Google keeps a deleted custom role 7 days; its bindings grant nothing meanwhile
    (https://cloud.google.com/iam/docs/creating-custom-roles#deleting-custom-role)."""
    roles = {
        "projects/p/roles/reader": authz.Role(
            "projects/p/roles/reader", "r", frozenset({"storage.buckets.get"})
        )
    }
    policies = Policies()
    policies.authorizer.custom_role = roles.get
    policies.grant("projects/p", "projects/p/roles/reader", DEV)
    bucket = "projects/_/buckets/b"
    assert policies.authorizer.permitted(DEV, ["storage.buckets.get"], bucket)
    roles["projects/p/roles/reader"] = authz.Role(
        "projects/p/roles/reader", "r", frozenset({"storage.buckets.get"}), deleted=True
    )
    assert not policies.authorizer.permitted(DEV, ["storage.buckets.get"], bucket)
    with pytest.raises(authz.InvalidArgument, match="does not exist"):
        policies.authorizer.check_grantable("projects/p/roles/reader")

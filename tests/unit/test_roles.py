"""The roles file covers every role this project grants, and reads as Google's roles do.

A role missing from ``localcloud/core/roles.json`` is refused when granted (as Google refuses
a role it does not offer), so a grant in Terraform, the code or the tests that names one
would fail only at run time; this test names it first.
"""

from __future__ import annotations

import re
from pathlib import Path

from localcloud.core import authz

ROOT = Path(__file__).parents[2]
# Quoted role names only: prose mentioning "roles/" is not a grant.
QUOTED_ROLE = re.compile(r"""["'](roles/[A-Za-z0-9_.]*[A-Za-z0-9_])["']""")
SOURCES = [
    "terraform/*.tf",
    "localcloud/**/*.py",
    "orch/**/*.py",
    "pipeline/**/*.py",
    "tests/**/*.py",
]
# The tests of refusals name unknown roles on purpose.
# Files that grant misspelt roles on purpose, to see them refused.
REFUSALS = {
    "tests/integration/test_iam_authz.py",
    "tests/integration/test_artifact_registry.py",
    "tests/integration/test_storage_iam.py",
    "tests/unit/test_roles.py",
    "tests/unit/test_authz.py",
}
# https://cloud.google.com/iam/docs/understanding-roles: the roles of the services localcloud
# serves that a user commonly grants, besides the ones this project grants itself.
COMMON = {
    "roles/owner", "roles/editor", "roles/viewer",
    "roles/pubsub.publisher", "roles/pubsub.subscriber", "roles/pubsub.viewer",
    "roles/pubsub.editor", "roles/pubsub.admin",
    "roles/run.invoker", "roles/run.developer", "roles/run.admin", "roles/run.viewer",
    "roles/cloudbuild.builds.editor", "roles/cloudbuild.builds.viewer",
    "roles/cloudbuild.builds.builder",
    "roles/workflows.invoker", "roles/workflows.viewer", "roles/workflows.editor",
    "roles/workflows.admin",
    "roles/eventarc.admin", "roles/eventarc.viewer", "roles/eventarc.eventReceiver",
    "roles/eventarc.developer",
    "roles/storage.objectViewer", "roles/storage.objectCreator", "roles/storage.objectUser",
    "roles/storage.objectAdmin", "roles/storage.admin", "roles/storage.legacyBucketReader",
    "roles/storage.legacyBucketWriter", "roles/storage.legacyBucketOwner",
    "roles/storage.legacyObjectReader", "roles/storage.legacyObjectOwner",
    "roles/artifactregistry.reader", "roles/artifactregistry.writer",
    "roles/artifactregistry.admin",
    "roles/iam.serviceAccountUser", "roles/iam.serviceAccountTokenCreator",
    "roles/logging.logWriter",
}  # fmt: skip


def _granted() -> set[str]:
    found: set[str] = set()
    for pattern in SOURCES:
        for path in ROOT.glob(pattern):
            if str(path.relative_to(ROOT)) in REFUSALS:
                continue
            found.update(QUOTED_ROLE.findall(path.read_text(errors="replace")))
    return found


def test_every_role_the_project_grants_resolves() -> None:
    granted = _granted()
    assert "roles/run.invoker" in granted and "roles/eventarc.eventReceiver" in granted
    missing = sorted((granted | COMMON) - set(authz.predefined()))
    assert not missing, f"roles.json lacks {missing}"


def test_roles_hold_googles_permissions() -> None:
    roles = authz.predefined()
    assert roles["roles/pubsub.publisher"].permissions == {"pubsub.topics.publish"}
    assert "run.routes.invoke" in roles["roles/run.invoker"].permissions
    assert "iam.serviceAccounts.actAs" in roles["roles/iam.serviceAccountUser"].permissions
    assert {
        "artifactregistry.repositories.uploadArtifacts",
        "artifactregistry.repositories.downloadArtifacts",
    } <= roles["roles/artifactregistry.writer"].permissions
    # Basic roles: Google's, restricted to localcloud's services. Like Google's, they hold
    # no object permission (a bucket's default policy gives its project's owners those)
    # and editor cannot change IAM policies.
    owner, editor = roles["roles/owner"].permissions, roles["roles/editor"].permissions
    assert "resourcemanager.projects.setIamPolicy" in owner
    assert "resourcemanager.projects.setIamPolicy" not in editor
    assert not any(p.startswith("storage.objects.") for p in owner)
    assert roles["roles/viewer"].permissions < owner


def test_an_unknown_role_is_not_grantable() -> None:
    authorizer = authz.Authorizer(lambda resource: None)  # type: ignore[arg-type,return-value]
    authorizer.check_grantable("roles/pubsub.publisher")
    for role, words in (
        ("roles/pubsub.publishr", "Role roles/pubsub.publishr is not supported for this resource."),
        (
            "projects/p/roles/absent",
            "Role (projects/p/roles/absent) does not exist in the resource's hierarchy.",
        ),
        ("pubsub.publisher", "Role pubsub.publisher is not a valid role name."),
    ):
        try:
            authorizer.check_grantable(role)
        except authz.InvalidArgument as exc:
            assert exc.message == words
        else:
            raise AssertionError(f"{role} was grantable")

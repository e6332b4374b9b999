"""``orch local up``'s provisioning of the pipeline's functions on Cloud Run: an instance
killed before it listens (exit 137, as on a loaded machine) is started again, saying so,
instead of failing the whole ``up``; a function that fails by itself, or a bad image, is
not. And its IAM: the accounts, the custom role and every grant of
``pipeline/orchestrator/grants.json`` (the grants Terraform makes), read back through the
official clients, unchanged when provisioned again.

Each test deploys a function from ``tests/functions`` through ``Provisioner.deploy_service``
(what ``orch local up`` calls for each of the pipeline's functions) on the session's
localcloud, where the instance really is killed or really fails.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import run_v2
from google.iam.v1 import policy_pb2
from google.protobuf import json_format

from localcloud.registry.agents import run_agent
from localcloud.testing import run_service
from orch.grants import RESOURCE_TYPES, Condition
from orch.provision import (
    Provisioner,
    add_member,
    storage_policy_from_proto,
    storage_policy_to_proto,
)
from orchestrator.clients import Clients, Environment
from orchestrator.config import Settings, pipeline

Deploy = Callable[[str, dict[str, str]], run_v2.Service]


@pytest.fixture
def provision(localcloud, clients) -> Iterator[tuple[Deploy, list[str]]]:
    """Deploy a new service as provisioning does; what it printed. Services are deleted
    after the test."""
    settings = Settings.from_env({**localcloud.env, "ORCH_CONFIG": "/nonexistent/orch.json"})
    printed: list[str] = []
    provisioner = Provisioner(settings, clients, log=printed.append)
    made: list[str] = []

    def deploy(image: str, env: dict[str, str]) -> run_v2.Service:
        service_id = f"prov-{uuid.uuid4().hex[:8]}"
        made.append(settings.service_path(service_id))
        template = run_v2.RevisionTemplate(
            containers=[
                run_v2.Container(image=image, env=[{"name": k, "value": v} for k, v in env.items()])
            ]
        )
        return provisioner.deploy_service(service_id, template, "digest", None)

    yield deploy, printed
    for name in made:
        with contextlib.suppress(exceptions.NotFound):
            clients.run_services.delete_service(name=name).result(timeout=60)


def test_an_instance_killed_before_it_listens_is_started_again(
    localcloud, clients, build_image, provision
):
    deploy, printed = provision
    bucket = clients.storage.create_bucket(f"prov-{uuid.uuid4().hex[:8]}")
    # The instance runs as the Compute Engine default account (its revision names none), which
    # may write its marker only once granted, as on Google Cloud.
    from localcloud.core.projects import project_number

    policy = bucket.get_iam_policy(requested_policy_version=3)
    account = f"{project_number(clients.env.project)}-compute@developer.gserviceaccount.com"
    policy.bindings.append(
        {"role": "roles/storage.objectUser", "members": {f"serviceAccount:{account}"}}
    )
    bucket.set_iam_policy(policy)
    marker = (
        f"http://{localcloud.config.storage_address}/upload/storage/v1/b/{bucket.name}/o"
        "?uploadType=multipart&ifGenerationMatch=0"
    )
    service = deploy(build_image("killed_once", "hello"), {"MARKER_URL": marker})
    assert service.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED
    assert bucket.get_blob("started") is not None, "the first instance never started"
    service_id = service.name.rsplit("/", 1)[-1]
    assert printed == [f"{service_id}: instance start failed (exit 137); retrying (2/3)"]


def test_an_instance_that_exits_by_itself_fails_provisioning_at_once(build_image, provision):
    deploy, printed = provision
    with pytest.raises(exceptions.FailedPrecondition, match="before listening"):
        deploy(build_image("crash_on_import", "echo"), {})
    assert printed == [], "a function that cannot start was started again"


def test_a_bad_image_fails_provisioning_at_once(provision):
    deploy, printed = provision
    missing = "us-central1-docker.pkg.dev/local-project/functions/no-such-image:latest"
    with pytest.raises(exceptions.GoogleAPICallError):
        deploy(missing, {})
    assert printed == []


# ------------------------------------------------------------------ the grants of grants.json

GRANTS_FILE = json.loads(
    (Path(__file__).resolve().parents[2] / "pipeline/orchestrator/grants.json").read_text()
)
UNRELATED = ("roles/pubsub.viewer", "user:someone@example.com")


@dataclass
class Granted:
    settings: Settings
    clients: Clients
    first: Provisioner  # what the first provisioning did
    second: Provisioner  # and the one after it


def _expanded() -> list[tuple[str, str, str, dict | None]]:
    """(who, role, on, condition) of every grant, read from the file here, not through
    orch.grants: the test states what the file means independently."""
    functions = list(pipeline()["functions"])
    found = []
    for entry in GRANTS_FILE["grants"]:
        who_list = [
            w
            for who in entry["who"]
            for w in ([f"function:{k}" for k in functions] if who == "function:*" else [who])
        ]
        for who in who_list:
            for on in entry["on"]:
                found.append((who, entry["role"], on, entry.get("condition")))
    return found


@pytest.fixture(scope="module")
def granted(localcloud, build_image, graveyard) -> Granted:
    """The accounts, custom role, buckets, topics and the functions' Cloud Run services of a
    project of its own (so no other test's project policy is touched), then every grant of
    grants.json applied by provisioning, twice. An unrelated binding set on the project
    beforehand must survive: provisioning adds members, it does not replace policies."""
    project = f"grants-{uuid.uuid4().hex[:8]}"
    env = {
        **localcloud.env,
        "ORCH_CONFIG": "/nonexistent/orch.json",
        "GOOGLE_CLOUD_PROJECT": project,
    }
    settings = Settings.from_env(env)
    clients = Clients(Environment.from_env(env))
    projects = _projects(localcloud)
    policy = projects.get_iam_policy(request={"resource": f"projects/{project}"})
    policy.bindings.add(role=UNRELATED[0], members=[UNRELATED[1]])
    projects.set_iam_policy(request={"resource": f"projects/{project}", "policy": policy})

    printed: list[str] = []
    first = Provisioner(settings, clients, log=printed.append)
    first.service_accounts()
    first.custom_roles()
    first.buckets()
    first.topics()
    image = build_image("hello_http", "hello")
    # The image is local-project's: this project's Cloud Run Service Agent reads it only
    # once granted (https://cloud.google.com/artifact-registry/docs/integrate-cloud-run).
    functions = "projects/local-project/locations/us-central1/repositories/functions"
    registry = _registry(localcloud)
    found = registry.get_iam_policy(request={"resource": functions})
    found.bindings.add(
        role="roles/artifactregistry.reader", members=[f"serviceAccount:{run_agent(project)}"]
    )
    registry.set_iam_policy(request={"resource": functions, "policy": found})

    def create(key: str) -> None:
        made = clients.run_services.create_service(
            parent=settings.location_path,
            service=run_service(image),
            service_id=settings.function_service(key),
        ).result(timeout=120)
        graveyard.append(made.name)

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(create, pipeline()["functions"]))
    # The repository, where localcloud serves Artifact Registry's API (else its grants are
    # skipped as unserved, which the tests below accept and check the reason of).
    with contextlib.suppress(exceptions.MethodNotImplemented):
        _registry(localcloud).create_repository(
            parent=settings.location_path,
            repository_id=settings.repository,
            repository={"format_": "DOCKER"},
        ).result(timeout=60)
    first.grants(set(RESOURCE_TYPES) - {"subscription"})
    first.grants({"subscription"})
    assert [str(s) for s in first.skipped] == [p for p in printed if p.startswith("skipped")]

    second = Provisioner(settings, clients, log=lambda _line: None)
    second.service_accounts()
    second.custom_roles()
    second.grants(set(RESOURCE_TYPES))
    return Granted(settings, clients, first, second)


def _projects(localcloud) -> Any:
    from google.cloud import resourcemanager_v3
    from google.cloud.resourcemanager_v3.services.projects.transports import (
        ProjectsGrpcTransport,
    )

    host = localcloud.env["LOCALCLOUD_GRPC_HOST"]
    return resourcemanager_v3.ProjectsClient(
        transport=ProjectsGrpcTransport(channel=grpc.insecure_channel(host))
    )


def _registry(localcloud) -> Any:
    from google.cloud import artifactregistry_v1
    from google.cloud.artifactregistry_v1.services.artifact_registry.transports import (
        ArtifactRegistryGrpcTransport,
    )

    host = localcloud.env["LOCALCLOUD_GRPC_HOST"]
    return artifactregistry_v1.ArtifactRegistryClient(
        transport=ArtifactRegistryGrpcTransport(channel=grpc.insecure_channel(host))
    )


def _iam_admin(localcloud) -> Any:
    from google.cloud import iam_admin_v1
    from google.cloud.iam_admin_v1.services.iam.transports import IAMGrpcTransport

    host = localcloud.env["LOCALCLOUD_GRPC_HOST"]
    return iam_admin_v1.IAMClient(transport=IAMGrpcTransport(channel=grpc.insecure_channel(host)))


def test_provisioning_makes_the_accounts_and_the_custom_role(localcloud, granted):
    s = granted.settings
    iam = _iam_admin(localcloud)
    p = pipeline()
    ids = [f"{s.prefix}-{k}" for k in p["functions"]] + [
        f"{s.prefix}-{name}" for name in p["service_accounts"].values()
    ]
    listed = iam.list_service_accounts(name=f"projects/{s.project}")
    assert {a.email for a in listed} == {f"{i}@{s.project}.iam.gserviceaccount.com" for i in ids}
    for role_id, spec in GRANTS_FILE["custom_roles"].items():
        role = iam.get_role(request={"name": f"projects/{s.project}/roles/{s.prefix}_{role_id}"})
        assert list(role.included_permissions) == spec["permissions"]
        assert role.title == spec["title"]


def test_every_grant_of_the_file_is_in_its_targets_policy(localcloud, granted):
    """Each grant of grants.json is read back with the official client of its target's
    service; the ones a local project cannot hold (Google's agents, and
    bucket and repository IAM while localcloud does not serve them) were skipped, saying
    which and why, and no other."""
    s, clients = granted.settings, granted.clients
    p = pipeline()
    number = _projects(localcloud).get_project(name=f"projects/{s.project}").name.split("/")[1]
    skipped = {x.grant: x.reason for x in granted.first.skipped}
    policies: dict[str, Any] = {}

    def policy_of(kind: str, target: str) -> Any:
        if target not in policies:
            request = {"resource": target, "options": {"requested_policy_version": 3}}
            if kind == "project":
                policies[target] = _projects(localcloud).get_iam_policy(request=request)
            elif kind == "topic":
                policies[target] = clients.publisher.get_iam_policy(request=request)
            elif kind == "account":
                policies[target] = _iam_admin(localcloud).get_iam_policy(request=request)
            elif kind == "service":
                policies[target] = clients.run_services.get_iam_policy(request=request)
            elif kind == "repository":
                policies[target] = _registry(localcloud).get_iam_policy(request=request)
            elif kind == "bucket":
                found = clients.storage.bucket(target).get_iam_policy(requested_policy_version=3)
                policies[target] = json_format.ParseDict(
                    found.to_api_repr(), policy_pb2.Policy(), ignore_unknown_fields=True
                )
            else:
                raise AssertionError(f"no reader for {kind}")
        return policies[target]

    def email(account_id: str) -> str:
        return f"serviceAccount:{account_id}@{s.project}.iam.gserviceaccount.com"

    checked = 0
    for who, role, on, condition in _expanded():
        key = f"{who} {role} {on}"
        kind, _, name = on.partition(":")
        if who.startswith("agent:"):
            assert key in skipped, f"{key} was applied but cannot exist locally"
            continue
        if kind in ("bucket", "repository") and key in skipped:
            assert "does not serve" in skipped[key], skipped[key]
            continue
        assert key not in skipped, f"{key}: skipped ({skipped.get(key)})"
        member = (
            email(f"{s.prefix}-{name_of(who)}")
            if who.startswith("function:")
            else email(f"{s.prefix}-{p['service_accounts'][name_of(who)]}")
        )
        target = {
            "project": f"projects/{s.project}",
            "bucket": {
                "sources": s.sources_bucket,
                "records": s.records_bucket,
                "code": s.records_bucket,  # provision.CODE_IN_RECORDS
                "build_logs": s.build_logs_bucket,
            }.get(name, ""),
            "topic": f"projects/{s.project}/topics/{p['topics'].get(name, '')}",
            "account": f"projects/{s.project}/serviceAccounts/"
            f"{s.prefix}-{p['service_accounts'].get(name, '')}@{s.project}.iam.gserviceaccount.com",
            "service": f"{s.location_path}/services/{s.prefix}-{name}",
            "repository": f"{s.location_path}/repositories/{s.repository}",
        }[kind]
        role_name = (
            f"projects/{s.project}/roles/{s.prefix}_{role.removeprefix('custom:')}"
            if role.startswith("custom:")
            else role
        )
        bindings = [b for b in policy_of(kind, target).bindings if b.role == role_name]
        if condition is None:
            bindings = [b for b in bindings if not b.HasField("condition")]
        else:
            expression = condition["expression"].replace(
                "{function_sources_bucket}", f"gcf-v2-sources-{number}-{s.region}"
            )
            bindings = [b for b in bindings if b.condition.expression == expression]
            assert bindings and bindings[0].condition.title == condition["title"], key
        assert any(member in b.members for b in bindings), f"{key} not in {target}'s policy"
        checked += 1
    assert checked >= 30
    # Provisioning added members: the binding it did not make is still there.
    project_policy = policy_of("project", f"projects/{s.project}")
    assert any(
        b.role == UNRELATED[0] and UNRELATED[1] in b.members for b in project_policy.bindings
    )


def name_of(who: str) -> str:
    return who.partition(":")[2]


def test_every_skipped_grant_says_why(granted):
    """Nothing is skipped silently: each skipped grant was printed with its reason, and only
    grants that cannot be made on localcloud are skipped."""
    reasons = {x.reason for x in granted.first.skipped}
    allowed = ("Google's service agents", "localcloud does not serve")
    assert reasons and all(r.startswith(allowed) for r in reasons), reasons
    assert {x.grant for x in granted.first.skipped if x.reason.startswith("Google's")} == {
        f"{who} {role} {on}" for who, role, on, _ in _expanded() if who.startswith("agent:")
    }


def test_provisioning_again_changes_no_grant(granted):
    """Like a second terraform apply: every grant, account and role is reported unchanged,
    and the same grants are skipped for the same reasons."""
    changed = [str(c) for c in granted.second.changes if c.action != "unchanged"]
    assert changed == []
    assert {c.name for c in granted.second.changes if c.kind == "grant"} == {
        c.name for c in granted.first.changes if c.kind == "grant"
    }
    assert granted.first.changes and all(
        c.action == "created"
        for c in granted.first.changes
        if c.kind in ("grant", "service account", "custom role")
    )
    assert sorted(map(str, granted.second.skipped)) == sorted(map(str, granted.first.skipped))


def test_a_grant_removed_out_of_band_is_made_again(localcloud, granted):
    """Provisioning reads each policy before it writes (etag): a member removed since is
    added back, and that grant alone is reported."""
    s = granted.settings
    projects = _projects(localcloud)
    resource = f"projects/{s.project}"
    policy = projects.get_iam_policy(request={"resource": resource})
    role = "roles/eventarc.eventReceiver"
    trigger = f"serviceAccount:{s.prefix}-trigger@{s.project}.iam.gserviceaccount.com"
    binding = next(b for b in policy.bindings if b.role == role)
    binding.members.remove(trigger)
    projects.set_iam_policy(request={"resource": resource, "policy": policy})

    again = Provisioner(s, granted.clients, log=lambda _line: None)
    again.grants({"project"})
    assert [str(c) for c in again.changes if c.action != "unchanged"] == [
        f"created   grant account:trigger {role} project"
    ]
    policy = projects.get_iam_policy(request={"resource": resource})
    assert trigger in next(b for b in policy.bindings if b.role == role).members


def test_a_buckets_policy_survives_the_way_through_googles_iam_shape():
    """Bucket grants go through google-cloud-storage, whose policy is the JSON API's: read,
    a conditional member added as for any other target, and written back, its etag,
    version and every binding (conditions included) are the JSON API's again."""
    from google.api_core.iam import Policy

    read = Policy.from_api_repr(
        {
            "resourceId": "projects/_/buckets/b",
            "version": 1,
            "etag": "CAE=",
            "bindings": [
                {"role": "roles/storage.legacyBucketOwner", "members": ["projectOwner:p"]}
            ],
        }
    )
    policy = storage_policy_to_proto(read)
    condition = Condition("t", "d", 'resource.name.startsWith("projects/_/buckets/b/")')
    assert add_member(policy, "roles/storage.objectViewer", "user:a@example.com", condition)
    assert not add_member(policy, "roles/storage.objectViewer", "user:a@example.com", condition)
    written = storage_policy_from_proto(policy).to_api_repr()
    assert written == {
        "etag": "CAE=",
        "version": 3,
        "bindings": [
            {"role": "roles/storage.legacyBucketOwner", "members": ["projectOwner:p"]},
            {
                "role": "roles/storage.objectViewer",
                "members": ["user:a@example.com"],
                "condition": {
                    "title": "t",
                    "description": "d",
                    "expression": 'resource.name.startsWith("projects/_/buckets/b/")',
                },
            },
        ],
    }

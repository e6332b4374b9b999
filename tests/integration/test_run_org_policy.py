"""Public services where an organization policy forbids ``allUsers``, and a deploy whose
invoker setting a policy refuses.

Many organizations enforce domain restricted sharing
(``constraints/iam.allowedPolicyMemberDomains``): a SetIamPolicy naming ``allUsers`` is
refused with FAILED_PRECONDITION ("One or more users named in the policy do not belong to
a permitted customer",
https://cloud.google.com/knowledge/kb/organization-policy-violation-when-setting-iam-policy-000004666).
Google's recommended way to make a Cloud Run service public there is to disable the invoker
IAM check (``Service.invoker_iam_disabled``,
https://cloud.google.com/run/docs/authenticating/public#invoker_check), which the
``deploy`` step does. An organization may forbid that too
(``constraints/run.managed.requireInvokerIam``); the deploy then fails with DEPLOY_FAILED
naming the constraint, and the previous revision keeps serving.

The module runs its own localcloud with those policies on (the session's has none); the
``deploy`` step's work runs in-process against it, through the official clients.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.api_core import exceptions
from google.iam.v1 import policy_pb2

from localcloud import testing
from localcloud.core.config import Config, ConfigError
from localcloud.core.oidc import Issuer, owner_email
from localcloud.testing import build_function, call, make_public
from orchestrator import deploy
from orchestrator.clients import Clients, Environment
from orchestrator.config import Settings
from orchestrator.manifest import resolve
from orchestrator.step import Context, Deployment, StepFailed

FUNCTIONS = Path(__file__).parent.parent / "functions"
DOMAIN_RESTRICTED = {"LOCALCLOUD_ORG_POLICY_DOMAIN_RESTRICTED": "true"}
NOT_PERMITTED = "do not belong to a permitted customer"


def deploy_step(settings: Settings, clients: Clients, image: str, service: str, **fields) -> dict:
    """The ``deploy`` step's work for ``image`` and a manifest of ``fields``; its result."""
    manifest = resolve({"service": service, **fields}, {}, f"{service}.zip")
    deployment = Deployment(
        deployment_id=f"d-{uuid.uuid4().hex[:16]}",
        service=service,
        source=f"gs://{settings.sources_bucket}/{service}.zip",
        bucket=settings.sources_bucket,
        object=f"{service}.zip",
        generation=1,
        manifest=manifest,
        outputs={"push": {"image": image}},
    )
    return deploy.work(Context(settings, clients), deployment)


class Org:
    """The module's localcloud (a test that restarts it puts the new one here), its
    clients, a ``deploy`` step context and the image every service runs."""

    def __init__(self, instance: testing.Instance) -> None:
        self.instance = instance
        self.settings = Settings.defaults(instance.config.project)
        self.image = ""

    @property
    def clients(self) -> Clients:
        return Clients(Environment.from_env(self.instance.env))

    def deploy(self, service: str, **fields) -> dict:
        return deploy_step(self.settings, self.clients, self.image, service, **fields)

    def service(self, service: str):
        return self.clients.run_services.get_service(name=self.settings.service_path(service))

    def owner_token(self, url: str) -> str:
        """An ID token of the project's owner, who may invoke any private service."""
        cfg = self.instance.config
        issuer = Issuer(cfg.data_dir / "oidc", cfg.http_url)
        return issuer.mint_id_token(url + "/", owner_email(cfg.project))


@pytest.fixture(scope="module")
def org(tmp_path_factory, wheelhouse) -> Iterator[Org]:
    instance = testing.start(
        tmp_path_factory.mktemp("org-policy"),
        extra_env={**DOMAIN_RESTRICTED, "LOCALCLOUD_WHEELHOUSE": str(wheelhouse)},
    )
    org = Org(instance)
    try:
        with instance.client_env():  # the storage client reads os.environ
            bucket = org.clients.storage.create_bucket(f"org-src-{uuid.uuid4().hex[:8]}")
            org.image = build_function(
                org.clients,
                bucket,
                FUNCTIONS / "behaviours",
                "handle",
                f"us-central1-docker.pkg.dev/{instance.config.project}/functions/behaviours",
            )
        yield org
    finally:
        org.instance.stop()


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_domain_restricted_sharing_refuses_public_members_like_google(org):
    """Every member of the policy being set is checked; a service account of the project
    is a member of the organization, and accepted."""
    topic = f"projects/{org.instance.config.project}/topics/{_name('drs')}"
    org.clients.publisher.create_topic(name=topic)
    for public in ("allUsers", "allAuthenticatedUsers"):
        policy = policy_pb2.Policy(
            bindings=[
                policy_pb2.Binding(
                    role="roles/pubsub.publisher",
                    members=[
                        f"serviceAccount:a@{org.instance.config.project}.iam.gserviceaccount.com"
                    ],
                ),
                policy_pb2.Binding(role="roles/pubsub.subscriber", members=[public]),
            ]
        )
        with pytest.raises(exceptions.FailedPrecondition) as refused:
            org.clients.publisher.set_iam_policy(request={"resource": topic, "policy": policy})
        assert NOT_PERMITTED in refused.value.message
        assert "constraints/iam.allowedPolicyMemberDomains" in refused.value.message
        assert public in refused.value.message
    del policy.bindings[1]
    org.clients.publisher.set_iam_policy(request={"resource": topic, "policy": policy})


def test_a_public_deploy_works_where_allUsers_is_forbidden(org):
    """``allow_unauthenticated: true`` deploys with the invoker IAM check disabled: the
    service answers without a token, its IAM policy names nobody, and granting ``allUsers``
    by hand is refused as Google refuses it. ``false`` on the next deploy makes it private
    again."""
    name = _name("public")
    result = org.deploy(name, allow_unauthenticated=True)
    assert result["public"] is True
    assert call(result["url"])[0] == 200
    service = org.service(name)
    assert service.invoker_iam_disabled
    policy = org.clients.run_services.get_iam_policy(request={"resource": service.name})
    assert "allUsers" not in {m for b in policy.bindings for m in b.members}
    with pytest.raises(exceptions.FailedPrecondition, match=NOT_PERMITTED):
        make_public(org.clients, service.name)

    private = org.deploy(name, allow_unauthenticated=False)
    assert private["public"] is False
    assert not org.service(name).invoker_iam_disabled
    assert call(private["url"])[0] == 401
    assert call(private["url"], token=org.owner_token(private["url"]))[0] == 200


def test_an_invoker_setting_the_org_refuses_fails_the_deploy_and_keeps_the_old_revision(org):
    """With ``constraints/run.managed.requireInvokerIam`` enforced, a public deploy of a
    serving private service is DEPLOY_FAILED naming the constraint; the service is
    unchanged: the same revision serves, still private."""
    org.instance.extra_env["LOCALCLOUD_ORG_POLICY_REQUIRE_INVOKER_IAM"] = "true"
    org.instance = org.instance.restart()
    name = _name("kept")
    first = org.deploy(name, env={"GREETING": "first"})
    with pytest.raises(StepFailed) as failed:
        org.deploy(name, env={"GREETING": "second"}, allow_unauthenticated=True)
    assert failed.value.code == "DEPLOY_FAILED"
    assert "constraints/run.managed.requireInvokerIam" in failed.value.message
    assert f"revision {first['revision']} keeps serving" in failed.value.message
    assert failed.value.details["serving_revision"] == first["revision"]
    service = org.service(name)
    assert service.latest_ready_revision.endswith(first["revision"])
    assert not service.invoker_iam_disabled
    assert call(first["url"])[0] == 401
    status, body = call(first["url"], token=org.owner_token(first["url"]))
    assert status == 200 and json.loads(body)["greeting"] == "first"


def test_a_private_deploy_removes_an_allUsers_binding_of_earlier_versions(
    localcloud, build_image, clients, graveyard
):
    """On the session's localcloud (no organization policy): a service made public by
    granting ``allUsers`` (as earlier versions of the deploy step did) is private after a
    deploy with ``allow_unauthenticated: false``."""
    settings = Settings.defaults(localcloud.config.project)
    image = build_image("behaviours", "handle")
    name = _name("legacy")
    first = deploy_step(settings, clients, image, name, allow_unauthenticated=True)
    graveyard.append(settings.service_path(name))
    make_public(clients, settings.service_path(name))
    again = deploy_step(settings, clients, image, name, allow_unauthenticated=False)
    assert again["url"] == first["url"]
    policy = clients.run_services.get_iam_policy(request={"resource": settings.service_path(name)})
    assert "allUsers" not in {m for b in policy.bindings for m in b.members}
    assert call(again["url"])[0] == 401


def test_a_bad_org_policy_setting_is_named():
    with pytest.raises(ConfigError, match="LOCALCLOUD_ORG_POLICY_DOMAIN_RESTRICTED='maybe'"):
        Config.from_env({"LOCALCLOUD_ORG_POLICY_DOMAIN_RESTRICTED": "maybe"})
    cfg = Config.from_env({"LOCALCLOUD_ORG_POLICY_REQUIRE_INVOKER_IAM": "1"})
    assert (cfg.org_policy_domain_restricted, cfg.org_policy_require_invoker_iam) == (False, True)

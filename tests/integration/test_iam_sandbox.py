"""A deployed user function cannot use the pipeline's rights (issue 16).

The deploy pipeline holds wide rights: its ``deploy`` function may delete any Cloud Run
service, every function of it publishes to ``deploy-status``, and the intake reads the
sources bucket. A user's function deployed by the pipeline runs as the pipeline's runtime
account (``orch-runtime@``, ``Settings.runtime_service_account``), which Terraform grants
nothing (``pipeline/orchestrator/grants.json`` has no grant *to* it). On Google Cloud its code
calling those APIs with the official clients is refused: PERMISSION_DENIED (gRPC) or 403
(Cloud Storage's JSON API), naming the permission it lacks
(https://cloud.google.com/iam/docs/troubleshooting-access,
https://cloud.google.com/run/docs/securing/service-identity). localcloud under
``LOCALCLOUD_IAM=enforce`` must refuse the same calls the same way.

The module starts its own localcloud with ``enforce`` set explicitly (so a change of the
default cannot hide a regression), creates the pipeline's topic, bucket and a service named
like the pipeline's ``deploy`` function as the local user (an owner, as ``orch local up``
does), and deploys ``tests/functions/escape`` running as the runtime account. The function
uses the official clients unchanged, with no credentials: localcloud knows the caller from
the instance. Each denied call is also made by the local user, who succeeds, so the
resources exist, the requests are sound, and a localcloud that checks nothing fails this
test. ``LOCALCLOUD_IAM=off`` (for benchmarks) is shown to check nothing.
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import requests
from google.api_core import exceptions
from google.iam.v1 import policy_pb2
from google.pubsub_v1.services.publisher import PublisherClient
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

from localcloud import testing
from localcloud.core.config import Config
from localcloud.core.oidc import Issuer
from localcloud.testing import build_function, call, make_public, run_service
from orchestrator.clients import Clients, Environment
from orchestrator.config import Settings

FUNCTIONS = Path(__file__).parent.parent / "functions"
SOURCE = "hello.zip"


@dataclass
class Sandbox:
    """The module's enforcing localcloud, the pipeline's names in it, and the user's
    function (``url``) deployed as the runtime account; ``victim`` is another service."""

    instance: testing.Instance
    clients: Clients
    settings: Settings
    url: str = ""
    victim: str = ""

    @property
    def status_topic(self) -> str:
        return self.settings.topic_path(self.settings.status_topic)

    @property
    def runtime_member(self) -> str:
        return f"serviceAccount:{self.settings.runtime_service_account}"

    def attempt(self, what: str, **args: str) -> dict:
        """What the function's code saw making one call."""
        query = urllib.parse.urlencode({"what": what, **args})
        status, body = call(f"{self.url}/?{query}", timeout=120)
        assert status == 200, body
        return json.loads(body)


def _deploy(sandbox: Sandbox, image: str, service_id: str, account: str) -> str:
    service = sandbox.clients.run_services.create_service(
        parent=sandbox.settings.location_path,
        service=run_service(image, service_account=account),
        service_id=service_id,
    ).result(timeout=180)
    return service.name


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, wheelhouse) -> Iterator[Sandbox]:
    instance = testing.start(
        tmp_path_factory.mktemp("iam-sandbox"),
        extra_env={"LOCALCLOUD_IAM": "enforce", "LOCALCLOUD_WHEELHOUSE": str(wheelhouse)},
    )
    try:
        project = instance.config.project
        sandbox = Sandbox(
            instance, Clients(Environment.from_env(instance.env)), Settings.defaults(project)
        )
        with instance.client_env():  # the storage client reads os.environ
            storage = sandbox.clients.storage
            sources = storage.create_bucket(sandbox.settings.sources_bucket)
            sources.blob(SOURCE).upload_from_string(b"a user's source, for the pipeline only")
            sandbox.clients.publisher.create_topic(name=sandbox.status_topic)
            image = build_function(
                sandbox.clients,
                storage.create_bucket(f"escape-src-{uuid.uuid4().hex[:8]}"),
                FUNCTIONS / "escape",
                "attempt",
                f"us-central1-docker.pkg.dev/{project}/functions/escape",
            )
        runtime = sandbox.settings.runtime_service_account
        name = _deploy(sandbox, image, f"user-fn-{uuid.uuid4().hex[:6]}", runtime)
        make_public(sandbox.clients, name)
        sandbox.url = sandbox.clients.run_services.get_service(name=name).uri
        # Another service, named as the pipeline's own deploy function is.
        sandbox.victim = _deploy(
            sandbox, image, sandbox.settings.function_service("deploy"), runtime
        )
        yield sandbox
    finally:
        assert instance.stop() == 0, f"see {instance.log_path}"


def assert_denied(answer: dict, error: str, code: int, permission: str, resource: str) -> None:
    assert answer["ok"] is False, answer
    assert (answer["error"], answer["code"]) == (error, code), answer
    assert permission in answer["message"], answer
    assert resource in answer["message"], answer


def test_the_function_cannot_delete_another_service(sandbox):
    answer = sandbox.attempt("delete_service", name=sandbox.victim)
    assert_denied(answer, "PermissionDenied", 403, "run.services.delete", sandbox.victim)
    assert sandbox.clients.run_services.get_service(name=sandbox.victim).name == sandbox.victim


def test_the_function_cannot_publish_to_deploy_status(sandbox):
    answer = sandbox.attempt("publish", topic=sandbox.status_topic)
    assert_denied(answer, "PermissionDenied", 403, "pubsub.topics.publish", sandbox.status_topic)
    # The local user can: the topic exists and the publish is sound.
    future = sandbox.clients.publisher.publish(sandbox.status_topic, b"from the local user")
    assert future.result(timeout=30)


def test_the_function_cannot_read_or_list_the_sources_bucket(sandbox):
    bucket = sandbox.settings.sources_bucket
    account = sandbox.settings.runtime_service_account
    answer = sandbox.attempt("read", bucket=bucket, object=SOURCE)
    obj = f"buckets/{bucket}/objects/{SOURCE}"
    assert_denied(answer, "Forbidden", 403, "storage.objects.get", obj)
    assert f"{account} does not have storage.objects.get access" in answer["message"]
    answer = sandbox.attempt("list", bucket=bucket)
    assert_denied(answer, "Forbidden", 403, "storage.objects.list", f"buckets/{bucket}")
    assert f"{account} does not have storage.objects.list access" in answer["message"]
    with sandbox.instance.client_env():
        storage = sandbox.clients.storage
        assert storage.bucket(bucket).blob(SOURCE).download_as_bytes().startswith(b"a user's")
        assert [b.name for b in storage.list_blobs(bucket)] == [SOURCE]


def test_a_publisher_grant_on_one_topic_reaches_that_topic_only(sandbox):
    publisher = sandbox.clients.publisher
    project = sandbox.settings.project
    granted = f"projects/{project}/topics/granted-{uuid.uuid4().hex[:6]}"
    other = f"projects/{project}/topics/other-{uuid.uuid4().hex[:6]}"
    for topic in (granted, other):
        publisher.create_topic(name=topic)
    policy = publisher.get_iam_policy(request={"resource": granted})
    policy.bindings.append(
        policy_pb2.Binding(role="roles/pubsub.publisher", members=[sandbox.runtime_member])
    )
    publisher.set_iam_policy(request={"resource": granted, "policy": policy})
    assert sandbox.attempt("publish", topic=granted) == {"ok": True}
    for topic in (other, sandbox.status_topic):
        answer = sandbox.attempt("publish", topic=topic)
        assert_denied(answer, "PermissionDenied", 403, "pubsub.topics.publish", topic)


def test_the_local_user_may_delete_the_service_the_function_could_not(sandbox):
    """Last in the module: the delete the function was refused, made by an owner."""
    sandbox.clients.run_services.delete_service(name=sandbox.victim).result(timeout=120)
    with pytest.raises(exceptions.NotFound):
        sandbox.clients.run_services.get_service(name=sandbox.victim)


# --- LOCALCLOUD_IAM=off: for measuring what enforcement costs, nothing checked -----------


def test_off_mode_checks_no_permission_but_still_verifies_tokens(tmp_path):
    """A principal granted nothing publishes and reads; a forged token is still refused."""
    assert Config.from_env({"LOCALCLOUD_IAM": "off"}).iam == "off"
    instance = testing.start(tmp_path / "data", extra_env={"LOCALCLOUD_IAM": "off"})
    try:
        cfg = instance.config
        issuer = Issuer(cfg.data_dir / "oidc", cfg.http_url)
        nobody = issuer.mint_access_token("nobody@example.com")
        with instance.client_env():
            clients = Clients(Environment.from_env(instance.env))
            topic = f"projects/{cfg.project}/topics/unchecked"
            clients.publisher.create_topic(name=topic)
            bucket = clients.storage.create_bucket(f"unchecked-{uuid.uuid4().hex[:8]}")
            bucket.blob("o").upload_from_string(b"data")
        publisher = PublisherClient(
            transport=PublisherGrpcTransport(channel=grpc.insecure_channel(cfg.grpc_address))
        )
        as_nobody = [("authorization", f"Bearer {nobody}")]
        sent = publisher.publish(topic=topic, messages=[{"data": b"x"}], metadata=as_nobody)
        assert len(sent.message_ids) == 1
        with pytest.raises(exceptions.Unauthenticated):
            publisher.publish(
                topic=topic,
                messages=[{"data": b"x"}],
                metadata=[("authorization", "Bearer ya29.not-a-token")],
            )
        media = f"http://{cfg.storage_address}/storage/v1/b/{bucket.name}/o/o?alt=media"
        read = requests.get(media, headers={"Authorization": f"Bearer {nobody}"}, timeout=30)
        assert (read.status_code, read.content) == (200, b"data")
        forged = requests.get(media, headers={"Authorization": "Bearer ya29.x"}, timeout=30)
        assert forged.status_code == 401
    finally:
        assert instance.stop() == 0

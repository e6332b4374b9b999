"""Every grant of grants.json, taken away one at a time: the deployment fails where it needs it.

The table below has one row per grant (``WHO ROLE ON``, the key Terraform and ``orch local
up`` use), derived from grants.json itself: a grant without a row fails
``test_every_grant_has_a_row``. Each case removes that one IAM binding through the official
client of the resource (as ``orch/provision.py`` applies it), runs the smallest thing that
needs it through the pipeline's public entry points (the same source uploaded again, whose
build is cached; a deploy request; a request that binds triggers), and checks what the user
sees on ``deploy-status``: the step that failed, its code, and the permission named. The
service deployed once by the module fixture keeps serving its old body throughout (nothing
lost), and the binding is restored whatever happens (the session's localcloud is shared).
Grants of ``api: functions`` have a service of their own, a function of the Cloud Functions
API (``function_target``): a deploy request changing its environment reuses its image, one
changing its trigger stops in the build step, and a step that fails while following the
function's operation leaves that operation to end with the function ACTIVE.

Rows that cannot end in a failed status event say what the user sees instead (a
dead-lettered delivery and the function's log; a failed workflow execution). Rows of grants
nothing uses say so: the deployment succeeds without them (see the row's ``note``). Rows
localcloud cannot exercise yet are ``xfail(strict=True)`` with the reason, so they turn red
when it can; rows that only mean something on Google Cloud are skipped with the reason.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from localcloud.testing import wait_for, zip_tree
from orch import grants as grants_file
from orch.provision import NO_AGENTS, Provisioner
from orchestrator import manifest
from orchestrator.config import pipeline as pipeline_names
from orchestrator.records import Records, claim_name, lock_name
from orchestrator.status import StatusEvent
from tests.e2e.conftest import Pipeline

GRANTS = {g.key: g for g in grants_file.load().grants}

# The fixture's function: answers BODY, and logs the id of each event delivered to it (a
# trigger's delivery is how the user sees one work).
BODY = "before"
MAIN = (
    "import functions_framework\n\n\n"
    "@functions_framework.http\n"
    "def hello(request):\n"
    "    if request.headers.get('ce-id'):\n"
    "        print('event', request.headers['ce-id'], flush=True)\n"
    f"    return {BODY!r}\n"
)

# What a row expects.
FAILS = "fails"  # a failed status event at `step`, `code`, naming `permission`
DEAD_LETTER = "dead-letter"  # no status event: the delivery is dead-lettered, the log says why
EXECUTION_FAILS = "execution fails"  # no `done`: the workflow execution fails naming it
UNNEEDED = "unneeded"  # the deployment succeeds without it; `note` says why
SKIP = "skip"

ONLY_ON_GOOGLE = (
    "used only on Google Cloud, by Cloud Run functions' builds of the orchestrator's own "
    "functions (`orch local up` builds them with Cloud Build from the records bucket, "
    "logging to Cloud Storage only)"
)


@dataclass(frozen=True)
class Row:
    action: str  # what runs: see Cases.run
    expect: str
    step: str = ""
    code: str = ""
    permission: str = ""
    where: str = "message"  # the failed event's message, or a key of its details
    note: str = ""  # why a row expects no failure, or is skipped
    xfail: str = ""  # why localcloud cannot show it yet
    api: str = "run"  # the service the action deploys: `target` (run) or `function_target`
    says: str = ""  # what else the failure's message must say (whose account to grant)


def records(action: str, step: str) -> Row:
    """The records bucket: every function reads and writes claims, locks and results."""
    return Row(action, FAILS, step, "INTERNAL", "storage.objects.")


def status(action: str, step: str) -> Row:
    if step == "accepted":  # the intake cannot report at all: Eventarc gives up on it
        return Row(action, DEAD_LETTER, permission="pubsub.topics.publish")
    return Row(action, FAILS, step, "INTERNAL", "pubsub.topics.publish")


def functions_row(action: str, step: str, code: str, permission: str, **extra: Any) -> Row:
    """A row of ``api: functions``: its action deploys ``function_target``."""
    return Row(action, FAILS, step, code, permission, api="functions", **extra)


NEVER_READS_EXECUTIONS = (
    "unneeded: only the build step (a lock held by another deployment) and the intake "
    "(a stale claim) read executions"
)

INVOKER_READS_EXECUTIONS = (
    "redundant: roles/workflows.invoker on the project (granted to the intake functions too) "
    "holds workflows.executions.get and .list, all a stale claim's taker reads"
)

ROWS: dict[str, Row] = {
    # ---- every function's records
    "function:on-source-uploaded roles/storage.objectUser bucket:records": records(
        "upload", "accepted"
    ),
    "function:on-deploy-request roles/storage.objectUser bucket:records": records(
        "request", "accepted"
    ),
    "function:build roles/storage.objectUser bucket:records": records("upload", "build"),
    "function:push roles/storage.objectUser bucket:records": records("upload", "push"),
    "function:deploy roles/storage.objectUser bucket:records": records("upload", "deploy"),
    "function:bind-triggers roles/storage.objectUser bucket:records": records(
        "upload", "bind_triggers"
    ),
    # ---- the intake reads the source
    "function:on-source-uploaded roles/storage.objectViewer bucket:sources": Row(
        "upload", FAILS, "accepted", "SOURCE_UNREADABLE", "storage.objects.get"
    ),
    "function:on-deploy-request roles/storage.objectViewer bucket:sources": Row(
        "request", FAILS, "accepted", "SOURCE_UNREADABLE", "storage.objects.get"
    ),
    # ---- every function's status events
    "function:on-source-uploaded roles/pubsub.publisher topic:status": status("upload", "accepted"),
    "function:on-deploy-request roles/pubsub.publisher topic:status": status("request", "accepted"),
    "function:build roles/pubsub.publisher topic:status": Row(
        "upload",
        UNNEEDED,
        note="redundant: roles/pubsub.editor on the project (granted to build for `api: "
        "functions`' Pub/Sub triggers) holds pubsub.topics.publish on every topic",
    ),
    "function:push roles/pubsub.publisher topic:status": status("upload", "push"),
    "function:deploy roles/pubsub.publisher topic:status": status("upload", "deploy"),
    "function:bind-triggers roles/pubsub.publisher topic:status": Row(
        "upload",
        UNNEEDED,
        note="redundant: roles/pubsub.editor on the project (the grant after it) holds "
        "pubsub.topics.publish on every topic",
    ),
    # ---- reading workflow executions: stale locks and claims
    "function:on-source-uploaded roles/workflows.viewer project": Row(
        "upload", UNNEEDED, note=INVOKER_READS_EXECUTIONS
    ),
    "function:on-deploy-request roles/workflows.viewer project": Row(
        "stale claim request", UNNEEDED, note=INVOKER_READS_EXECUTIONS
    ),
    "function:build roles/workflows.viewer project": Row(
        "stale lock", FAILS, "build", "INTERNAL", "workflows.executions.get"
    ),
    "function:push roles/workflows.viewer project": Row(
        "upload", UNNEEDED, note=NEVER_READS_EXECUTIONS
    ),
    "function:deploy roles/workflows.viewer project": Row(
        "upload", UNNEEDED, note=NEVER_READS_EXECUTIONS
    ),
    "function:bind-triggers roles/workflows.viewer project": Row(
        "upload", UNNEEDED, note=NEVER_READS_EXECUTIONS
    ),
    # ---- starting the workflow
    "function:on-source-uploaded roles/workflows.invoker project": Row(
        "upload", FAILS, "done", "WORKFLOW_NOT_STARTED", "workflows.executions.create"
    ),
    "function:on-deploy-request roles/workflows.invoker project": Row(
        "request", FAILS, "done", "WORKFLOW_NOT_STARTED", "workflows.executions.create"
    ),
    # ---- the steps' own calls
    "function:build roles/cloudbuild.builds.editor project": Row(
        "upload", FAILS, "build", "BUILD_FAILED", "cloudbuild.builds.create"
    ),
    "function:build roles/iam.serviceAccountUser account:build": Row(
        "upload", FAILS, "build", "BUILD_FAILED", "iam.serviceAccounts.actAs"
    ),
    "function:build roles/storage.objectViewer bucket:build_logs": Row(
        "failing build", FAILS, "build", "BUILD_FAILED", "storage.objects.get", where="log_error"
    ),
    "function:push roles/artifactregistry.writer repository": Row(
        "upload",
        FAILS,
        "push",
        "PUSH_FAILED",
        "artifactregistry.repositories.downloadArtifacts",
    ),
    "function:deploy roles/run.admin project": Row(
        # roles/cloudfunctions.viewer (for `api: functions`) holds run.services.get
        "upload",
        FAILS,
        "deploy",
        "DEPLOY_FAILED",
        "run.services.update",
    ),
    "function:deploy roles/iam.serviceAccountUser account:runtime": Row(
        "upload", FAILS, "deploy", "DEPLOY_FAILED", "iam.serviceAccounts.actAs"
    ),
    "function:bind-triggers roles/eventarc.admin project": Row(
        # roles/cloudfunctions.viewer (for `api: functions`) holds eventarc.triggers.list
        "triggers",
        FAILS,
        "bind_triggers",
        "TRIGGER_FAILED",
        "eventarc.triggers.create",
    ),
    "function:bind-triggers roles/pubsub.editor project": Row(
        "triggers", FAILS, "bind_triggers", "INTERNAL", "pubsub.topics.create"
    ),
    "function:bind-triggers roles/run.admin project": Row(
        # roles/cloudfunctions.viewer (for `api: functions`) holds run.services.getIamPolicy
        "triggers",
        FAILS,
        "bind_triggers",
        "INTERNAL",
        "run.services.setIamPolicy",
    ),
    "function:bind-triggers custom:bucketLocationReader project": Row(
        "triggers", FAILS, "bind_triggers", "TRIGGER_FAILED", "storage.buckets.get"
    ),
    "function:bind-triggers roles/iam.serviceAccountUser account:trigger": Row(
        "triggers", FAILS, "bind_triggers", "TRIGGER_FAILED", "iam.serviceAccounts.actAs"
    ),
    # ---- api: functions (function_target): the build step starts the function's update;
    # deploy and bind_triggers follow its operation. A deploy request changing only the
    # environment reuses the function's image (no build).
    "function:build roles/cloudfunctions.developer project": functions_row(
        # the first call it allows: reading the service, to refuse one the other API manages
        "request",
        "build",
        "INTERNAL",
        "run.services.get",
    ),
    "function:build roles/iam.serviceAccountUser account:runtime": functions_row(
        "request", "build", "DEPLOY_FAILED", "iam.serviceAccounts.actAs"
    ),
    "function:build roles/iam.serviceAccountUser account:trigger": functions_row(
        "pubsub trigger", "build", "DEPLOY_FAILED", "iam.serviceAccounts.actAs"
    ),
    "function:build roles/pubsub.editor project": functions_row(
        "pubsub trigger", "build", "INTERNAL", "pubsub.topics.create"
    ),
    "function:build custom:bucketLocationReader project": functions_row(
        "storage trigger",
        "build",
        "TRIGGER_FAILED",
        "storage.buckets.get",
        says="the build function's service account",
    ),
    "function:deploy roles/cloudfunctions.viewer project": functions_row(
        "request", "deploy", "INTERNAL", "cloudfunctions.operations.get"
    ),
    "function:bind-triggers roles/cloudfunctions.viewer project": functions_row(
        "request", "bind_triggers", "INTERNAL", "cloudfunctions.operations.get"
    ),
    # ---- the workflow's account
    "account:workflow roles/run.invoker service:build": Row(
        "upload", FAILS, "build", "STEP_UNAVAILABLE", "run.routes.invoke"
    ),
    "account:workflow roles/run.invoker service:push": Row(
        "upload", FAILS, "push", "STEP_UNAVAILABLE", "run.routes.invoke"
    ),
    "account:workflow roles/run.invoker service:deploy": Row(
        "upload", FAILS, "deploy", "STEP_UNAVAILABLE", "run.routes.invoke"
    ),
    "account:workflow roles/run.invoker service:bind-triggers": Row(
        "upload", FAILS, "bind_triggers", "STEP_UNAVAILABLE", "run.routes.invoke"
    ),
    "account:workflow roles/pubsub.publisher topic:status": Row(
        "upload",
        EXECUTION_FAILS,
        permission="pubsub.topics.publish",
    ),
    "account:workflow roles/logging.logWriter project": Row(
        "",
        SKIP,
        note="nothing fails without it: Workflows drops the call logs it may not write "
        "(LOG_ERRORS_ONLY), and localcloud keeps call logs in files of its own",
    ),
    # ---- the trigger account
    "account:trigger roles/eventarc.eventReceiver project": Row(
        "",
        SKIP,
        note="localcloud's Eventarc does not check eventarc.events.receiveEvent, and Google "
        "documents the role as required without saying how a delivery fails without it "
        "(https://cloud.google.com/eventarc/docs/all-roles-permissions)",
    ),
    "account:trigger roles/run.invoker service:on-source-uploaded": Row(
        "upload",
        UNNEEDED,
        note="redundant while `account:trigger roles/run.invoker project` stands",
    ),
    "account:trigger roles/run.invoker service:on-deploy-request": Row(
        "request",
        UNNEEDED,
        note="redundant while `account:trigger roles/run.invoker project` stands",
    ),
    "account:trigger roles/run.invoker project": Row(
        "triggers",
        UNNEEDED,
        note="unneeded for deployed services: bind_triggers grants the trigger account "
        "run.invoker on each service it binds, and deploy keeps that binding; an event "
        "published to the trigger's topic still reaches the service",
    ),
    # ---- the build account
    "account:build roles/storage.objectViewer bucket:sources": Row(
        "upload",
        FAILS,
        "build",
        "BUILD_FAILED",
        "storage.objects.get",
    ),
    "account:build roles/storage.objectViewer bucket:code": Row(
        "",
        SKIP,
        note="read only when `orch local up` builds the orchestrator's own functions (from the "
        "records bucket locally); tests/integration/test_provision.py builds them with it",
    ),
    "account:build roles/storage.objectViewer project": Row("", SKIP, note=ONLY_ON_GOOGLE),
    "account:build roles/artifactregistry.writer repository": Row(
        "upload",
        FAILS,
        "build",
        "BUILD_FAILED",
        "artifactregistry.repositories.uploadArtifacts",
    ),
    "account:build roles/artifactregistry.writer project": functions_row(
        # the same source uploaded again: a new generation, so Cloud Functions builds it
        "upload",
        "build",
        "BUILD_FAILED",
        "artifactregistry.repositories.uploadArtifacts",
    ),
    "account:build roles/storage.admin bucket:build_logs": Row(
        "upload",
        FAILS,
        "build",
        "BUILD_FAILED",
        "storage.objects.create",
    ),
    "account:build roles/logging.logWriter project": Row("", SKIP, note=ONLY_ON_GOOGLE),
    # ---- Google's service agents
    "agent:storage roles/pubsub.publisher project": Row("", SKIP, note=NO_AGENTS),
    "agent:pubsub roles/iam.serviceAccountTokenCreator account:trigger": Row(
        "", SKIP, note=NO_AGENTS
    ),
    "agent:pubsub roles/pubsub.publisher topic:dead_letter": Row("", SKIP, note=NO_AGENTS),
    "agent:pubsub roles/pubsub.subscriber subscription:source-uploaded": Row(
        "", SKIP, note=NO_AGENTS
    ),
    "agent:pubsub roles/pubsub.subscriber subscription:deploy-request": Row(
        "", SKIP, note=NO_AGENTS
    ),
}


def test_every_grant_has_a_row():
    """A grant added to grants.json needs a row here; a row of a grant that is gone goes."""
    assert sorted(set(GRANTS) - set(ROWS)) == [], "grants without a row"
    assert sorted(set(ROWS) - set(GRANTS)) == [], "rows of no grant"


def test_skipped_rows_are_the_grants_local_provisioning_skips_and_say_why():
    for key, row in ROWS.items():
        grant = GRANTS[key]
        if grant.who.startswith("agent:"):
            assert (row.expect, row.note) == (SKIP, NO_AGENTS), key
        if row.expect == SKIP:
            assert row.note, key
        if row.expect == UNNEEDED:
            assert row.note, key


# ------------------------------------------------------------------ the removed grant


class Binding:
    """One grant's IAM binding, removed and put back through the official clients
    ``orch local up`` applies it with (``Provisioner``: the resource, its policy's reader and
    writer, the member and the role as grants.json names them)."""

    def __init__(self, pipeline: Pipeline, grant: grants_file.Grant) -> None:
        self.grant = grant
        self.p = Provisioner(pipeline.settings, pipeline.clients, log=lambda _line: None)
        self.resource = self.p._grant_target(grant)
        self.get, self.put = self.p._policy_io(grant.kind)
        self.role = self.p._role(grant.role)
        self.member = self.p._member(grant.who)

    def remove(self) -> None:
        for attempt in range(3):
            policy = self.get(self.resource)
            found = [
                b
                for b in policy.bindings
                if b.role == self.role
                and self.member in b.members
                and b.HasField("condition") == (self.grant.condition is not None)
            ]
            assert found, f"{self.grant.key} is not granted on {self.resource}"
            for binding in found:
                binding.members.remove(self.member)
            try:
                self.put(self.resource, policy)
                return
            except Exception:
                if attempt == 2:
                    raise

    def restore(self) -> None:
        bucket = self.p._function_sources_bucket() if self.grant.condition else ""
        self.p._grant_on(self.grant.kind, self.resource, [self.grant], bucket)


# ------------------------------------------------------------------ the service that keeps serving


@dataclass
class Target:
    service: str
    object: str  # its source in the sources bucket
    url: str
    revision: str  # the revision serving before the case
    watched: str  # a bucket its storage triggers watch
    first: str  # the first deployment's id (a finished execution, for a stale lock)
    fields: dict[str, Any] = field(default_factory=dict)  # its manifest's, beyond source()'s


# The function_target's manifest: deployed through the Cloud Functions API.
FUNCTIONS = {"api": "functions", "runtime": "python311"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def source(service: str, **fields: Any) -> bytes:
    import yaml

    manifest_fields = {"service": service, "entry_point": "hello", "allow_unauthenticated": True}
    files: dict[str, str | bytes] = {
        "main.py": MAIN,
        "function.yaml": yaml.safe_dump({**manifest_fields, **fields}),
    }
    return zip_tree(files)


def deployed(pipeline: Pipeline, prefix: str, fields: dict[str, Any]) -> Target:
    """A service deployed once (so a previous version serves), and a bucket to watch."""
    service = unique(prefix)
    name = f"{service}.zip"
    dep_id, _ = pipeline.upload(source(service, **fields), name)
    final = [e for e in pipeline.wait(dep_id, timeout=180) if e.step == "done"][-1]
    assert final.state == "succeeded", final.message
    location = pipeline.settings.region.upper()
    watched = pipeline.clients.storage.create_bucket(unique(f"{prefix}-watched"), location=location)
    revision = pipeline.service(service).latest_ready_revision
    return Target(service, name, final.details["url"], revision, watched.name, dep_id, fields)


@pytest.fixture(scope="module")
def target(pipeline: Pipeline) -> Target:
    return deployed(pipeline, "grants", {})


@pytest.fixture(scope="module")
def function_target(pipeline: Pipeline) -> Target:
    """The service of the ``api: functions`` rows: a function of the Cloud Functions API."""
    return deployed(pipeline, "grants-fn", FUNCTIONS)


def function_settled(pipeline: Pipeline, target: Target) -> Any:
    """The function once its last operation ended (a step that failed while following it
    leaves it running): ACTIVE, or the case left it broken."""
    from google.cloud import functions_v2

    name = f"{pipeline.settings.location_path}/functions/{target.service}"
    deploying = functions_v2.Function.State.DEPLOYING

    def settled() -> Any:
        fn = pipeline.clients.functions.get_function(name=name)
        return None if fn.state == deploying else fn

    fn = wait_for(settled, 60, f"function {target.service} to settle", every=0.2)
    assert fn.state == functions_v2.Function.State.ACTIVE, fn.state_messages
    return fn


# ------------------------------------------------------------------ the cases


class Cases:
    """What one row runs, and what it finds."""

    def __init__(self, pipeline: Pipeline, target: Target) -> None:
        self.p = pipeline
        self.t = target
        self.s = pipeline.settings
        self.records = Records(self.s, pipeline.clients.storage)
        self.needle = ""  # what a delivery of the last action carries
        self.message_dep_id = ""  # the id of a request intake could not read
        self.topic = ""  # the topic a `triggers` action's trigger listens to

    # ---- actions: each returns the id of the deployment (or delivery) whose events tell

    def run(self, action: str) -> str:
        return {
            "upload": self.upload,
            "request": self.request,
            "triggers": self.triggers,
            "pubsub trigger": self.pubsub_trigger,
            "storage trigger": self.storage_trigger,
            "failing build": self.failing_build,
            "stale lock": self.stale_lock,
            "stale claim request": self.stale_claim_request,
        }[action]()

    def upload(self) -> str:
        """The service's source again: a deployment whose build is cached."""
        dep_id, generation = self.p.upload(source(self.t.service, **self.t.fields), self.t.object)
        self.needle = str(generation)  # what its storage event carries
        return dep_id

    def _current(self) -> tuple[str, int]:
        blob = self.p.clients.storage.bucket(self.s.sources_bucket).get_blob(self.t.object)
        return f"gs://{self.s.sources_bucket}/{self.t.object}#{blob.generation}", blob.generation

    def _request(self, fields: dict[str, Any]) -> tuple[str, str]:
        """Publish a deploy request for the service's current source with ``fields``;
        (the deployment's id, the id intake reports a request it cannot use under)."""
        uri, generation = self._current()
        document = {"source": uri, "service": self.t.service, **fields}
        topic = self.s.topic_path(self.s.requests_topic)
        message_id = self.p.clients.publisher.publish(topic, json.dumps(document).encode())
        fields = {k: v for k, v in document.items() if k != "source"}
        dep_id = manifest.deployment_id(self.s.sources_bucket, self.t.object, generation, fields)
        return dep_id, manifest.deployment_id("deploy-requests", message_id.result(30), 0)

    def request(self) -> str:
        """A deploy request of the same source with settings of its own (a new deployment)."""
        self.needle = uuid.uuid4().hex  # what the request's message carries
        dep_id, as_message = self._request({"env": {"CASE": self.needle}})
        self.message_dep_id = as_message
        return dep_id

    def triggers(self) -> str:
        """A deploy request binding a new Pub/Sub trigger and a storage trigger, to a service
        whose invoker policy does not name the trigger account yet (as before its first
        trigger: an earlier case's bind_triggers may have granted it)."""
        self._without_trigger_invoker()
        self.topic = unique("grants-topic")
        triggers = [{"pubsub": {"topic": self.topic}}, {"storage": {"bucket": self.t.watched}}]
        dep_id, _ = self._request({"triggers": triggers})
        return dep_id

    def _without_trigger_invoker(self) -> None:
        services = self.p.clients.run_services
        resource = self.s.service_path(self.t.service)
        policy = services.get_iam_policy(request={"resource": resource})
        member = f"serviceAccount:{self.s.trigger_service_account}"
        found = [
            b for b in policy.bindings if b.role == "roles/run.invoker" and member in b.members
        ]
        for binding in found:
            binding.members.remove(member)
        if found:
            services.set_iam_policy(request={"resource": resource, "policy": policy})

    def pubsub_trigger(self) -> str:
        """A deploy request binding one new Pub/Sub trigger (a function has one at most)."""
        self.topic = unique("grants-topic")
        dep_id, _ = self._request({"triggers": [{"pubsub": {"topic": self.topic}}]})
        return dep_id

    def storage_trigger(self) -> str:
        """A deploy request binding one storage trigger."""
        dep_id, _ = self._request({"triggers": [{"storage": {"bucket": self.t.watched}}]})
        return dep_id

    def failing_build(self) -> str:
        """A source whose build fails (its requirement exists nowhere), for its log."""
        files = {"main.py": MAIN, "requirements.txt": "no-such-package-anywhere-xyz==1.0\n"}
        import yaml

        files["function.yaml"] = yaml.safe_dump(
            {"service": self.t.service, "entry_point": "hello", "allow_unauthenticated": True}
        )
        dep_id, _ = self.p.upload(zip_tree(files), f"{self.t.service}-broken.zip")
        return dep_id

    def stale_lock(self) -> str:
        """A lock left by a deployment whose workflow has ended (the first one's): the
        build must read that execution to tell it is stale."""
        (execution,) = self.p.executions(self.t.first)
        lock = {"deployment_id": self.t.first, "execution": execution, "since": "2000-01-01"}
        self.records.write(lock_name(self.t.service), lock)
        return self.upload()

    def _stale_claim(self, dep_id: str, uri: str) -> None:
        """A claim left by an intake attempt that died before it started the workflow, long
        enough ago to be taken over: the taker first looks for an execution it started."""
        claim = {
            "deployment_id": dep_id,
            "service": self.t.service,
            "source": uri,
            "execution": None,
            "state": "claimed",
            "error": None,
            "created": "2000-01-01T00:00:00.000Z",
        }
        self.records.write(claim_name(dep_id), claim)

    def stale_claim_request(self) -> str:
        uri, generation = self._current()
        fields = {"service": self.t.service, "env": {"CASE": uuid.uuid4().hex[:8]}}
        dep_id = manifest.deployment_id(self.s.sources_bucket, self.t.object, generation, fields)
        self._stale_claim(dep_id, uri)
        topic = self.s.topic_path(self.s.requests_topic)
        self.p.clients.publisher.publish(topic, json.dumps({"source": uri, **fields}).encode())
        return dep_id

    # ---- what the user sees

    def dead_lettered(self, needle: str) -> None:
        """The intake's delivery, dead-lettered after Eventarc's attempts."""
        wait_for(
            lambda: self.dead_letter_names(needle), 60, f"a dead letter naming {needle}", every=0.2
        )

    def dead_letter_names(self, needle: str) -> bool:
        """Whether a dead-lettered delivery names ``needle`` (it is acknowledged)."""
        name = pipeline_names()["dead_letter_subscription"]
        subscription = f"projects/{self.s.project}/subscriptions/{name}"
        subscriber = self.p.clients.subscriber
        got = subscriber.pull(
            subscription=subscription, max_messages=50, return_immediately=True, timeout=10
        )
        mine = [
            m.ack_id
            for m in got.received_messages
            if needle in m.message.data.decode(errors="replace")
            or needle in json.dumps(dict(m.message.attributes))
        ]
        if mine:
            subscriber.acknowledge(subscription=subscription, ack_ids=mine)
        return bool(mine)

    def ended(self, dep_id: str) -> list[StatusEvent]:
        """The deployment's events once it ended; AssertionError if its delivery was
        dead-lettered instead (checked as it goes: it would never end)."""

        def end() -> list[StatusEvent] | None:
            # A request intake could not use at all is reported under its message's id.
            events = self.p.seen(dep_id) + self.p.seen(self.message_dep_id)
            if any(e.step == "done" or (e.step, e.state) == ("accepted", "failed") for e in events):
                return events
            if self.needle and self.dead_letter_names(self.needle):
                raise AssertionError(f"the delivery of {dep_id} was dead-lettered")
            return None

        return wait_for(end, 60, f"deployment {dep_id} to end", every=0.2)

    def function_log(self, function: str) -> str:
        service = self.p.service(self.s.function_service(function))
        revision = self.p.clients.run_revisions.get_revision(name=service.latest_ready_revision)
        log = self.p.clients.env.log_file(revision.log_uri)
        return log.read_text(errors="replace") if log is not None and log.is_file() else ""

    def delivered(self) -> None:
        """A message published to the `triggers` action's topic reaches the service."""
        topic = self.s.topic_path(self.topic)
        message_id = self.p.clients.publisher.publish(topic, b"hello").result(timeout=30)
        service = self.p.service(self.t.service)
        revision = self.p.clients.run_revisions.get_revision(name=service.latest_ready_revision)
        log = self.p.clients.env.log_file(revision.log_uri)
        assert log is not None
        wait_for(
            lambda: log.is_file() and f"event {message_id}" in log.read_text(errors="replace"),
            60,
            f"message {message_id} to reach {self.t.service}",
        )


def _marks(key: str) -> Any:
    row = ROWS.get(key)
    if row is None:
        return pytest.param(key, marks=pytest.mark.skip(reason="no row: see the test above"))
    if row.expect == SKIP:
        return pytest.param(key, marks=pytest.mark.skip(reason=row.note))
    if row.xfail:
        return pytest.param(key, marks=pytest.mark.xfail(reason=row.xfail, strict=True))
    return key


@pytest.fixture
def cases(pipeline: Pipeline, request: pytest.FixtureRequest) -> Iterator[Cases]:
    """The row's cases, on the service its action deploys (made when a row first needs it)."""
    row = ROWS[request.node.callspec.params["key"]]
    name = "function_target" if row.api == "functions" else "target"
    target: Target = request.getfixturevalue(name)
    yield Cases(pipeline, target)
    # A stale lock a case left (a planted one, or a deployment refused mid-way) is taken over
    # by the next deployment anyway; a planted one goes now.
    found = Records(pipeline.settings, pipeline.clients.storage).read(lock_name(target.service))
    if found is not None and found[0].get("deployment_id") == target.first:
        Records(pipeline.settings, pipeline.clients.storage).delete(
            lock_name(target.service), found[1]
        )


@pytest.mark.parametrize("key", [_marks(k) for k in GRANTS])
def test_a_deployment_without_the_grant_fails_where_it_needs_it_and_loses_nothing(
    pipeline: Pipeline, cases: Cases, key: str
):
    target = cases.t
    row = ROWS[key]
    grant = GRANTS[key]
    binding = Binding(pipeline, grant)
    before = pipeline.service(target.service).latest_ready_revision
    binding.remove()
    try:
        dep_id = cases.run(row.action)
        if row.expect == FAILS:
            events = cases.ended(dep_id)
            at_step = [e for e in events if e.state == "failed" and e.step == row.step]
            done = [e for e in events if e.state == "failed" and e.step == "done"]
            # The step reports its failure, then the workflow ends the deployment with it;
            # a step that cannot publish (or cannot be called) leaves it to the workflow.
            assert at_step or done, [(e.step, e.state) for e in events]
            event = (at_step or done)[0]
            assert event.error_code == row.code, event.message
            said = event.message if row.where == "message" else event.details.get(row.where, "")
            assert row.permission in said, f"{row.permission} not in {said!r}"
            assert row.says in event.message, f"{row.says!r} not in {event.message!r}"
            if row.step in ("build", "push", "deploy", "bind_triggers"):
                assert done and done[0].details["step"] == row.step, done
                assert done[0].error_code == row.code
                assert row.permission in done[0].message or row.where != "message"
        elif row.expect == DEAD_LETTER:
            function = grant.who.removeprefix("function:")
            cases.dead_lettered(cases.needle)
            assert [e for e in pipeline.seen(dep_id) if e.step == "accepted"] == []
            assert row.permission in cases.function_log(function)
        elif row.expect == EXECUTION_FAILS:
            from google.cloud.workflows import executions_v1

            def ended() -> Any:
                names = pipeline.executions(dep_id)
                if not names:
                    return None
                run = pipeline.clients.executions.get_execution(name=names[0])
                return None if run.state == executions_v1.Execution.State.ACTIVE else run

            run = wait_for(ended, 60, f"the execution of {dep_id} to end")
            assert run.state == executions_v1.Execution.State.FAILED
            assert row.permission in run.error.payload
            assert [e for e in pipeline.seen(dep_id) if e.step == "done"] == []
        else:  # UNNEEDED
            events = cases.ended(dep_id)
            final = [e for e in events if e.step in ("done", "accepted") and e.state != "running"]
            assert final and final[-1].step == "done", [(e.step, e.state) for e in events]
            assert final[-1].state == "succeeded", final[-1].message
            if row.action == "triggers":
                cases.delivered()
    finally:
        binding.restore()
    if row.api == "functions":  # a failed step leaves the function's update to finish
        function_settled(pipeline, target)
    # Nothing lost: the service answers as before, from the same revision when the
    # deployment stopped before deploying.
    assert pipeline.get(target.url) == BODY
    if row.expect == FAILS and row.step in ("accepted", "build", "push", "done"):
        assert pipeline.service(target.service).latest_ready_revision == before

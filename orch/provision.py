"""``orch local up``'s second half: provision the pipeline on localcloud as Terraform does in Google Cloud.

Every resource comes from ``pipeline.json`` (the list Terraform reads too) and is created
through the same official clients a user would use: the sources bucket, the topics and
the dead-letter subscription, the orchestrator's six functions (pipeline/ zipped,
built by Cloud Build with the buildpack, deployed as private Cloud Run services from one
image), the ``deploy`` workflow and the two intake triggers; the service accounts, the custom
role and every IAM grant of ``grants.json`` (the grants Terraform makes). Each resource is compared
with what exists and only created or updated when it differs, so running it again changes
nothing. Locally, the functions keep one warm instance each so a deploy does not pay six
cold starts; on Google Cloud they scale to zero.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.api_core import exceptions

from orch import grants as grants_file
from orchestrator.build import pack_build
from orchestrator.config import Settings, pipeline, service_account_email

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "pipeline"  # the orchestrator's functions, deployed as is
SOURCE_HASH = "orchestrator.dev/source-hash"
# Starts of a function's instance before provisioning gives up (see deploy_service).
START_ATTEMPTS = 3


@dataclass
class Change:
    kind: str
    name: str
    action: str  # created | updated | replaced | unchanged

    def __str__(self) -> str:
        return f"{self.action:<9} {self.kind} {self.name}"


@dataclass
class Skipped:
    """A grant of grants.json that provisioning did not apply, and why (it is said, never
    silent: a grant Terraform makes and localcloud lacks is a difference to know about)."""

    grant: str  # the grant's key, WHO ROLE ON
    reason: str

    def __str__(self) -> str:
        return f"{'skipped':<9} grant {self.grant}: {self.reason}"


# Why grants to Google's service agents are not applied locally: localcloud's services
# publish, deliver and mint tokens themselves, as no agent account exists there.
NO_AGENTS = "Google's service agents do not exist on localcloud"
# Terraform's code bucket holds the zip Cloud Run functions builds from; `orch local up`
# builds the functions from the records bucket instead (see Provisioner.image).
CODE_IN_RECORDS = (
    "the code bucket is the records bucket locally: `orch local up` keeps the functions' "
    "zip there, so grants on the code bucket are made on it"
)
# The target kinds whose IAM localcloud may not serve yet: their grants are skipped, saying
# so, while it answers UNIMPLEMENTED (or, for a bucket's /iam, 404; for a repository, 404
# when nothing made it).
MAYBE_UNSERVED = ("bucket", "repository")


def function_source() -> bytes:
    """pipeline/ as a zip, deterministically (the same bytes Terraform's archive hashes)."""
    from orch.packing import zip_directory

    return zip_directory(SOURCE)


class Provisioner:
    def __init__(
        self, settings: Settings, factory: Any, log: Callable[[str], None] = print
    ) -> None:
        self.s = settings
        self.c = factory
        self.polling = factory.env.polling(900)
        self.log = log
        self.changes: list[Change] = []
        self.skipped: list[Skipped] = []
        self.p = pipeline()

    def _note(self, kind: str, name: str, action: str) -> None:
        change = Change(kind, name, action)
        self.changes.append(change)
        self.log(str(change))

    # ---------------------------------------------------------------- storage, Pub/Sub

    def buckets(self) -> None:
        """The sources bucket, the orchestrator's records bucket and the build logs bucket,
        in the pipeline's region as Terraform makes them."""
        for name in (self.s.sources_bucket, self.s.records_bucket, self.s.build_logs_bucket):
            if self.c.storage.lookup_bucket(name) is not None:
                self._note("bucket", name, "unchanged")
                continue
            self.c.storage.create_bucket(name, location=self.s.region.upper())
            self._note("bucket", name, "created")

    def repository(self) -> None:
        """The Artifact Registry repository builds push to, as Terraform makes it: pushes to
        a repository that does not exist are refused on Google Cloud."""
        from google.api_core import exceptions
        from google.cloud import artifactregistry_v1

        name = f"{self.s.location_path}/repositories/{self.s.repository}"
        try:
            self.c.artifact_registry.get_repository(name=name)
            return self._note("repository", self.s.repository, "unchanged")
        except exceptions.NotFound:
            pass
        self.c.artifact_registry.create_repository(
            parent=self.s.location_path,
            repository_id=self.s.repository,
            repository=artifactregistry_v1.Repository(
                format_=artifactregistry_v1.Repository.Format.DOCKER,
                description="Images of the functions the orchestrator deploys",
            ),
        ).result(timeout=60)
        self._note("repository", self.s.repository, "created")

    def topics(self) -> None:
        for topic in (self.s.requests_topic, self.s.status_topic, self.s.dead_letter_topic):
            path = self.s.topic_path(topic)
            try:
                self.c.publisher.get_topic(topic=path)
                self._note("topic", topic, "unchanged")
            except exceptions.NotFound:
                self.c.publisher.create_topic(name=path)
                self._note("topic", topic, "created")
        sub = self.p["dead_letter_subscription"]
        path = f"projects/{self.s.project}/subscriptions/{sub}"
        try:
            self.c.subscriber.get_subscription(subscription=path)
            self._note("subscription", sub, "unchanged")
        except exceptions.NotFound:
            self.c.subscriber.create_subscription(
                request={
                    "name": path,
                    "topic": self.s.topic_path(self.s.dead_letter_topic),
                    "message_retention_duration": {"seconds": 7 * 24 * 3600},
                }
            )
            self._note("subscription", sub, "created")

    # ---------------------------------------------------------------- functions

    def _service_account(self, key: str) -> str:
        return service_account_email(f"{self.s.prefix}-{key}", self.s.project)

    def image(self, source: bytes, digest: str) -> str:
        """Build the functions' image from ``source`` (once per source hash).

        The source goes to the records bucket, not the sources bucket: any write there fires
        the intake trigger (Terraform keeps it in a code bucket of its own for the same reason).
        """
        bucket = self.c.storage.bucket(self.s.records_bucket)
        name = f"source/orchestrator-{digest[:16]}.zip"
        blob = bucket.get_blob(name)
        if blob is None:
            blob = bucket.blob(name)
            blob.upload_from_string(source, content_type="application/zip")
        image = f"{self.s.staging_image(self.s.prefix)}:{digest[:16]}"
        build = pack_build(
            (bucket.name, name, blob.generation),
            image,
            {"GOOGLE_FUNCTION_TARGET": "build"},  # each service names its own function
            [self.s.prefix, "orchestrator"],
            self.s,  # runs as the build account, logs to the logs bucket, as the build step
        )
        self.log(f"building the orchestrator's functions from {len(source)} bytes of source ...")
        started = time.monotonic()
        result = self.c.cloud_build.create_build(project_id=self.s.project, build=build).result(
            timeout=1800, polling=self.polling
        )
        built = result.results.images[0]
        self.log(f"built {built.digest[:19]} in {time.monotonic() - started:.1f}s")
        return f"{image.rsplit(':', 1)[0]}@{built.digest}"

    def functions(self) -> dict[str, str]:
        """Deploy every function; their URLs by function key."""
        from google.cloud import run_v2

        source = function_source()
        digest = hashlib.sha256(source).hexdigest()
        services = self.c.run_services
        existing: dict[str, Any] = {}
        for key in self.p["functions"]:
            with contextlib.suppress(exceptions.NotFound):
                existing[key] = services.get_service(
                    name=self.s.service_path(self.s.function_service(key))
                )
        current = {k: v.annotations.get(SOURCE_HASH) for k, v in existing.items()}
        image = None
        if set(current) == set(self.p["functions"]) and set(current.values()) == {digest}:
            image = existing[next(iter(existing))].template.containers[0].image
        else:
            reusable = [v for k, v in existing.items() if current[k] == digest]
            image = (
                reusable[0].template.containers[0].image if reusable else self.image(source, digest)
            )
        urls: dict[str, str] = {}
        for key, spec in self.p["functions"].items():
            service_id = self.s.function_service(key)
            env = {
                **self.s.env(),
                "GOOGLE_FUNCTION_TARGET": spec["entry_point"],
                "FUNCTION_TARGET": spec["entry_point"],
                "GOOGLE_FUNCTION_SIGNATURE_TYPE": spec["signature_type"],
                "FUNCTION_SIGNATURE_TYPE": spec["signature_type"],
            }
            template = run_v2.RevisionTemplate(
                containers=[
                    run_v2.Container(
                        image=image, env=[{"name": k, "value": v} for k, v in sorted(env.items())]
                    )
                ],
                scaling={"min_instance_count": 1, "max_instance_count": 10},
                timeout={"seconds": spec["timeout_seconds"]},
                service_account=self._service_account(key),
            )
            old = existing.get(key)
            if old is not None and current.get(key) == digest and _same_template(old, template):
                self._note("function", service_id, "unchanged")
                service = old
            else:
                service = self.deploy_service(service_id, template, digest, old)
                self._note("function", service_id, "created" if old is None else "updated")
            urls[key] = service.uri
        return urls

    def deploy_service(self, service_id: str, template: Any, digest: str, old: Any) -> Any:
        """Create (``old`` None) or update a function's service; once it serves, the service.

        An instance killed before it listened (by a signal: exit 137 is the OOM killer's
        SIGKILL, seen on a loaded machine) is a transient failure: the same revision is
        tried again, up to START_ATTEMPTS starts in all, saying so. Any other failure (a
        bad image, code that exits by itself) is raised at once."""
        from google.cloud import run_v2

        services = self.c.run_services
        attempt = 1
        while True:
            try:
                if old is None:
                    return services.create_service(
                        parent=self.s.location_path,
                        service_id=service_id,
                        service=run_v2.Service(
                            template=template,
                            annotations={SOURCE_HASH: digest},
                            labels={"managed-by": "orchestrator"},
                        ),
                    ).result(polling=self.polling)
                old.template = template
                old.annotations[SOURCE_HASH] = digest
                return services.update_service(service=old).result(polling=self.polling)
            except exceptions.FailedPrecondition as exc:
                code = killed_before_listening(str(exc.message))
                if code is None or attempt == START_ATTEMPTS:
                    raise
                attempt += 1
                self.log(
                    f"{service_id}: instance start failed (exit {code}); "
                    f"retrying ({attempt}/{START_ATTEMPTS})"
                )
                # The service exists now, its revision not ready: updating it with the same
                # template starts that revision again.
                old = services.get_service(name=self.s.service_path(service_id))

    def _role_account(self, role: str) -> str:
        return self._service_account(self.p["service_accounts"][role])

    # ---------------------------------------------------------------- workflow

    def workflow(self, urls: dict[str, str]) -> None:
        from google.cloud import workflows_v1

        source = (REPO / self.p["workflow_file"]).read_text()
        env = {
            spec["workflow_env"]: urls[key]
            for key, spec in self.p["functions"].items()
            if "workflow_env" in spec
        }
        env["STATUS_TOPIC"] = self.s.topic_path(self.s.status_topic)
        account = f"projects/{self.s.project}/serviceAccounts/{self._role_account('workflow')}"
        client = self.c.workflows
        try:
            old = client.get_workflow(name=self.s.workflow_path)
        except exceptions.NotFound:
            old = None
        wanted = workflows_v1.Workflow(
            name=self.s.workflow_path,
            source_contents=source,
            user_env_vars=env,
            service_account=account,
            description="Builds, pushes, deploys and binds the triggers of one function",
        )
        if old is None:
            client.create_workflow(
                parent=self.s.location_path, workflow=wanted, workflow_id=self.s.workflow
            ).result(polling=self.polling)
            return self._note("workflow", self.s.workflow, "created")
        if (
            old.source_contents == source
            and dict(old.user_env_vars) == env
            and old.service_account.rsplit("/", 1)[-1] == account.rsplit("/", 1)[-1]
        ):
            return self._note("workflow", self.s.workflow, "unchanged")
        client.update_workflow(workflow=wanted).result(polling=self.polling)
        self._note("workflow", self.s.workflow, "updated")

    # ---------------------------------------------------------------- triggers

    def _sources_location(self) -> str:
        """The Eventarc location of a trigger on the sources bucket: the bucket's own.

        Eventarc refuses a storage trigger anywhere else. ``buckets()`` makes the bucket in
        the pipeline's region, as Terraform does, but a data directory made under another
        region keeps its bucket there: the trigger follows the bucket, not the setting.
        """
        from orchestrator.triggers import trigger_location

        bucket = self.c.storage.get_bucket(self.s.sources_bucket)
        return trigger_location(bucket.location or self.s.region)

    def triggers(self) -> None:
        from google.cloud import eventarc_v1

        for key, spec in self.p["triggers"].items():
            trigger_id = f"{self.s.prefix}-{key}"
            location = self.s.region
            filters = [{"attribute": "type", "value": spec["event_type"]}]
            fields: dict[str, Any] = {}
            if spec["on"] == "sources_bucket":
                location = self._sources_location()
                filters.append({"attribute": "bucket", "value": self.s.sources_bucket})
            else:
                fields["transport"] = {
                    "pubsub": {"topic": self.s.topic_path(self.s.requests_topic)}
                }
            wanted = eventarc_v1.Trigger(
                event_filters=filters,
                destination={
                    "cloud_run": {
                        "service": self.s.function_service(spec["function"]),
                        "region": self.s.region,
                    }
                },
                service_account=self._role_account("trigger"),
                **fields,
            )
            parent = f"projects/{self.s.project}/locations/{location}"
            name = f"{parent}/triggers/{trigger_id}"
            if location != self.s.region:  # one made in the region before: not Eventarc's
                self._delete_trigger(f"{self.s.location_path}/triggers/{trigger_id}")
            try:
                made = self.c.eventarc.get_trigger(name=name)
            except exceptions.NotFound:
                made = None
            if made is not None and _same_trigger(made, wanted):
                self._note("trigger", trigger_id, "unchanged")
            else:
                action = "created" if made is None else "replaced"
                if made is not None:  # filters and transport cannot be updated: replace it
                    self.c.eventarc.delete_trigger(name=name).result(polling=self.polling)
                made = self.c.eventarc.create_trigger(
                    parent=parent, trigger_id=trigger_id, trigger=wanted
                ).result(polling=self.polling)
                self._note("trigger", trigger_id, action)
            self._dead_letter(made.transport.pubsub.subscription)

    def _delete_trigger(self, name: str) -> None:
        with contextlib.suppress(exceptions.NotFound):
            self.c.eventarc.delete_trigger(name=name).result(polling=self.polling)
            self._note("trigger", name.rsplit("/", 1)[-1], "deleted")

    def _dead_letter(self, subscription: str) -> None:
        """Eventarc's subscription sends what it cannot deliver to the dead-letter topic."""
        if not subscription:
            return
        sub = self.c.subscriber.get_subscription(subscription=subscription)
        topic = self.s.topic_path(self.s.dead_letter_topic)
        attempts = self.p["max_delivery_attempts"]
        policy = sub.dead_letter_policy
        if policy.dead_letter_topic == topic and policy.max_delivery_attempts == attempts:
            return
        self.c.subscriber.update_subscription(
            subscription={
                "name": subscription,
                "dead_letter_policy": {
                    "dead_letter_topic": topic,
                    "max_delivery_attempts": attempts,
                },
            },
            update_mask={"paths": ["dead_letter_policy"]},
        )

    # ---------------------------------------------------------------- IAM

    def service_accounts(self) -> None:
        """Every function's own account and the role accounts, named and described as
        Terraform's (service_accounts.tf), through IAM Admin."""
        wanted = {
            f"{self.s.prefix}-{key}": (
                f"Orchestrator function {key}",
                f"Runs the {self.s.prefix}-{key} function of the serverless deploy orchestrator.",
            )
            for key in self.p["functions"]
        }
        wanted |= {
            f"{self.s.prefix}-{name}": (f"Orchestrator {role}", "")
            for role, name in self.p["service_accounts"].items()
        }
        client = self.c.iam_admin
        for account_id, (display_name, description) in wanted.items():
            email = service_account_email(account_id, self.s.project)
            try:
                client.get_service_account(
                    name=f"projects/{self.s.project}/serviceAccounts/{email}"
                )
                self._note("service account", email, "unchanged")
            except exceptions.NotFound:
                client.create_service_account(
                    name=f"projects/{self.s.project}",
                    account_id=account_id,
                    service_account={"display_name": display_name, "description": description},
                )
                self._note("service account", email, "created")

    def _custom_role_name(self, role: grants_file.CustomRole) -> str:
        return f"projects/{self.s.project}/roles/{role.role_id(self.s.prefix)}"

    def custom_roles(self) -> None:
        """grants.json's custom roles, in the project, as Terraform's
        google_project_iam_custom_role makes them."""
        from google.cloud import iam_admin_v1

        client = self.c.iam_admin
        for role in grants_file.load().custom_roles.values():
            name = self._custom_role_name(role)
            try:
                found = client.get_role(request={"name": name})
            except exceptions.NotFound:
                client.create_role(
                    request={
                        "parent": f"projects/{self.s.project}",
                        "role_id": role.role_id(self.s.prefix),
                        "role": {
                            "title": role.title,
                            "description": role.description,
                            "included_permissions": list(role.permissions),
                            "stage": iam_admin_v1.Role.RoleLaunchStage.GA,  # Terraform's default
                        },
                    }
                )
                self._note("custom role", name, "created")
                continue
            if not found.deleted and sorted(found.included_permissions) == sorted(role.permissions):
                self._note("custom role", name, "unchanged")
                continue
            # A deleted role keeps its id for 44 days (Google refuses to create it again),
            # and permissions are changed by UpdateRole: neither is served locally.
            raise RuntimeError(
                f"custom role {name} is deleted or its permissions "
                f"{sorted(found.included_permissions)} are not grants.json's "
                f"{sorted(role.permissions)}: delete localcloud's data or the role"
            )

    def _member(self, who: str) -> str:
        kind, _, key = who.partition(":")
        if kind == "function":
            return f"serviceAccount:{self._service_account(key)}"
        return f"serviceAccount:{self._role_account(key)}"

    def _role(self, role: str) -> str:
        if role.startswith("custom:"):
            custom = grants_file.load().custom_roles[role.removeprefix("custom:")]
            return self._custom_role_name(custom)
        return role

    def _function_sources_bucket(self) -> str:
        """Cloud Run functions' gcf-v2-sources-NUMBER-REGION bucket, a condition names it."""
        number = self.c.projects.get_project(name=f"projects/{self.s.project}").name
        return f"gcf-v2-sources-{number.rsplit('/', 1)[-1]}-{self.s.region}"

    def _grant_target(self, grant: grants_file.Grant) -> str:
        """The full resource name a grant is on (what get_iam_policy is asked for)."""
        kind, key = grant.kind, grant.target or ""
        if kind == "project":
            return f"projects/{self.s.project}"
        if kind == "bucket":
            # CODE_IN_RECORDS: the zip the build account reads to build the functions.
            return str(getattr(self.s, f"{'records' if key == 'code' else key}_bucket"))
        if kind == "topic":
            return self.s.topic_path(self.p["topics"][key])
        if kind == "repository":
            return f"{self.s.location_path}/repositories/{self.s.repository}"
        if kind == "account":
            return f"projects/{self.s.project}/serviceAccounts/{self._role_account(key)}"
        if kind == "service":
            return self.s.service_path(self.s.function_service(key))
        # subscription: the one Eventarc made for the intake trigger
        spec = self.p["triggers"][key]
        location = self._sources_location() if spec["on"] == "sources_bucket" else self.s.region
        trigger = self.c.eventarc.get_trigger(
            name=f"projects/{self.s.project}/locations/{location}/triggers/{self.s.prefix}-{key}"
        )
        return str(trigger.transport.pubsub.subscription)

    def _policy_io(self, kind: str) -> tuple[Callable[[str], Any], Callable[[str, Any], Any]]:
        """Read and write a target's IAM policy (``google.iam.v1.Policy``) through the official
        client of its service."""
        if kind == "bucket":
            return self._bucket_policy, self._set_bucket_policy
        client = {
            "project": lambda: self.c.projects,
            "topic": lambda: self.c.publisher,
            "subscription": lambda: self.c.subscriber,
            "account": lambda: self.c.iam_admin,
            "service": lambda: self.c.run_services,
            "repository": lambda: self.c.artifact_registry,
        }[kind]()

        def get(resource: str) -> Any:
            # Version 3: the policy with its conditional bindings, as Google asks callers
            # that may meet them to read it (https://cloud.google.com/iam/docs/policies#versions).
            return client.get_iam_policy(
                request={"resource": resource, "options": {"requested_policy_version": 3}}
            )

        def put(resource: str, policy: Any) -> Any:
            return client.set_iam_policy(request={"resource": resource, "policy": policy})

        return get, put

    def _bucket_policy(self, bucket: str) -> Any:
        found = self.c.storage.bucket(bucket).get_iam_policy(requested_policy_version=3)
        return storage_policy_to_proto(found)

    def _set_bucket_policy(self, bucket: str, policy: Any) -> Any:
        return self.c.storage.bucket(bucket).set_iam_policy(storage_policy_from_proto(policy))

    def grants(self, kinds: set[str]) -> None:
        """Apply grants.json's grants on targets of ``kinds``, as Terraform's iam_member
        resources do: add the member to the role's binding (with the grant's condition) by
        read-modify-write with the policy's etag, touching nothing else. Grants a local
        project cannot hold are skipped, each with its reason."""
        groups: dict[tuple[str, str], list[grants_file.Grant]] = {}
        sources_bucket: str | None = None
        for grant in grants_file.load().grants:
            if grant.kind not in kinds:
                continue
            if grant.who.startswith("agent:"):
                self._skip(grant, NO_AGENTS)
                continue
            if grant.condition is not None and sources_bucket is None:
                sources_bucket = self._function_sources_bucket()
            groups.setdefault((grant.kind, self._grant_target(grant)), []).append(grant)
        for (kind, resource), on_target in groups.items():
            self._grant_on(kind, resource, on_target, sources_bucket or "")

    def _skip(self, grant: grants_file.Grant, reason: str) -> None:
        skipped = Skipped(grant.key, reason)
        self.skipped.append(skipped)
        self.log(str(skipped))

    def _grant_on(
        self, kind: str, resource: str, on_target: list[grants_file.Grant], sources_bucket: str
    ) -> None:
        get, put = self._policy_io(kind)
        for attempt in range(1, 4):
            try:
                policy = get(resource)
            except (exceptions.MethodNotImplemented, exceptions.NotFound) as exc:
                if kind not in MAYBE_UNSERVED:
                    raise
                if kind == "repository" and isinstance(exc, exceptions.NotFound):
                    reason = f"no repository {resource} on localcloud to grant on (404)"
                else:  # the bucket exists (buckets() made it): its /iam is what is missing
                    reason = (
                        f"localcloud does not serve {kind} IAM yet "
                        f"(it answered {exc.code} {type(exc).__name__})"
                    )
                for grant in on_target:
                    self._skip(grant, reason)
                return
            added = [
                grant
                for grant in on_target
                if add_member(
                    policy,
                    self._role(grant.role),
                    self._member(grant.who),
                    grant.condition.render(sources_bucket) if grant.condition else None,
                )
            ]
            if added:
                try:
                    put(resource, policy)
                except exceptions.Aborted:  # the etag moved on: read, modify, write again
                    if attempt == 3:
                        raise
                    continue
            for grant in on_target:
                self._note("grant", grant.key, "created" if grant in added else "unchanged")
            return

    # ---------------------------------------------------------------- all

    def run(self) -> list[Change]:
        self.service_accounts()
        self.custom_roles()
        self.buckets()
        self.repository()
        # The functions are built as the build account, which reads their zip, pushes the
        # image and writes the log as itself: its grants on the buckets and the repository
        # come first.
        self.grants({"repository", "bucket"})
        self.topics()
        urls = self.functions()
        # Before the workflow and the triggers, as Terraform's depends_on orders them: the
        # workflow's and the trigger account's grants exist when they first call.
        self.grants(set(grants_file.RESOURCE_TYPES) - {"subscription", "repository", "bucket"})
        self.workflow(urls)
        self.triggers()
        self.grants({"subscription"})  # Eventarc makes the subscriptions with the triggers
        return self.changes


def storage_policy_to_proto(policy: Any) -> Any:
    """A bucket's policy (google-cloud-storage's ``google.api_core.iam.Policy``, the JSON
    API's shape) as ``google.iam.v1.Policy``, the shape every other service answers in."""
    from google.iam.v1 import policy_pb2
    from google.protobuf import json_format

    return json_format.ParseDict(
        policy.to_api_repr(), policy_pb2.Policy(), ignore_unknown_fields=True
    )


def storage_policy_from_proto(policy: Any) -> Any:
    """The reverse of ``storage_policy_to_proto``: etag, version and conditions kept."""
    from google.api_core.iam import Policy
    from google.protobuf import json_format

    return Policy.from_api_repr(json_format.MessageToDict(policy))


def add_member(
    policy: Any, role: str, member: str, condition: grants_file.Condition | None
) -> bool:
    """Add ``member`` to the binding of ``role`` with exactly ``condition`` (a conditional
    binding is a binding of its own); whether the policy changed."""
    for binding in policy.bindings:
        same_condition = (
            (binding.condition.title, binding.condition.description, binding.condition.expression)
            == (condition.title, condition.description, condition.expression)
            if condition is not None
            else not binding.HasField("condition")
        )
        if binding.role == role and same_condition:
            if member in binding.members:
                return False
            binding.members.append(member)
            return True
    binding = policy.bindings.add(role=role, members=[member])
    if condition is not None:
        binding.condition.title = condition.title
        binding.condition.description = condition.description
        binding.condition.expression = condition.expression
    if any(b.HasField("condition") for b in policy.bindings):
        # Conditional bindings are refused in a policy below version 3.
        policy.version = 3
    return True


def killed_before_listening(message: str) -> int | None:
    """The exit code when a Cloud Run failure says an instance was killed by a signal before
    it listened (localcloud: "the instance exited with code 137 before listening on port
    ..."); None for any other failure."""
    found = re.search(r"exited with code (-?\d+) before listening", message)
    if found is None:
        return None
    code = int(found.group(1))
    # Killed by signal N: -N from the process itself, 128+N from a parent that reports it
    # (bwrap, a shell). Other codes are the program's own exit.
    return code if code < 0 or code > 128 else None


def _same_trigger(found: Any, wanted: Any) -> bool:
    def filters(t: Any) -> set[tuple[str, str]]:
        return {(f.attribute, f.value) for f in t.event_filters}

    return (
        filters(found) == filters(wanted)
        and found.destination.cloud_run.service == wanted.destination.cloud_run.service
        and found.service_account == wanted.service_account
        and (
            not wanted.transport.pubsub.topic
            or found.transport.pubsub.topic == wanted.transport.pubsub.topic
        )
    )


def _same_template(service: Any, wanted: Any) -> bool:
    """Whether the running template is the one provisioning would write (image aside)."""
    found = service.template
    if not found.containers:
        return False

    def env(t: Any) -> dict[str, str]:
        return {e.name: e.value for e in t.containers[0].env}

    return (
        env(found) == env(wanted)
        and found.service_account == wanted.service_account
        and found.timeout.seconds == wanted.timeout.seconds
        and found.scaling.min_instance_count == wanted.scaling.min_instance_count
        and found.scaling.max_instance_count == wanted.scaling.max_instance_count
    )


def provision(
    settings: Settings | None = None, factory: Any = None, log: Any = print
) -> list[Change]:
    from orchestrator import clients

    return Provisioner(settings or Settings.from_env(), factory or clients.Clients(), log).run()

"""``orch local up``'s second half: provision the pipeline on localcloud as Terraform does in Google Cloud.

Every resource comes from ``pipeline.json`` (the list Terraform reads too) and is created
through the same official clients a user would use: the sources bucket, the topics and
the dead-letter subscription, the orchestrator's six functions (pipeline/ zipped,
built by Cloud Build with the buildpack, deployed as private Cloud Run services from one
image), the ``deploy`` workflow and the two intake triggers. Each resource is compared
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

from orchestrator.build import pack_build
from orchestrator.config import Settings, pipeline, service_account_email
from orchestrator.deploy import set_invoker

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
            caller = "trigger" if spec["signature_type"] == "cloudevent" else "workflow"
            member = f"serviceAccount:{self._role_account(caller)}"
            set_invoker(self.c.run_services, service.name, {member}, None)
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

    # ---------------------------------------------------------------- all

    def run(self) -> list[Change]:
        self.buckets()
        self.repository()
        self.topics()
        urls = self.functions()
        self.workflow(urls)
        self.triggers()
        return self.changes


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

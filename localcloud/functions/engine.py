"""Deploys functions the way Cloud Functions (2nd gen) does, on localcloud's own services.

A create or an update answers a long-running operation at once and deploys in the
background, reporting Google's stages in the operation's ``OperationMetadata.stages``
(``google/cloud/functions/v2/functions.proto`` ``Stage``), each NOT_STARTED, IN_PROGRESS
then COMPLETE with its message and resource:

- BUILD: the region's ``gcf-artifacts`` Docker repository, made on first use
  (https://cloud.google.com/functions/docs/building#image_registry), then the source, copied to ``gcf-v2-sources-NUMBER-REGION`` (``sources.py``), built by
  localcloud's Cloud Build with the buildpacks step into
  ``REGION-docker.pkg.dev/PROJECT/gcf-artifacts/IMAGE`` (the build's name and log URL are
  the stage's resource);
- SERVICE: the Cloud Run service named after the function, created or updated through the
  controller the Cloud Run Admin API uses, with the image by digest (never one the Cloud
  Run Admin API made: ``service_taken``);
- TRIGGER: the function's Eventarc trigger (event-driven functions), created through the
  Eventarc router; HTTP functions have none.

The function's service, build, image and trigger are ordinary resources of those APIs.
A failed create leaves the function FAILED with the error in ``state_messages``; a failed
update leaves the function as it was and its previous revision serving (Cloud Run keeps
it), the error in the operation. One operation per function at a time: another is
ABORTED until it ends, as Google answers "An operation on function ... is already in
progress".
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import logging
import random
import string
from typing import Any

from google.cloud.devtools.cloudbuild_v1 import types as cb
from google.cloud.eventarc_v1 import types as ea
from google.cloud.functions_v2 import types
from google.cloud.run_v2 import types as run
from google.protobuf import any_pb2, empty_pb2, field_mask_pb2

from localcloud.artifactregistry.store import RepositoryPb, RepositoryStore
from localcloud.cloudbuild.builder import Builder
from localcloud.core.clock import now
from localcloud.core.config import Config
from localcloud.core.errors import (
    Aborted,
    AlreadyExists,
    GoogleError,
    InvalidArgument,
    NotFound,
    as_google_error,
)
from localcloud.core.names import parse_parent
from localcloud.core.projects import project_number
from localcloud.eventarc.router import EventRouter
from localcloud.functions import checks, runtimes
from localcloud.functions.sources import Sources
from localcloud.functions.store import FunctionPb, FunctionStore
from localcloud.operations.store import OperationStore
from localcloud.run.controller import Controller

LOG = logging.getLogger(__name__)
Stage = types.Stage
State = types.Function.State
OpType = types.OperationType
MetadataPb = types.OperationMetadata.pb()
StagePb = Stage.pb()
REPOSITORY = "gcf-artifacts"
PACK = "gcr.io/k8s-skaffold/pack"
MANAGED = {"goog-managed-by": "cloudfunctions"}
# The stages an operation lists from the start. Google lists no ARTIFACT_REGISTRY stage
# there (it reports one only in unusual cases, as rollbacks): gcloud adds
# [ArtifactRegistry] to the stages it reads from the first poll itself, and crashes
# ("Duplicate stage key: ARTIFACT_REGISTRY") when the operation already lists it
# (gcloud's command_lib/functions/v2/deploy/command.py, _EXTRA_STAGES, and
# api_lib/functions/v2/util.py, WaitForOperation).
ORDER = (Stage.Name.BUILD, Stage.Name.SERVICE, Stage.Name.TRIGGER)
# Google's defaults (functions.proto ServiceConfig; https://cloud.google.com/functions/docs/configuring/memory):
# 256M of memory with 0.1666 of a CPU, 60 s, one request at a time, 100 instances at most.
DEFAULT_MEMORY = "256M"
DEFAULT_TIMEOUT = 60
DEFAULT_MAX_INSTANCES = 100
CPU_FOR_MEMORY = ((128, "0.083"), (256, "0.1666"), (512, "0.333"), (1024, "0.583"), (2048, "1"))
INGRESS = {
    types.ServiceConfig.IngressSettings.ALLOW_INTERNAL_ONLY: run.IngressTraffic.INGRESS_TRAFFIC_INTERNAL_ONLY,
    types.ServiceConfig.IngressSettings.ALLOW_INTERNAL_AND_GCLB: run.IngressTraffic.INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER,
}
MUTABLE = ("description", "build_config", "service_config", "event_trigger", "labels")
OUTPUT_ONLY = {
    "build_config": ("build", "source_provenance", "docker_registry"),
    "service_config": ("service", "uri", "revision"),
    "event_trigger": ("trigger",),
}


class StageFailed(Exception):
    """A stage ended in error: the operation's error and the function's state message."""

    def __init__(self, error: GoogleError, kind: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.kind = kind


def service_taken(function_id: str) -> AlreadyExists:
    """A function's service is named after it, and Cloud Functions never takes over a Cloud
    Run service it did not create (one made through the Cloud Run Admin API): CreateFunction
    answers HTTP 409, ALREADY_EXISTS, in these words (gcloud prints "ResponseError:
    status=[409], code=[Ok], message=[Could not create Cloud Run service helloworld-HASH. A
    Cloud Run service with this name already exists. Please redeploy the function with a
    different name.]",
    https://github.com/GoogleCloudPlatform/python-docs-samples/pull/13134,
    https://github.com/googleapis/repo-automation-bots/pull/5581)."""
    return AlreadyExists(
        f"Could not create Cloud Run service {function_id}. A Cloud Run service with this "
        "name already exists. Please redeploy the function with a different name."
    )


def compute_account(project: str) -> str:
    return f"{project_number(project)}-compute@developer.gserviceaccount.com"


def image_path(project: str, region: str, function_id: str) -> str:
    """Cloud Functions' image name: the project, region and function joined by ``__``,
    each with its hyphens doubled (``my--project__us--central1__my--fn``)."""
    parts = (project, region, function_id)
    image = "__".join(p.replace("-", "--") for p in parts)
    return f"{region}-docker.pkg.dev/{project}/{REPOSITORY}/{image}"


def _cpu_for(memory: str) -> str:
    from localcloud.run import resources

    mib = resources.memory(memory) / (1 << 20)
    for limit, cpu in CPU_FOR_MEMORY:
        if mib <= limit * 1.05:
            return cpu
    return "2"


def _user_fields(message: Any, field: str) -> bytes:
    """``message``'s ``field`` without its output-only parts, for comparing two configs."""
    copy = type(getattr(message, field))()
    copy.CopyFrom(getattr(message, field))
    for name in OUTPUT_ONLY.get(field, ()):
        copy.ClearField(name)
    return bytes(copy.SerializeToString(deterministic=True)) if message.HasField(field) else b""


def _signature(fn: Any) -> str:
    return "cloudevent" if fn.HasField("event_trigger") else "http"


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class Functions:
    def __init__(
        self,
        config: Config,
        store: FunctionStore,
        operations: OperationStore,
        builder: Builder,
        controller: Controller,
        router: EventRouter,
        repositories: RepositoryStore,
        sources: Sources,
    ) -> None:
        self.config = config
        self.store = store
        self.operations = operations
        self.builder = builder
        self.controller = controller
        self.router = router
        self.repositories = repositories
        self.sources = sources
        self.tasks: dict[str, asyncio.Task] = {}

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """A deploy localcloud's stop interrupted cannot be resumed: its function is
        FAILED, saying so, and its operation ends ABORTED."""
        for fn in list(self.store.functions.values()):
            if fn.state == State.DEPLOYING:
                fn.state = State.FAILED
                fn.state_messages.add(
                    severity=types.StateMessage.Severity.ERROR,
                    type_="DeploymentInterrupted",
                    message="localcloud stopped while this function was being deployed; "
                    "deploy it again",
                )
                await self.store.functions.put(fn)
        for op in self.operations.unfinished():
            if op.metadata.type_url.endswith("google.cloud.functions.v2.OperationMetadata"):
                await self.operations.finish(
                    op.name, error=Aborted("localcloud stopped during this operation").to_proto()
                )

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    # -- reading --------------------------------------------------------------------------
    def get(self, name: str) -> Any:
        fn = self.store.functions.get(name)
        if fn is None:
            raise NotFound(f"Resource '{name}' was not found")
        return fn

    def list(self, parent: str) -> list[Any]:
        """``locations/-`` lists every location's ("If you want to list functions in all
        locations, use "-" in place of a location", functions.proto ListFunctionsRequest;
        ``gcloud functions list`` asks so)."""
        if parent.endswith("/locations/-"):
            project, _ = parse_parent(parent.removesuffix("-") + "global")
            prefix = f"projects/{project}/locations/"
            found = [f for n, f in self.store.functions.items() if n.startswith(prefix)]
        else:
            parse_parent(parent)
            found = list(self.store.functions.children(parent))
        return sorted(found, key=lambda f: f.name)

    # -- API ------------------------------------------------------------------------------
    async def create(self, request: Any) -> Any:
        parent = request.parent
        project, region = parse_parent(parent)
        checks.function_id(request.function_id)
        name = f"{parent}/functions/{request.function_id}"
        wanted = FunctionPb()
        wanted.CopyFrom(request.function)
        wanted.name = name
        checks.function(wanted, request.function_id)
        if name in self.store.functions:
            raise AlreadyExists(
                f"Function {request.function_id} in region {region} in project {project} already exists"
            )
        service = f"projects/{project}/locations/{region}/services/{request.function_id}"
        if self.controller.find(service) is not None:
            raise service_taken(request.function_id)
        self._idle(name)
        wanted.state = State.DEPLOYING
        wanted.environment = types.Environment.GEN_2
        wanted.create_time.CopyFrom(now())
        wanted.update_time.CopyFrom(wanted.create_time)
        self._defaults(wanted, project, region)
        await self.store.functions.put(wanted)
        return await self._begin(wanted, None, request, OpType.CREATE_FUNCTION, "create")

    async def update(self, request: Any) -> Any:
        name = request.function.name
        current = self.get(name)
        self._idle(name)
        project, region = parse_parent(name.rsplit("/functions/", 1)[0])
        function_id = name.rsplit("/", 1)[1]
        merged = FunctionPb()
        merged.CopyFrom(current)
        _apply(merged, request.function, request.update_mask)
        checks.function(merged, function_id)
        merged.state = State.DEPLOYING
        del merged.state_messages[:]
        merged.update_time.CopyFrom(now())
        self._defaults(merged, project, region)
        previous = FunctionPb()
        previous.CopyFrom(current)
        await self.store.functions.put(merged)
        return await self._begin(merged, previous, request, OpType.UPDATE_FUNCTION, "update")

    async def delete(self, name: str) -> Any:
        fn = self.get(name)
        self._idle(name)
        metadata = self._metadata(fn, OpType.DELETE_FUNCTION, "delete", None)
        if fn.event_trigger.trigger:
            with contextlib.suppress(NotFound):
                await self.router.delete(fn.event_trigger.trigger, "", True, False)
        service = fn.service_config.service
        if service and self.controller.find(service) is not None:
            await self.controller.delete(service, "", False)
        await self.store.functions.delete(name)
        metadata.end_time.CopyFrom(now())
        parent = name.rsplit("/functions/", 1)[0]
        return await self.operations.create(parent, metadata, response=empty_pb2.Empty())

    async def upload_url(self, parent: str) -> Any:
        project, region = parse_parent(parent)
        url, (bucket, name) = await self.sources.upload_url(project, region)
        response = types.GenerateUploadUrlResponse.pb()(upload_url=url)
        response.storage_source.bucket = bucket
        response.storage_source.object_ = name
        return response

    def download_url(self, name: str) -> Any:
        fn = self.get(name)
        copy = fn.build_config.source_provenance.resolved_storage_source
        if not copy.bucket:
            raise NotFound(f"Function {name} has no deployed source yet")
        project = name.split("/")[1]
        url = self.sources.download_url(project, copy.bucket, copy.object_)
        return types.GenerateDownloadUrlResponse.pb()(download_url=url)

    def runtimes(self) -> builtins.list[runtimes.Runtime]:
        return runtimes.available()

    # -- deploying ------------------------------------------------------------------------
    def _idle(self, name: str) -> None:
        task = self.tasks.get(name)
        if task is not None and not task.done():
            project, region, function_id = (
                name.split("/")[1],
                name.split("/")[3],
                name.split("/")[5],
            )
            raise Aborted(
                f"An operation on function {function_id} in region {region} in project "
                f"{project} is already in progress. Please try again later."
            )

    def _defaults(self, fn: Any, project: str, region: str) -> None:
        """What Google fills in and answers on every read (functions.proto's defaults)."""
        function_id = fn.name.rsplit("/", 1)[1]
        build = fn.build_config
        if not build.entry_point:
            build.entry_point = function_id
        build.docker_repository = f"projects/{project}/locations/{region}/repositories/{REPOSITORY}"
        svc = fn.service_config
        svc.available_memory = svc.available_memory or DEFAULT_MEMORY
        svc.available_cpu = svc.available_cpu or _cpu_for(svc.available_memory)
        svc.timeout_seconds = svc.timeout_seconds or DEFAULT_TIMEOUT
        svc.max_instance_count = svc.max_instance_count or DEFAULT_MAX_INSTANCES
        svc.max_instance_request_concurrency = svc.max_instance_request_concurrency or 1
        if not svc.ingress_settings:
            svc.ingress_settings = types.ServiceConfig.IngressSettings.ALLOW_ALL
        svc.service_account_email = svc.service_account_email or compute_account(project)
        svc.security_level = types.ServiceConfig.SecurityLevel.SECURE_ALWAYS
        if fn.HasField("event_trigger"):
            trigger = fn.event_trigger
            trigger.trigger_region = trigger.trigger_region or region
            if not trigger.retry_policy:
                trigger.retry_policy = types.EventTrigger.RetryPolicy.RETRY_POLICY_DO_NOT_RETRY
            trigger.service_account_email = trigger.service_account_email or compute_account(
                project
            )

    def _metadata(self, fn: Any, kind: int, verb: str, request: Any) -> Any:
        metadata = MetadataPb(target=fn.name, verb=verb, api_version="v2", operation_type=kind)
        metadata.create_time.CopyFrom(now())
        if request is not None:
            metadata.request_resource.CopyFrom(_pack(request))
        return metadata

    async def _begin(
        self, fn: Any, previous: Any | None, request: Any, kind: int, verb: str
    ) -> Any:
        metadata = self._metadata(fn, kind, verb, request)
        for stage in ORDER:
            metadata.stages.add(name=stage, state=Stage.State.NOT_STARTED)
        parent = fn.name.rsplit("/functions/", 1)[0]
        op = await self.operations.create(parent, metadata)
        task = asyncio.get_running_loop().create_task(
            self._deploy(op.name, metadata, fn, previous), name=f"deploy {fn.name}"
        )
        self.tasks[fn.name] = task
        task.add_done_callback(functools.partial(self._forget, fn.name))
        return op

    def _forget(self, name: str, task: asyncio.Task) -> None:
        if self.tasks.get(name) is task:
            del self.tasks[name]

    async def _stage(
        self,
        op: str,
        metadata: Any,
        name: int,
        state: int,
        message: str = "",
        *,
        resource: str = "",
        uri: str = "",
    ) -> None:
        stage = next(s for s in metadata.stages if s.name == name)
        stage.state = state
        stage.message = message
        if resource:
            stage.resource = resource
        if uri:
            stage.resource_uri = uri
        metadata.status_detail = message
        await self.operations.update_metadata(op, metadata)

    async def _deploy(self, op: str, metadata: Any, fn: Any, previous: Any | None) -> None:
        try:
            await self._run_stages(op, metadata, fn, previous)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failure = (
                exc
                if isinstance(exc, StageFailed)
                else StageFailed(as_google_error(exc), "DeploymentFailed")
            )
            if not isinstance(exc, (StageFailed, GoogleError)):
                LOG.exception("deploying %s failed", fn.name)
            await self._fail(op, metadata, fn, previous, failure)
            return
        fn.state = State.ACTIVE
        fn.update_time.CopyFrom(now())
        await self.store.functions.put(fn)
        metadata.end_time.CopyFrom(now())
        metadata.status_detail = ""
        await self.operations.finish(op, response=fn, metadata=metadata)

    async def _fail(
        self, op: str, metadata: Any, fn: Any, previous: Any | None, failure: StageFailed
    ) -> None:
        if previous is not None:
            # A failed update keeps the function as it was: its config, and (Cloud Run keeps
            # it) its serving revision.
            await self.store.functions.put(previous)
        else:
            fn.state = State.FAILED
            fn.state_messages.add(
                severity=types.StateMessage.Severity.ERROR,
                type_=failure.kind,
                message=failure.error.message,
            )
            await self.store.functions.put(fn)
        for stage in metadata.stages:  # the stage that failed says why, as Google's do
            if stage.state == Stage.State.IN_PROGRESS:
                stage.state_messages.add(
                    severity=types.StateMessage.Severity.ERROR,
                    type_=failure.kind,
                    message=failure.error.message,
                )
        metadata.end_time.CopyFrom(now())
        metadata.status_detail = failure.error.message
        await self.operations.finish(op, error=failure.error.to_proto(), metadata=metadata)

    async def _run_stages(self, op: str, metadata: Any, fn: Any, previous: Any | None) -> None:
        project, region = fn.name.split("/")[1], fn.name.split("/")[3]
        function_id = fn.name.rsplit("/", 1)[1]
        repository = await self._repository(op, metadata, project, region)
        service_name = f"projects/{project}/locations/{region}/services/{function_id}"
        image = await self._image(op, metadata, fn, previous, service_name, repository)
        await self._service(op, metadata, fn, service_name, image, creating=previous is None)
        await self._trigger(op, metadata, fn, previous, function_id, region)

    async def _repository(self, op: str, metadata: Any, project: str, region: str) -> str:
        """The region's ``gcf-artifacts`` repository, made on first use, as the BUILD
        stage's first step."""
        name = f"projects/{project}/locations/{region}/repositories/{REPOSITORY}"
        if self.repositories.get(name) is not None:
            return name
        await self._stage(
            op, metadata, Stage.Name.BUILD, Stage.State.IN_PROGRESS,
            f"Creating the Artifact Registry repository {REPOSITORY}",
        )  # fmt: skip
        repo = RepositoryPb(
            name=name,
            format_=RepositoryPb.Format.DOCKER,
            mode=RepositoryPb.Mode.STANDARD_REPOSITORY,
            description="This repository is created and used by Cloud Functions for "
            "storing function docker images.",
            registry_uri=f"{region}-docker.pkg.dev/{project}/{REPOSITORY}",
        )
        repo.labels.update(MANAGED)
        repo.create_time.CopyFrom(now())
        repo.update_time.CopyFrom(repo.create_time)
        await self.repositories.put(repo)
        return name

    async def _image(
        self, op: str, metadata: Any, fn: Any, previous: Any | None, service: str, repo: str
    ) -> str:
        """The image by digest: built from the source, or the serving one when an update
        changes neither the build config nor the function's kind (HTTP or event)."""
        project, region = fn.name.split("/")[1], fn.name.split("/")[3]
        function_id = fn.name.rsplit("/", 1)[1]
        existing = self.controller.find(service)
        if (
            previous is not None
            and existing is not None
            and previous.state == State.ACTIVE
            and _user_fields(previous, "build_config") == _user_fields(fn, "build_config")
            and _signature(previous) == _signature(fn)
        ):
            await self._stage(
                op, metadata, Stage.Name.BUILD, Stage.State.COMPLETE,
                "The build config did not change: the function's image is reused",
                resource=fn.build_config.build,
            )  # fmt: skip
            return str(existing.template.containers[0].image)
        await self._stage(
            op, metadata, Stage.Name.BUILD, Stage.State.IN_PROGRESS, "Copying the source"
        )
        build_config = fn.build_config
        source = build_config.source.storage_source
        provenance = build_config.source_provenance.resolved_storage_source
        unchanged = previous is not None and _same_source(previous, fn)
        if unchanged and provenance.bucket:
            bucket, obj, generation = provenance.bucket, provenance.object_, provenance.generation
        else:
            try:
                bucket, obj, generation = await self.sources.copy_in(
                    project, region, function_id, source
                )
            except GoogleError as exc:
                raise StageFailed(exc, "SourceUnavailable") from None
        image = image_path(project, region, function_id)
        env = {
            "GOOGLE_FUNCTION_TARGET": build_config.entry_point,
            "GOOGLE_FUNCTION_SIGNATURE_TYPE": _signature(fn),
            "GOOGLE_RUNTIME": build_config.runtime,
            **dict(build_config.environment_variables),
        }
        args = ["build", image, "--builder", runtimes.BUILDER, "--network", "cloudbuild"]
        for key, value in sorted(env.items()):
            args += ["--env", f"{key}={value}"]
        build = cb.Build.pb()(images=[image], tags=["gcf", function_id[:100]])
        build.source.storage_source.bucket = bucket
        build.source.storage_source.object_ = obj
        build.source.storage_source.generation = generation
        build.steps.add(name=PACK, entrypoint="pack", args=args)
        if build_config.service_account:
            # A build with its own account may not log to the default bucket; Cloud
            # Functions' builds with a user-specified account log to Cloud Logging (the
            # account needs roles/logging.logWriter for it:
            # https://cloud.google.com/run/docs/configuring/services/build-service-account).
            build.service_account = build_config.service_account
            build.options.logging = cb.BuildOptions.LoggingMode.CLOUD_LOGGING_ONLY
        try:
            build_op = await self.builder.create(project, region, build)
        except GoogleError as exc:
            raise StageFailed(
                InvalidArgument(f"Build failed: Cloud Build refused the build: {exc.message}"),
                "BuildFailed",
            ) from None
        build_id = build_op.name.rsplit("/", 1)[1]
        started = self.builder.get(project, build_id)
        metadata.build_name = started.name
        await self._stage(
            op, metadata, Stage.Name.BUILD, Stage.State.IN_PROGRESS, "Building the function",
            resource=started.name, uri=started.log_url,
        )  # fmt: skip
        await self.operations.wait(build_op.name, None)
        done = self.builder.get(project, build_id)
        if done.status != cb.Build.Status.SUCCESS:
            status = cb.Build.Status(done.status).name
            detail = f" and message: {done.status_detail}" if done.status_detail else ""
            raise StageFailed(
                InvalidArgument(
                    f"Build failed with status: {status}{detail}. For more details see the "
                    f"logs at {done.log_url}"
                ),
                "BuildFailed",
            )
        build_config.build = done.name
        provenance.bucket, provenance.object_, provenance.generation = bucket, obj, generation
        await self._stage(
            op, metadata, Stage.Name.BUILD, Stage.State.COMPLETE, "",
            resource=done.name, uri=done.log_url,
        )  # fmt: skip
        return f"{image}@{done.results.images[0].digest}"

    async def _service(
        self, op: str, metadata: Any, fn: Any, name: str, image: str, *, creating: bool
    ) -> None:
        cfg = fn.service_config
        env = dict(cfg.environment_variables)
        env.setdefault("LOG_EXECUTION_ID", "true")
        template = run.RevisionTemplate.pb()(
            service_account=cfg.service_account_email,
            max_instance_request_concurrency=cfg.max_instance_request_concurrency,
        )
        template.labels.update(MANAGED)
        container = template.containers.add(image=image)
        for key, value in sorted(env.items()):
            container.env.add(name=key, value=value)
        container.resources.limits["memory"] = cfg.available_memory
        container.resources.limits["cpu"] = cfg.available_cpu
        template.scaling.min_instance_count = cfg.min_instance_count
        template.scaling.max_instance_count = cfg.max_instance_count
        template.timeout.seconds = cfg.timeout_seconds
        existing = self.controller.find(name)
        svc = run.Service.pb()()
        if existing is not None:
            svc.CopyFrom(existing)
        svc.template.CopyFrom(template)
        svc.labels.update(MANAGED)
        svc.annotations["cloudfunctions.googleapis.com/function-id"] = name.rsplit("/", 1)[1]
        svc.ingress = INGRESS.get(cfg.ingress_settings, run.IngressTraffic.INGRESS_TRAFFIC_ALL)
        if cfg.all_traffic_on_latest_revision or existing is None:
            del svc.traffic[:]
            svc.traffic.add(
                type_=run.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST,
                percent=100,
            )
        verb = "Updating" if existing is not None else "Creating"
        await self._stage(
            op, metadata, Stage.Name.SERVICE, Stage.State.IN_PROGRESS,
            f"{verb} the Cloud Run service", resource=name,
        )  # fmt: skip
        if existing is not None and creating:
            # Made through the Cloud Run Admin API while this function was building: it is
            # not the function's to take over either.
            raise StageFailed(service_taken(name.rsplit("/", 1)[1]), "ServiceFailed")
        try:
            if existing is None:
                parent, service_id = name.rsplit("/services/", 1)
                run_op = await self.controller.create(parent, svc, service_id, False)
            else:
                svc.name = name
                run_op = await self.controller.update(svc, False, False)
        except GoogleError as exc:
            raise StageFailed(exc, "ServiceFailed") from None
        result = await self.operations.wait(run_op.name, None)
        if result.HasField("error"):
            raise StageFailed(
                as_google_error(
                    InvalidArgument(
                        f"Could not create or update Cloud Run service {name.rsplit('/', 1)[1]}: "
                        f"{result.error.message}"
                    )
                ),
                "ServiceFailed",
            )
        served = self.controller.get(name)
        cfg.service = name
        cfg.uri = served.uri
        cfg.revision = served.latest_ready_revision.rsplit("/", 1)[-1]
        cfg.all_traffic_on_latest_revision = any(
            t.type_ == run.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
            and t.percent == 100
            for t in served.traffic
        )
        fn.url = served.uri
        await self._stage(
            op, metadata, Stage.Name.SERVICE, Stage.State.COMPLETE, "",
            resource=name, uri=served.uri,
        )  # fmt: skip

    async def _trigger(
        self, op: str, metadata: Any, fn: Any, previous: Any | None, function_id: str, region: str
    ) -> None:
        old = previous.event_trigger.trigger if previous is not None else ""
        if (
            old
            and fn.HasField("event_trigger")
            and _user_fields(previous, "event_trigger") == _user_fields(fn, "event_trigger")
        ):
            fn.event_trigger.trigger = old
            await self._stage(
                op, metadata, Stage.Name.TRIGGER, Stage.State.COMPLETE, "", resource=old
            )
            return
        if old:
            with contextlib.suppress(NotFound):
                await self.router.delete(old, "", True, False)
        if not fn.HasField("event_trigger"):
            await self._stage(op, metadata, Stage.Name.TRIGGER, Stage.State.COMPLETE, "")
            return
        spec = fn.event_trigger
        project = fn.name.split("/")[1]
        trigger_id = f"{function_id[:56]}-{''.join(random.choices(string.ascii_lowercase + string.digits, k=6))}"
        parent = f"projects/{project}/locations/{spec.trigger_region}"
        trigger = ea.Trigger.pb()(service_account=spec.service_account_email)
        trigger.event_filters.add(attribute="type", value=spec.event_type)
        for flt in spec.event_filters:
            trigger.event_filters.add(
                attribute=flt.attribute, value=flt.value, operator=flt.operator
            )
        trigger.destination.cloud_run.service = function_id
        trigger.destination.cloud_run.region = region
        trigger.labels.update(MANAGED)
        if spec.pubsub_topic:
            trigger.transport.pubsub.topic = spec.pubsub_topic
        # DO_NOT_RETRY (the default: "the retries are disabled for these triggers",
        # https://cloud.google.com/functions/docs/bestpractices/retries) is the trigger's
        # retry_policy.max_attempts 1, one delivery; RETRY leaves Eventarc's own retries
        # (exponential backoff, 10 s to 600 s, for the 24 hours a message is kept).
        if spec.retry_policy == types.EventTrigger.RetryPolicy.RETRY_POLICY_DO_NOT_RETRY:
            trigger.retry_policy.max_attempts = 1
        name = f"{parent}/triggers/{trigger_id}"
        await self._stage(
            op, metadata, Stage.Name.TRIGGER, Stage.State.IN_PROGRESS,
            "Creating the Eventarc trigger", resource=name,
        )  # fmt: skip
        try:
            await self.router.create(parent, trigger, trigger_id, False)
        except GoogleError as exc:
            raise StageFailed(
                type(exc)(f"Could not create the function's Eventarc trigger: {exc.message}"),
                "TriggerFailed",
            ) from None
        spec.trigger = name
        await self._stage(op, metadata, Stage.Name.TRIGGER, Stage.State.COMPLETE, "", resource=name)


def _same_source(previous: Any, fn: Any) -> bool:
    a, b = previous.build_config.source, fn.build_config.source
    return bytes(a.SerializeToString(deterministic=True)) == bytes(
        b.SerializeToString(deterministic=True)
    )


def _apply(target: Any, request: Any, mask: field_mask_pb2.FieldMask) -> None:
    """Copy what ``mask`` names from ``request`` into ``target`` (all of the function's
    own fields when the mask is empty: "If no field mask is provided, all fields will be
    updated", functions.proto)."""
    paths = list(mask.paths) or [f for f in MUTABLE]
    for path in paths:
        parts = path.split(".")
        if parts[0] not in MUTABLE:
            raise InvalidArgument(f"Invalid update_mask: {path} cannot be updated")
        dst, src = target, request
        for part in parts[:-1]:
            if part not in dst.DESCRIPTOR.fields_by_name:
                raise InvalidArgument(f"Invalid update_mask: {path} is not a field of Function")
            dst, src = getattr(dst, part), getattr(src, part)
        last = parts[-1]
        fd = dst.DESCRIPTOR.fields_by_name.get(last)
        if fd is None:
            raise InvalidArgument(f"Invalid update_mask: {path} is not a field of Function")
        outputs = OUTPUT_ONLY.get(parts[-2] if len(parts) > 1 else "", ())
        if last in outputs:
            raise InvalidArgument(f"Invalid update_mask: {path} is output only")
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            getattr(dst, last).clear()
            getattr(dst, last).update(getattr(src, last))
        elif fd.is_repeated:
            del getattr(dst, last)[:]
            getattr(dst, last).extend(getattr(src, last))
        elif fd.message_type is not None:
            keep = {n: getattr(getattr(dst, last), n) for n in OUTPUT_ONLY.get(last, ())}
            if src.HasField(last):
                getattr(dst, last).CopyFrom(getattr(src, last))
                for n, value in keep.items():  # an update never sets output-only fields
                    field = getattr(dst, last)
                    if hasattr(value, "CopyFrom"):
                        getattr(field, n).CopyFrom(value)
                    else:
                        setattr(field, n, value)
            else:
                dst.ClearField(last)
        else:
            setattr(dst, last, getattr(src, last))

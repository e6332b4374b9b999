"""Runs builds: fetch the source, check and unpack it, run the buildpack, push, report.

Each build is an asyncio task; at most ``limit`` run at once (default: the number of
CPUs) and the rest wait QUEUED. Blocking work (unzip, tar) runs in worker threads and pip
in subprocesses, so a slow build never delays the API. Every status change updates the
build's long-running operation and is published to the ``cloud-builds`` topic, as Cloud
Build does; the log is written live under ``logs/builds/`` and, at the end, to the logs
bucket as ``log-<build id>.txt`` (none with CLOUD_LOGGING_ONLY or NONE logging). Each
build runs as a service account, its own or the default one, recorded on the Build and
named wherever the builder acts for it (``identity.py`` has Cloud Build's rules for both).

The build's ``images`` are pushed as that account, as Cloud Build pushes them
(https://cloud.google.com/build/docs/securing-builds/configure-access-for-cloud-build-service-account,
"push images to Artifact Registry" needs ``roles/artifactregistry.writer``): the builder
presents an access token minted for it to the registry front, which checks
``artifactregistry.repositories.uploadArtifacts`` on the repository and refuses a
repository that does not exist. A refused push fails the build (FAILURE, PUSH_FAILED),
its status detail quoting the registry's answer as docker prints it
(``denied: Permission "artifactregistry.repositories.uploadArtifacts" denied on resource
...``, ``name unknown: Repository "REPO" not found``).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from google.cloud.devtools.cloudbuild_v1 import types
from google.protobuf import json_format
from google.pubsub_v1.types import PubsubMessage, Topic

from localcloud.cloudbuild import archive, buildpack, confined, identity
from localcloud.cloudbuild.config import PackPlan, plan
from localcloud.cloudbuild.store import BuildStore
from localcloud.core import authz, permissions
from localcloud.core.config import Config
from localcloud.core.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    GoogleError,
    Internal,
    InvalidArgument,
    NotFound,
    Unknown,
)
from localcloud.core.oidc import Issuer
from localcloud.operations.store import OperationStore
from localcloud.pubsub.engine import PubSub
from localcloud.registry.client import RegistryClient, RegistryError
from localcloud.registry.names import parse_image

LOG = logging.getLogger(__name__)
S = types.Build.Status
BuildPb = types.Build.pb()
DEFAULT_TIMEOUT = 3600.0  # Cloud Build: "Default time is 60 minutes"
SLOW_CANCEL = 10.0  # a cancel still ending after this long is logged with where it waits
# What a build acquires by running; RetryBuild starts from the rest.
RUN_FIELDS = (
    "id",
    "name",
    "status",
    "status_detail",
    "results",
    "create_time",
    "start_time",
    "finish_time",
    "log_url",
    "timing",
    "failure_info",
    "warnings",
)
DONE = {S.SUCCESS, S.FAILURE, S.INTERNAL_ERROR, S.TIMEOUT, S.CANCELLED, S.EXPIRED}
OPERATION_ERRORS: dict[int, tuple[type[GoogleError], str]] = {
    S.FAILURE: (Unknown, "Build failed; check build logs for details"),
    S.INTERNAL_ERROR: (Internal, "Build failed with an internal error"),
    S.TIMEOUT: (DeadlineExceeded, "Build timed out"),
    S.CANCELLED: (Cancelled, "Build was cancelled"),
}


def _docker_says(exc: Exception) -> str:
    """A registry's refusal as ``docker push`` prints it, ``code in words: message``
    (``denied: Permission ...``, ``name unknown: Repository "X" not found``); any other
    failure as it is."""
    if isinstance(exc, RegistryError) and exc.errors:
        return "; ".join(
            f"{str(e.get('code', '')).lower().replace('_', ' ')}: {e.get('message', '')}"
            for e in exc.errors
        )
    return str(exc)


class BuildStepFailed(Exception):
    """A build step failed: the build ends FAILURE with this detail and failure type."""

    def __init__(self, detail: str, failure_type: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.failure_type = failure_type


class BuildLog:
    """One build's log: a live file under the data directory, uploaded at the end."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.lines: list[str] = []
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.lines[-n:])


class Builder:
    def __init__(
        self,
        config: Config,
        store: BuildStore,
        operations: OperationStore,
        pubsub: PubSub,
        session: aiohttp.ClientSession,
        *,
        limit: int | None = None,
        issuer: Issuer | None = None,
    ) -> None:
        self.config = config
        # Mints the build account's token for its pushes (None: push as the local user).
        self.issuer = issuer
        self.store = store
        self.operations = operations
        self.pubsub = pubsub
        self.session = session
        self.slots = asyncio.Semaphore(limit or os.cpu_count() or 2)
        self.tasks: dict[str, asyncio.Task] = {}
        self.finishing: set[asyncio.Task] = set()
        self._notified: dict[str, int] = {}  # build id -> status last published
        self.stopping = False
        self.op_names: dict[str, str] = {}
        wheelhouse = os.environ.get("LOCALCLOUD_WHEELHOUSE")
        caches = config.data_dir / "build-cache"
        self.cache = buildpack.LayerCache(
            caches,
            Path(wheelhouse) if wheelhouse else None,
            confined.Tools(caches / "tools", unsandboxed=config.run_unsandboxed),
        )
        self.work = config.data_dir / "build-work"
        self.log_dir = config.data_dir / "logs" / "builds"

    async def start(self) -> None:
        """Builds a stopped localcloud left running end INTERNAL_ERROR, operations included."""
        for build in list(self.store.builds.values()):
            location = self._location(build)
            op = f"projects/{build.project_id}/locations/{location}/operations/{build.id}"
            self.op_names[build.id] = op
            if build.status in DONE:
                continue
            build.status = S.INTERNAL_ERROR
            build.status_detail = "localcloud stopped while this build ran; retry it"
            build.finish_time.GetCurrentTime()
            for step in build.steps:
                if step.status == S.WORKING:
                    step.status = S.INTERNAL_ERROR
            await self._finish_operation(build)
            await self.store.builds.put(build)
            await self._notify(build)
        shutil.rmtree(self.work, ignore_errors=True)

    async def stop(self) -> None:
        """Running builds end INTERNAL_ERROR (not CANCELLED: nobody cancelled them)."""
        self.stopping = True
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await asyncio.gather(*self.finishing, return_exceptions=True)

    # -- API ----------------------------------------------------------------------------
    async def create(self, project: str, location: str, request_build: Any) -> Any:
        build = BuildPb()
        build.CopyFrom(request_build)
        build.id = str(uuid.uuid4())
        build.project_id = project
        build.name = f"projects/{project}/locations/{location}/builds/{build.id}"
        build.status = S.QUEUED
        build.create_time.GetCurrentTime()
        if not build.HasField("timeout"):
            build.timeout.FromSeconds(int(DEFAULT_TIMEOUT))
        elif not 0 < build.timeout.ToTimedelta().total_seconds() <= 24 * 3600:
            raise InvalidArgument("build.timeout must be between 1 second and 24 hours")
        # Checked as Cloud Build checks them, before anything is stored (identity.py).
        identity.service_account(build, project)
        identity.check_logging(build)
        values = self._substitutions(build, location)
        pack = plan(build, values)
        place = identity.log_place(build, project, location)
        external = identity.writes_storage_log(build) and not place.managed
        if external and not await self._bucket_exists(place.bucket):
            raise identity.missing_bucket(place.bucket)
        if not build.images:
            build.images.append(pack.image)
        if not build.service_account:  # the build runs as the default account: say which
            account = identity.default_account(project)
            build.service_account = f"projects/{project}/serviceAccounts/{account}"
        if identity.writes_storage_log(build):
            if not build.logs_bucket:
                build.logs_bucket = f"gs://{place.bucket}"
            build.log_url = (
                f"http://{self.config.storage_address}/download/storage/v1/b/{place.bucket}/o/"
                f"{quote(self._log_object(build), safe='')}?alt=media"
            )
        else:  # Cloud Logging only, or no log: the live log on this machine is all there is
            build.log_url = (self.log_dir / f"{build.id}.log").resolve().as_uri()
        await self.store.builds.put(build)
        op = await self.operations.create(
            f"projects/{project}/locations/{location}",
            types.BuildOperationMetadata.pb()(build=build),
            on_cancel=self._cancel_from_operation,
            operation_id=build.id,
        )
        self.op_names[build.id] = op.name
        await self._notify(build)
        self.tasks[build.id] = asyncio.get_running_loop().create_task(
            self._run(build, pack), name=f"build {build.id}"
        )
        return op

    def get(self, project: str, build_id: str) -> Any:
        build = self.store.builds.get(build_id)
        if build is None or build.project_id != project:
            raise NotFound(f"Build {build_id} not found in project {project}.")
        return build

    async def cancel(self, project: str, build_id: str) -> Any:
        build = self.get(project, build_id)
        if build.status in DONE:
            raise FailedPrecondition(
                f"Build {build_id} is {S(build.status).name}; only queued or working builds can be cancelled."
            )
        task = self.tasks.get(build_id)
        if task is not None:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=SLOW_CANCEL)
            if not done:  # its tool's process should be gone in milliseconds: say where
                where = io.StringIO()
                task.print_stack(file=where)
                LOG.warning(
                    "build %s is still ending %gs after its cancel\n%s",
                    build_id,
                    SLOW_CANCEL,
                    where.getvalue(),
                )
            await asyncio.gather(task, return_exceptions=True)
        return self.get(project, build_id)

    async def retry(self, project: str, location: str, build_id: str) -> Any:
        """A new build with the same source, steps and options (Cloud Build's RetryBuild)."""
        fresh = BuildPb()
        fresh.CopyFrom(self.get(project, build_id))
        for name in RUN_FIELDS:
            fresh.ClearField(name)
        for step in fresh.steps:
            for name in ("timing", "pull_timing", "status", "exit_code"):
                step.ClearField(name)
        return await self.create(project, location, fresh)

    async def _cancel_from_operation(self, op_name: str) -> None:
        for build_id, name in self.op_names.items():
            if name == op_name:
                build = self.store.builds[build_id]
                await self.cancel(build.project_id, build_id)
                return

    # -- running ------------------------------------------------------------------------
    def _substitutions(self, build: Any, location: str) -> dict[str, str]:
        values = dict(build.substitutions)
        values.update(PROJECT_ID=build.project_id, BUILD_ID=build.id, LOCATION=location)
        return values

    async def _bucket_exists(self, bucket: str) -> bool:
        url = f"http://{self.config.storage_address}/storage/v1/b/{quote(bucket, safe='')}"
        async with self.session.get(url) as response:
            if response.status >= 500:
                raise Internal(f"could not look up logs bucket {bucket}: HTTP {response.status}")
            return response.status < 400

    @staticmethod
    def _location(build: Any) -> str:
        return build.name.split("/")[3] if build.name.count("/") >= 5 else "global"

    @staticmethod
    def _account(build: Any) -> str:
        """The email of the account the build runs as (create() always records one)."""
        return build.service_account.rsplit("/", 1)[-1]

    @staticmethod
    def _log_object(build: Any) -> str:
        prefix = build.logs_bucket.removeprefix("gs://").partition("/")[2].strip("/")
        name = f"log-{build.id}.txt"
        return f"{prefix}/{name}" if prefix else name

    async def _update(self, build: Any) -> None:
        await self.store.builds.put(build)
        op = self.op_names.get(build.id)
        if op is not None:
            await self.operations.update_metadata(
                op, types.BuildOperationMetadata.pb()(build=build)
            )
        if self._notified.get(build.id) != build.status:  # Cloud Build notifies status changes
            await self._notify(build)

    async def _notify(self, build: Any) -> None:
        """Cloud Build publishes every status change to ``cloud-builds``, the build as JSON."""
        self._notified[build.id] = build.status
        topic = f"projects/{build.project_id}/topics/cloud-builds"
        try:
            if not self.pubsub.has_topic(topic):
                await self.pubsub.create_topic(Topic.pb()(name=topic))
            body = json_format.MessageToJson(build)
            message = PubsubMessage.pb()(data=body.encode())
            message.attributes.update({"buildId": build.id, "status": S(build.status).name})
            await self.pubsub.publish(topic, [message])
        except Exception:
            LOG.exception("could not publish the status of build %s", build.id)

    async def _run(self, build: Any, pack: PackPlan) -> None:
        log: BuildLog | None = None
        workdir: Path | None = None
        timeout = build.timeout.ToTimedelta().total_seconds()
        try:
            log = BuildLog(self.log_dir / f"{build.id}.log")
            workdir = Path(tempfile.mkdtemp(prefix=f"{build.id[:8]}-", dir=self._workroot()))
            async with self.slots:
                build.status = S.WORKING
                build.start_time.GetCurrentTime()
                await self._update(build)
                log(f"starting build {build.id}")
                log(f"running as service account {self._account(build)}")
                try:
                    async with asyncio.timeout(timeout) as budget:
                        await self._execute(build, pack, workdir, log)
                    build.status = S.SUCCESS
                    log("DONE")
                except TimeoutError:
                    if not budget.expired():
                        raise
                    build.status = S.TIMEOUT
                    build.status_detail = f"Build timed out after {timeout:g}s"
                    log(f"ERROR: build timed out after {timeout:g}s")
                except BuildStepFailed as exc:
                    build.status = S.FAILURE
                    build.status_detail = exc.detail
                    build.failure_info.type_ = exc.failure_type
                    build.failure_info.detail = exc.detail
                    log(f"ERROR: {exc.detail}")
        except asyncio.CancelledError:
            if self.stopping:
                build.status = S.INTERNAL_ERROR
                build.status_detail = "localcloud stopped while this build ran; retry it"
            else:
                build.status = S.CANCELLED
                build.status_detail = "Build was cancelled"
            if log is not None:
                log(build.status_detail)
        except Exception as exc:
            LOG.exception("build %s failed internally", build.id)
            build.status = S.INTERNAL_ERROR
            build.status_detail = f"internal error: {type(exc).__name__}: {exc}"
            if log is not None:
                log(f"ERROR: {build.status_detail}")
        finally:
            if log is not None:
                log.close()
            if workdir is not None:
                await asyncio.to_thread(shutil.rmtree, workdir, True)
        build.finish_time.GetCurrentTime()
        for step in build.steps:
            if step.status in (S.STATUS_UNKNOWN, S.QUEUED, S.WORKING):
                step.status = build.status if step.status == S.WORKING else S.QUEUED
        finishing = asyncio.ensure_future(self._finish(build, log))
        self.finishing.add(finishing)
        finishing.add_done_callback(self.finishing.discard)
        await asyncio.shield(finishing)
        self.tasks.pop(build.id, None)

    def _workroot(self) -> Path:
        self.work.mkdir(parents=True, exist_ok=True)
        return self.work

    async def _finish(self, build: Any, log: BuildLog | None) -> None:
        if log is not None:
            try:
                await self._upload_log(build, log)
            except Exception as exc:  # the build's result stands; say where the log is
                LOG.warning("could not write the log of build %s: %s", build.id, exc)
        await self._update(build)
        await self._finish_operation(build)

    async def _finish_operation(self, build: Any) -> None:
        op = self.op_names.get(build.id)
        if op is None:
            return
        try:
            self.operations.get(op)
        except NotFound:
            return
        metadata = types.BuildOperationMetadata.pb()(build=build)
        if build.status == S.SUCCESS:
            await self.operations.finish(op, response=build, metadata=metadata)
        else:
            kind, message = OPERATION_ERRORS.get(build.status, (Unknown, "Build failed"))
            detail = f"{message}: {build.status_detail}" if build.status_detail else message
            await self.operations.finish(op, error=kind(detail).to_proto(), metadata=metadata)

    async def _execute(self, build: Any, pack: PackPlan, workdir: Path, log: BuildLog) -> None:
        src = build.source.storage_source
        fetch = build.timing["FETCHSOURCE"]
        fetch.start_time.GetCurrentTime()
        generation = f"#{src.generation}" if src.generation else ""
        log(f"Fetching storage object: gs://{src.bucket}/{src.object_}{generation}")
        archive_path = workdir / "source"
        account = self._account(build)
        self._check_log_writable(build, account)
        await self._download(src.bucket, src.object_, src.generation, archive_path, account)
        tree = workdir / "tree"
        try:
            members = await asyncio.to_thread(archive.extract, archive_path, tree)
        except archive.ArchiveError as exc:
            raise BuildStepFailed(
                f"bad source archive: {exc}",
                types.Build.FailureInfo.FailureType.FETCH_SOURCE_FAILED,
            ) from None
        log(f"unpacked {len(members)} entries")
        # `--path` names a directory of the archive as uploaded; without it a single
        # top-level directory (a GitHub-style zip) is the source root.
        root = tree if pack.path != "." else archive.strip_common_root(tree)
        fetch.end_time.GetCurrentTime()
        await self._update(build)

        step = build.steps[pack.step_index]
        for earlier in build.steps[: pack.step_index]:
            earlier.status = S.SUCCESS
            earlier.timing.start_time.GetCurrentTime()
            earlier.timing.end_time.GetCurrentTime()
        step.status = S.WORKING
        step.timing.start_time.GetCurrentTime()
        build_span = build.timing["BUILD"]
        build_span.start_time.GetCurrentTime()
        await self._update(build)
        source = (root / pack.path).resolve()
        if not source.is_dir() or not source.is_relative_to(root.resolve()):
            raise BuildStepFailed(
                f"--path {pack.path!r} is not a directory of the source",
                types.Build.FailureInfo.FailureType.USER_BUILD_STEP,
            )
        if pack.builder:
            log(f"builder {pack.builder} (localcloud runs its own Python and Node.js buildpacks)")
        try:
            image = await buildpack.build(source, pack.env, self.cache, workdir, log, pack.builder)
        except buildpack.BuildError as exc:
            step.status = S.FAILURE
            step.exit_code = 1
            step.timing.end_time.GetCurrentTime()
            raise BuildStepFailed(
                f"step #{pack.step_index} (pack build) failed: {exc}",
                types.Build.FailureInfo.FailureType.USER_BUILD_STEP,
            ) from None
        step.status = S.SUCCESS
        step.timing.end_time.GetCurrentTime()
        build_span.end_time.GetCurrentTime()
        await self._update(build)

        push = build.timing["PUSH"]
        push.start_time.GetCurrentTime()
        ref = parse_image(pack.image)
        log(f"Pushing {pack.image}")
        token = self.issuer.mint_access_token(account) if self.issuer is not None else None
        address = self.config.registry_address
        try:
            async with RegistryClient(address, self.session, token=token) as registry:
                for layer in image.layers:
                    await registry.push_blob(ref.path, Path(layer.path), layer.digest)
                await registry.push_blob(ref.path, image.config, image.config_digest)
                digest = await registry.put_manifest(
                    ref.path, ref.tag or "latest", image.manifest, buildpack.OCI_MANIFEST
                )
        except Exception as exc:
            raise BuildStepFailed(
                # Cloud Build's words ("error pushing image \"IMAGE\": ...", as in
                # https://github.com/GoogleCloudPlatform/developer-journey-app/issues/117),
                # with the registry's answer where Google's build log holds it.
                f'error pushing image "{pack.image}" as {account}: {_docker_says(exc)}',
                types.Build.FailureInfo.FailureType.PUSH_FAILED,
            ) from None
        push.end_time.GetCurrentTime()
        built = build.results.images.add(name=pack.image, digest=digest)
        built.push_timing.CopyFrom(push)
        log(f"{pack.image}: digest: {digest} size: {sum(layer.size for layer in image.layers)}")

    async def _download(
        self, bucket: str, name: str, generation: int, dest: Path, account: str
    ) -> None:
        """Read the source as the build's account (``account``), with a token minted for it,
        as Cloud Build fetches sources: the storage front holds it to the bucket's IAM, so a
        build account without ``storage.objects.get`` fails FETCH_SOURCE_FAILED naming it."""
        url = f"http://{self.config.storage_address}/download/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"
        params = {"alt": "media"}
        if generation:
            params["generation"] = str(generation)
        async with self.session.get(url, params=params, headers=self._as(account)) as response:
            if response.status == 404:
                raise BuildStepFailed(
                    f"source gs://{bucket}/{name} not found",
                    types.Build.FailureInfo.FailureType.FETCH_SOURCE_FAILED,
                )
            if response.status >= 400:
                reason = _storage_error(await response.text())
                raise BuildStepFailed(
                    f"{account} could not fetch gs://{bucket}/{name}: HTTP {response.status}"
                    + (f": {reason}" if reason else ""),
                    types.Build.FailureInfo.FailureType.FETCH_SOURCE_FAILED,
                )
            with open(dest, "wb") as out:
                async for chunk in response.content.iter_chunked(1 << 20):
                    await asyncio.to_thread(out.write, chunk)

    def _as(self, account: str) -> dict[str, str]:
        """The headers of a request made as ``account`` (none without an issuer: a builder
        run on its own, in tests, acts as the local user)."""
        if self.issuer is None or not account:
            return {}
        return {"Authorization": f"Bearer {self.issuer.mint_access_token(account)}"}

    def _check_log_writable(self, build: Any, account: str) -> None:
        """A build logging to a bucket of the user's fails before it starts when its account
        may not write there: Cloud Build writes the log as the build's account, and a
        build whose log cannot be kept does not run
        (https://cloud.google.com/build/docs/securing-builds/store-manage-build-logs#store-custom-bucket)."""
        if not identity.writes_storage_log(build) or not permissions.checking():
            return
        place = identity.log_place(build, build.project_id, self._location(build))
        if place.managed:
            return
        try:
            authz.authorizer()
        except RuntimeError:
            return
        resource = f"projects/_/buckets/{place.bucket}/objects/{self._log_object(build)}"
        member = f"serviceAccount:{account}"
        if not authz.permitted(member, ("storage.objects.create",), resource):
            raise BuildStepFailed(
                f"{account} cannot write the build log to gs://{place.bucket}: "
                f"{authz.denied(member, 'storage.objects.create', resource).message}",
                types.Build.FailureInfo.FailureType.LOGGING_FAILURE,
            )

    async def _upload_log(self, build: Any, log: BuildLog) -> None:
        """Write ``log-ID.txt`` to the logs bucket as the build's account. Only a bucket Cloud
        Build owns (the default or the regional one) is made on first use; a user's bucket
        that has gone since the build was created is an error, as for Cloud Build."""
        if not identity.writes_storage_log(build):
            return
        place = identity.log_place(build, build.project_id, self._location(build))
        bucket = place.bucket
        base = f"http://{self.config.storage_address}/storage/v1/b"
        async with self.session.get(f"{base}/{bucket}") as response:
            if response.status == 404 and not place.managed:
                raise RuntimeError(f"{self._account(build)} cannot write to gs://{bucket}: gone")
            if response.status == 404:
                # The regional user-owned bucket lives in the build's region; the default
                # one, like any bucket made without a location, in US.
                resource = {"name": bucket}
                if bucket.endswith(
                    f"-{identity.place_region(self._location(build))}-cloudbuild-logs"
                ):
                    resource["location"] = identity.place_region(self._location(build)).upper()
                async with self.session.post(
                    base, params={"project": build.project_id}, json=resource
                ) as created:
                    if created.status >= 400 and created.status != 409:
                        raise RuntimeError(f"creating gs://{bucket}: HTTP {created.status}")
        url = f"http://{self.config.storage_address}/upload/storage/v1/b/{bucket}/o"
        params = {"uploadType": "media", "name": self._log_object(build)}
        body = ("\n".join(log.lines) + "\n").encode()
        # A bucket of the user's is written as the build's account; Cloud Build's own as itself.
        headers = {"Content-Type": "text/plain"}
        if not place.managed:
            headers.update(self._as(self._account(build)))
        async with self.session.post(url, params=params, data=body, headers=headers) as r:
            if r.status >= 400:
                raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:200]}")


def _storage_error(text: str) -> str:
    """The message of a Cloud Storage JSON error body (the front's, naming the permission)."""
    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text.strip()[:300]

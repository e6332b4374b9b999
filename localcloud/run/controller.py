"""Services and revisions, reconciled the way Knative's service reconciler does it.

A create or update stores the desired Service (generation + 1), answers with a
long-running operation at once, and reconciles in the background: a template that differs
from the latest revision's makes a new immutable revision
(``<service>-<5-digit number>-<3 letters>``); the revision's image is pulled and unpacked,
one instance is started as the startup probe; when it listens the revision is Ready and
traffic that follows "latest" moves to it. A revision that fails leaves traffic on the
previous ready revision and the service's terminal condition says why, with the log tail.

A reconcile that localcloud's stop or death interrupted is done again at the next start:
a service whose generation was not yet observed is reconciled, a revision left half-started
is started again (or failed, when the service no longer wants it), and the operations of
the interrupted deploys end with that reconcile's outcome.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import logging
import os
import random
import string
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from google.cloud.run_v2 import types

from localcloud.core.clock import now
from localcloud.core.config import Config
from localcloud.core.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    GoogleError,
    InvalidArgument,
    NotFound,
    as_google_error,
)
from localcloud.core.iam import PolicyStore
from localcloud.core.peers import Identity
from localcloud.core.projects import project_number
from localcloud.operations.store import OperationStore
from localcloud.run import names, resources, sandbox
from localcloud.run.autoscaler import DEFAULT_CONCURRENCY, Autoscaler, Pool, log_path
from localcloud.run.images import ImageAccessDenied, UnpackedImage
from localcloud.run.store import RevisionPb, RunStore, ServicePb

LOG = logging.getLogger(__name__)
C = types.Condition
LATEST = types.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
BY_REVISION = types.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
DEFAULT_TIMEOUT = 300
DELETED = "the service was deleted while it was being deployed"
INTERRUPTED = "localcloud stopped while this revision was being deployed"
# The managed constraint constraints/run.managed.requireInvokerIam
# (LOCALCLOUD_ORG_POLICY_REQUIRE_INVOKER_IAM). Google's exact wording is not published; the
# code is that of an organization policy violation, and the message names the constraint.
REQUIRE_INVOKER_IAM = (
    "service.invoker_iam_disabled: the organization policy constraint "
    "constraints/run.managed.requireInvokerIam requires the invoker IAM check on Cloud Run "
    "services, so it cannot be disabled; grant roles/run.invoker to the callers instead"
)
OUTPUT_ONLY = (
    "uid",
    "generation",
    "create_time",
    "update_time",
    "delete_time",
    "expire_time",
    "creator",
    "last_modifier",
    "observed_generation",
    "terminal_condition",
    "conditions",
    "latest_ready_revision",
    "latest_created_revision",
    "traffic_statuses",
    "uri",
    "urls",
    "reconciling",
    "etag",
)


def _template_key(template: Any) -> str:
    copy = type(template)()
    copy.CopyFrom(template)
    copy.ClearField("revision")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def _condition(kind: str, state: int, message: str = "", reason: int = 0) -> Any:
    cond = types.Condition.pb()(type_=kind, state=state, message=message)
    cond.last_transition_time.CopyFrom(now())
    if reason:
        cond.reason = reason
    return cond


class Controller:
    def __init__(
        self,
        config: Config,
        store: RunStore,
        operations: OperationStore,
        policies: PolicyStore,
        autoscaler: Autoscaler,
        issuer_env: dict[str, str],
    ) -> None:
        self.config = config
        self.store = store
        self.operations = operations
        self.policies = policies
        self.autoscaler = autoscaler
        self.client_env = issuer_env
        self.log_dir = config.data_dir / "logs" / "run"
        self.tasks: dict[str, asyncio.Task] = {}
        self.ingress: Any = None  # set by the server: opens and closes service ports
        self._pool_locks: dict[str, asyncio.Lock] = {}
        self.pending_ops: dict[str, list[str]] = {}  # service -> operations not yet reconciled
        self.stopping = False
        self._warming: set[asyncio.Task] = set()
        autoscaler.cache.on_prepared = self._start_ahead

    # -- reading -------------------------------------------------------------------------
    def find(self, name: str) -> Any | None:
        """The service named ``name``, or None (no name check: for callers inside localcloud)."""
        return self.store.services.get(name)

    def get(self, name: str) -> Any:
        names.service(name)
        svc = self.store.services.get(name)
        if svc is None:
            raise NotFound(
                f"Resource '{name.rsplit('/', 1)[-1]}' of kind 'SERVICE' in region '{name.split('/')[3]}' in project '{name.split('/')[1]}' does not exist."
            )
        return svc

    def list(self, parent: str) -> list[Any]:
        prefix = str(names.parent(parent)) + "/services/"
        return [s for n, s in sorted(self.store.services.items()) if n.startswith(prefix)]

    def get_revision(self, name: str) -> Any:
        names.revision(name)
        rev = self.store.revisions.get(name)
        if rev is None:
            raise NotFound(f"Revision {name.rsplit('/', 1)[-1]} does not exist.")
        return rev

    def list_revisions(self, parent: str) -> builtins.list[Any]:
        self.get(parent)
        return self.store.revisions_of(parent)

    # -- writing -------------------------------------------------------------------------
    def _validate(self, svc: Any) -> None:
        template = svc.template
        if not template.containers:
            raise InvalidArgument("service.template.containers: exactly one container is required")
        if len(template.containers) > 1:
            raise InvalidArgument(
                "service.template.containers: localcloud runs one container per revision"
            )
        if not template.containers[0].image:
            raise InvalidArgument("service.template.containers[0].image is required")
        resources.limits(dict(template.containers[0].resources.limits))
        scaling = template.scaling
        if scaling.max_instance_count and scaling.min_instance_count > scaling.max_instance_count:
            raise InvalidArgument(
                "service.template.scaling.min_instance_count must not exceed max_instance_count"
            )
        if (
            template.max_instance_request_concurrency < 0
            or template.max_instance_request_concurrency > 1000
        ):
            raise InvalidArgument(
                "service.template.max_instance_request_concurrency must be between 1 and 1000"
            )
        if scaling.min_instance_count < 0 or scaling.max_instance_count < 0:
            raise InvalidArgument("service.template.scaling: instance counts must not be negative")
        if template.HasField("timeout") and not 0 < template.timeout.seconds <= 3600:
            raise InvalidArgument("service.template.timeout must be between 1 second and 1 hour")
        total = 0
        for i, target in enumerate(svc.traffic):
            if not 0 <= target.percent <= 100:
                raise InvalidArgument(f"service.traffic[{i}].percent must be between 0 and 100")
            if (
                target.type_ == BY_REVISION
                and target.revision
                and f"{svc.name}/revisions/{target.revision}" not in self.store.revisions
                and target.revision != svc.template.revision
            ):
                raise InvalidArgument(
                    f"service.traffic[{i}].revision {target.revision!r} does not exist"
                )
            if target.type_ == BY_REVISION and not target.revision:
                raise InvalidArgument(
                    f"service.traffic[{i}].revision is required for TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"
                )
            total += target.percent
        if svc.traffic and total != 100:
            raise InvalidArgument(f"service.traffic percentages must add up to 100, not {total}")
        if svc.invoker_iam_disabled and self.config.org_policy_require_invoker_iam:
            # Refused before anything is stored: the service and its serving revision stay.
            # Google also requires run.services.setIamPolicy to set the field
            # (https://cloud.google.com/run/docs/authenticating/public#invoker_check); API
            # permissions are not enforced locally yet.
            raise FailedPrecondition(REQUIRE_INVOKER_IAM)

    async def create(
        self, parent: str, request_svc: Any, service_id: str, validate_only: bool
    ) -> Any:
        p = names.parent(parent)
        names.check_service_id(service_id)
        name = f"{p}/services/{service_id}"
        if request_svc.name and request_svc.name != name:
            raise InvalidArgument("service.name must be empty or match parent and service_id")
        if name in self.store.services:
            raise AlreadyExists(f"Resource '{service_id}' already exists.")
        svc = ServicePb()
        svc.CopyFrom(request_svc)
        for output_only in OUTPUT_ONLY:
            svc.ClearField(output_only)
        svc.name = name
        if not svc.traffic:
            svc.traffic.add(type_=LATEST, percent=100)
        self._validate(svc)
        svc.uid = str(uuid.uuid4())
        svc.generation = 1
        svc.create_time.CopyFrom(now())
        svc.update_time.CopyFrom(svc.create_time)
        svc.creator = svc.last_modifier = "local-user@localcloud"
        if validate_only:
            return await self._operation(svc, done=True)
        port = await self._allocate_port(name)
        svc.uri = f"http://{self.config.host}:{port}"
        svc.urls.extend([svc.uri, f"http://{service_id}.run.localhost:{self.config.ingress_port}"])
        self._mark_reconciling(svc)
        await self.store.services.put(svc)
        if self.ingress is not None:
            await self.ingress.open(name, port)
        op = await self._operation(svc)
        self._reconcile_soon(name, op.name)
        return op

    async def update(self, request_svc: Any, allow_missing: bool, validate_only: bool) -> Any:
        p, service_id = names.service(request_svc.name)
        current = self.store.services.get(request_svc.name)
        if current is None:
            if allow_missing:
                return await self.create(str(p), request_svc, service_id, validate_only)
            current = self.get(request_svc.name)  # NotFound
        if request_svc.etag and request_svc.etag != current.etag:
            raise Aborted(
                f"etag {request_svc.etag!r} does not match the service's current etag {current.etag!r}"
            )
        svc = ServicePb()
        svc.CopyFrom(request_svc)
        for output_only in OUTPUT_ONLY:  # a client sends back what it read; ignore those
            svc.ClearField(output_only)
        if not svc.traffic:
            svc.traffic.add(type_=LATEST, percent=100)
        self._validate(svc)
        for keep in (
            "observed_generation",
            "uid",
            "create_time",
            "creator",
            "uri",
            "latest_ready_revision",
            "latest_created_revision",
        ):
            field = getattr(current, keep)
            if hasattr(field, "CopyFrom"):
                getattr(svc, keep).CopyFrom(field)
            else:
                setattr(svc, keep, field)
        svc.ClearField("urls")
        svc.urls.extend(current.urls)
        svc.generation = current.generation + 1
        svc.update_time.CopyFrom(now())
        svc.last_modifier = "local-user@localcloud"
        if validate_only:
            return await self._operation(svc, done=True)
        svc.traffic_statuses.extend(current.traffic_statuses)
        self._mark_reconciling(svc)
        await self.store.services.put(svc)
        op = await self._operation(svc)
        self._reconcile_soon(svc.name, op.name)
        return op

    async def delete(self, name: str, etag: str, validate_only: bool) -> Any:
        svc = self.get(name)
        if etag and etag != svc.etag:
            raise Aborted(f"etag {etag!r} does not match the service's current etag {svc.etag!r}")
        if validate_only:
            return await self._operation(svc, done=True)
        task = self.tasks.pop(name, None)
        if task is not None:
            task.cancel()
        for op_name in self.pending_ops.pop(name, []):
            # A reconcile cancelled before it even ran must still finish its operation.
            await self._abort(op_name, DELETED)
        for rev in self.store.revisions_of(name):
            await self.autoscaler.drop(rev.name)
        if self.ingress is not None:
            await self.ingress.close(name)
        await self.store.delete_service(name)
        await self.policies.forget(name)
        svc.delete_time.CopyFrom(now())
        return await self._operation(svc, done=True)

    async def delete_revision(self, name: str, etag: str, validate_only: bool) -> Any:
        rev = self.get_revision(name)
        svc = self.store.services.get(rev.service)
        if svc is not None:
            serving = {t.revision for t in svc.traffic_statuses if t.percent > 0}
            if rev.name.rsplit("/", 1)[-1] in serving or svc.latest_ready_revision == rev.name:
                raise FailedPrecondition(
                    f"Revision {rev.name.rsplit('/', 1)[-1]} is serving traffic and cannot be deleted."
                )
        if validate_only:
            return await self._operation(
                rev, done=True, parent=rev.service.rsplit("/services/", 1)[0]
            )
        await self.autoscaler.drop(rev.name)
        await self.store.revisions.delete(rev.name)
        return await self._operation(rev, done=True, parent=rev.service.rsplit("/services/", 1)[0])

    # -- helpers -------------------------------------------------------------------------
    async def _allocate_port(self, name: str) -> int:
        port = self.store.ports.get(name)
        if port is not None:
            return port
        used = set(self.store.ports.values())
        candidate = self.config.run_first_port
        import socket

        while True:
            if candidate not in used:
                with socket.socket() as sock:
                    try:
                        sock.bind((self.config.host, candidate))
                        break
                    except OSError:
                        pass
            candidate += 1
        await self.store.set_port(name, candidate)
        return candidate

    def _mark_reconciling(self, svc: Any) -> None:
        svc.reconciling = True
        svc.etag = hashlib.sha256(
            f"{svc.uid}/{svc.generation}/{svc.update_time.ToNanoseconds()}".encode()
        ).hexdigest()[:16]
        svc.ClearField("terminal_condition")
        svc.terminal_condition.CopyFrom(_condition("Ready", C.State.CONDITION_RECONCILING))

    async def _operation(
        self, message: Any, *, done: bool = False, parent: str | None = None
    ) -> Any:
        parent = parent or message.name.rsplit("/services/", 1)[0]
        return await self.operations.create(parent, message, response=message if done else None)

    def _reconcile_soon(self, name: str, op_name: str | None) -> None:
        previous = self.tasks.get(name)
        if op_name is not None:
            self.pending_ops.setdefault(name, []).append(op_name)

        async def run() -> None:
            try:
                if previous is not None and not previous.done():
                    await asyncio.gather(previous, return_exceptions=True)
                await self._reconcile(name, op_name)
            finally:
                pending = self.pending_ops.get(name, [])
                if op_name in pending:
                    pending.remove(op_name)

        self.tasks[name] = asyncio.get_running_loop().create_task(run(), name=f"reconcile {name}")

    def _new_revision(self, svc: Any) -> Any:
        existing = self.store.revisions_of(svc.name)
        number = max((r.generation for r in existing), default=0) + 1
        service_id = svc.name.rsplit("/", 1)[-1]
        rev_id = (
            svc.template.revision
            or f"{service_id}-{number:05d}-{''.join(random.choices(string.ascii_lowercase, k=3))}"
        )
        rev = RevisionPb(name=f"{svc.name}/revisions/{rev_id}", service=svc.name, generation=number)
        t = svc.template
        rev.uid = str(uuid.uuid4())
        rev.create_time.CopyFrom(now())
        rev.update_time.CopyFrom(rev.create_time)
        rev.labels.update(t.labels)
        rev.annotations.update(t.annotations)
        rev.annotations["localcloud.template-key"] = _template_key(t)
        rev.scaling.CopyFrom(t.scaling)
        rev.max_instance_request_concurrency = (
            t.max_instance_request_concurrency or DEFAULT_CONCURRENCY
        )
        if t.HasField("timeout"):
            rev.timeout.CopyFrom(t.timeout)
        else:
            rev.timeout.seconds = DEFAULT_TIMEOUT
        rev.service_account = t.service_account
        rev.containers.extend(t.containers)
        rev.reconciling = True
        rev.log_uri = str(log_path(self.log_dir, rev.name))
        rev.conditions.append(_condition("Ready", C.State.CONDITION_RECONCILING))
        return rev

    async def _reconcile(self, name: str, op_name: str | None) -> None:
        """Bring the service to its spec; finish ``op_name`` (if any) with the outcome."""
        svc = self.store.services.get(name)
        if svc is None:
            return
        try:
            key = _template_key(svc.template)
            await self._settle_interrupted(svc, key)
            latest = self.store.revisions.get(svc.latest_created_revision)
            error: str | None = None
            if (
                latest is None
                or latest.annotations.get("localcloud.template-key") != key
                or (
                    svc.template.revision
                    and latest.name.rsplit("/", 1)[-1] != svc.template.revision
                )
            ):
                if (
                    svc.template.revision
                    and f"{svc.name}/revisions/{svc.template.revision}" in self.store.revisions
                ):
                    raise InvalidArgument(
                        f"Revision {svc.template.revision} already exists; revisions are immutable"
                    )
                rev = self._new_revision(svc)
                await self.store.revisions.put(rev)
                svc.latest_created_revision = rev.name
                error = await self._start_revision(svc, rev)
            elif latest.name != svc.latest_ready_revision:
                error = await self._start_revision(svc, latest)
            svc = self._merge_status(name, svc)
            if svc is None:
                await self._abort(op_name, DELETED)
                return
            svc.ClearField("conditions")
            svc.ClearField("terminal_condition")
            if error is None:
                svc.terminal_condition.CopyFrom(_condition("Ready", C.State.CONDITION_SUCCEEDED))
                svc.conditions.append(
                    _condition("ConfigurationsReady", C.State.CONDITION_SUCCEEDED)
                )
                svc.conditions.append(_condition("RoutesReady", C.State.CONDITION_SUCCEEDED))
            else:
                svc.terminal_condition.CopyFrom(
                    _condition(
                        "Ready", C.State.CONDITION_FAILED, error, C.CommonReason.REVISION_FAILED
                    )
                )
            await self.store.services.put(svc)
            if op_name is None:
                return
            if error is None:
                await self.operations.finish(op_name, response=svc, metadata=svc)
            else:
                await self.operations.finish(
                    op_name, error=FailedPrecondition(error).to_proto(), metadata=svc
                )
        except asyncio.CancelledError:
            if not self.stopping:  # a stop leaves it to the next start to finish
                await asyncio.shield(self._abort(op_name, DELETED))
            raise
        except Exception as exc:
            if not isinstance(exc, GoogleError):
                LOG.exception("reconciling %s failed", name)
            failure = as_google_error(exc)
            current = self._merge_status(name, svc)
            if current is not None:
                current.ClearField("terminal_condition")
                current.terminal_condition.CopyFrom(
                    _condition("Ready", C.State.CONDITION_FAILED, failure.message)
                )
                await self.store.services.put(current)
            if op_name is not None:
                await self.operations.finish(op_name, error=failure.to_proto(), metadata=svc)

    def _merge_status(self, name: str, reconciled: Any) -> Any | None:
        """The stored service with this reconcile's results: a newer update made meanwhile
        keeps its spec (and its own reconcile follows), never overwritten by this one."""
        current = self.store.services.get(name)
        if current is None:
            return None
        if current is not reconciled:
            current.latest_created_revision = reconciled.latest_created_revision
            current.latest_ready_revision = reconciled.latest_ready_revision
        self._route(current)
        current.observed_generation = reconciled.generation
        current.reconciling = current.generation > reconciled.generation
        return current

    async def _settle_interrupted(self, svc: Any, key: str) -> None:
        """Revisions still ``reconciling`` were being started when localcloud stopped (one
        service's reconciles never overlap). The newest, when it is the template the service
        wants, becomes its latest created revision again, to be started below; any other is
        marked failed, as nothing will start it. (The stored service may name it already:
        an update made during its reconcile stored what that reconcile had set.)"""
        latest = self.store.revisions.get(svc.latest_created_revision)
        for rev in self.store.revisions_of(svc.name):  # newest first
            if not rev.reconciling:
                continue
            wanted = rev.annotations.get("localcloud.template-key") == key and (
                not svc.template.revision or rev.name.endswith("/" + svc.template.revision)
            )
            if wanted and (latest is None or rev.generation >= latest.generation):
                svc.latest_created_revision = rev.name
                latest = rev
                continue
            rev.reconciling = False
            rev.ClearField("conditions")
            rev.conditions.append(_condition("Ready", C.State.CONDITION_FAILED, INTERRUPTED))
            await self.store.revisions.put(rev)

    async def _abort(self, op_name: str | None, message: str) -> None:
        if op_name is None:
            return
        try:
            if not self.operations.get(op_name).done:
                await self.operations.finish(op_name, error=Aborted(message).to_proto())
        except NotFound:
            pass

    async def _start_revision(self, svc: Any, rev: Any) -> str | None:
        """Pull, unpack, start one instance; None when Ready, else the failure message."""
        rev_id = rev.name.rsplit("/", 1)[-1]
        try:
            pool = await self.pool_for(rev)
            await pool.probe()
        except Exception as exc:
            message = (
                f"Revision '{rev_id}' is not ready and cannot serve traffic. "
                f"The user-provided container failed to start and listen on the port defined by the PORT environment variable. {exc}"
            )
            if isinstance(exc, ImageAccessDenied):  # Cloud Run's agent may not read it
                message = f"Revision '{rev_id}' is not ready and cannot serve traffic. {exc}"
            rev.ClearField("conditions")
            rev.conditions.append(_condition("Ready", C.State.CONDITION_FAILED, message))
            rev.reconciling = False
            await self.store.revisions.put(rev)
            await self.autoscaler.drop(rev.name)
            return message
        rev.ClearField("conditions")
        rev.conditions.append(_condition("Ready", C.State.CONDITION_SUCCEEDED))
        rev.conditions.append(_condition("ContainerHealthy", C.State.CONDITION_SUCCEEDED))
        rev.reconciling = False
        rev.observed_generation = rev.generation
        await self.store.revisions.put(rev)
        svc.latest_ready_revision = rev.name
        return None

    def _route(self, svc: Any) -> None:
        """Resolve traffic targets to revisions (traffic_statuses), as Cloud Run reports them."""
        svc.ClearField("traffic_statuses")
        service_id = svc.name.rsplit("/", 1)[-1]
        for target in svc.traffic:
            status = svc.traffic_statuses.add(
                type_=target.type_ or LATEST, percent=target.percent, tag=target.tag
            )
            if target.type_ == BY_REVISION:
                status.revision = target.revision
            elif svc.latest_ready_revision:
                status.revision = svc.latest_ready_revision.rsplit("/", 1)[-1]
            if target.tag:
                status.uri = (
                    f"http://{target.tag}---{service_id}.run.localhost:{self.config.ingress_port}"
                )

    async def pool_for(self, rev: Any) -> Pool:
        pool = self.autoscaler.pools.get(rev.name)
        if pool is not None:
            return pool
        lock = self._pool_locks.setdefault(rev.name, asyncio.Lock())
        async with lock:  # concurrent first requests must share one pool
            pool = self.autoscaler.pools.get(rev.name)
            if pool is None:
                pool = await self._make_pool(rev)
            return pool

    async def _make_pool(self, rev: Any) -> Pool:
        container = rev.containers[0]
        image = await self.autoscaler.cache.ensure(container.image, rev.name)
        project = rev.name.split("/")[1]
        service_id = rev.service.rsplit("/", 1)[-1]
        rev_id = rev.name.rsplit("/", 1)[-1]
        # google-auth finds the metadata server where these say (compute_engine/_metadata.py),
        # so google.auth.default() and fetch_id_token work unchanged inside the instance.
        metadata = urlsplit(self.config.http_url).netloc
        env = {
            **self.client_env,
            "GCE_METADATA_HOST": metadata,
            "GCE_METADATA_IP": metadata,
            "GOOGLE_CLOUD_PROJECT": project,
            "K_SERVICE": service_id,
            "K_REVISION": rev_id,
            "K_CONFIGURATION": service_id,
        }
        env.update({e.name: e.value for e in container.env})
        self.log_dir.mkdir(parents=True, exist_ok=True)
        unsandboxed = self.config.run_unsandboxed
        limits = resources.limits(dict(container.resources.limits))
        cfg = self.config

        # Whom the instance acts as: the revision's service account, else the Compute Engine
        # default one, as on Cloud Run (https://cloud.google.com/run/docs/securing/service-identity).
        account = (
            rev.service_account
            or f"{project_number(project)}-compute@developer.gserviceaccount.com"
        )
        region = rev.name.split("/")[3]
        who = Identity(account, project, region, rev.name)

        def spec_for(port: int) -> Any:
            return sandbox.InstanceSpec(
                identity=who,
                image=image,
                env={**env, "PORT": str(port)},
                port=port,
                log_path=log_path(self.log_dir, rev.name),
                unsandboxed=unsandboxed,
                command=list(container.command) or None,
                args=list(container.args) or None,
                limits=limits,
                forward_ports=self._forward_ports(),
                log_max_bytes=cfg.run_log_max_bytes,
                contained=cfg.run_isolation == "full",
            )

        pool = Pool(
            rev.name,
            spec_for,
            rev.max_instance_request_concurrency,
            rev.scaling.min_instance_count,
            rev.scaling.max_instance_count,
            self.autoscaler.prestarts.start,
        )
        self.autoscaler.pools[rev.name] = pool
        return pool

    def _forward_ports(self) -> tuple[int, ...]:
        """What an instance reaches on its own loopback: localcloud's APIs, the services'
        ports as they are when it starts (pasta takes milliseconds a port, so not a range)
        and the host ports the user listed."""
        cfg = self.config
        apis: tuple[int, ...] = (cfg.grpc_port, cfg.storage_port, cfg.registry_port)
        apis += (cfg.http_port, cfg.ingress_port, *cfg.run_host_ports)
        return (*apis, *self.store.ports.values())

    def _start_ahead(self, image: UnpackedImage) -> None:
        """A sandbox of an image just pushed, started before any revision asks for it, as
        a revision's first instance would be (``prestart.py``); its limits the defaults."""
        cfg = self.config
        spec = sandbox.InstanceSpec(
            image=image,
            env={},
            port=0,
            log_path=Path(os.devnull),
            unsandboxed=cfg.run_unsandboxed,
            limits=resources.limits({}),
            forward_ports=self._forward_ports(),
            log_max_bytes=cfg.run_log_max_bytes,
            contained=cfg.run_isolation == "full",
        )
        self.autoscaler.prestarts.offer(spec)

    def pick_revision(self, svc: Any, tag: str | None = None) -> Any | None:
        """A revision for one request, by tag or by the traffic percentages."""
        statuses = [t for t in svc.traffic_statuses if t.revision]
        if tag is not None:
            statuses = [t for t in statuses if t.tag == tag]
            if not statuses:
                return None
            choice = statuses[0]
        else:
            weighted = [t for t in statuses if t.percent > 0]
            if not weighted:
                return None
            choice = random.choices(weighted, weights=[t.percent for t in weighted])[0]
        return self.store.revisions.get(f"{svc.name}/revisions/{choice.revision}")

    async def start(self) -> None:
        """After a restart services come back: ports open, and a revision serving traffic
        with ``min_instance_count`` gets its instances at once, as Cloud Run keeps them;
        others start on their first request.

        What a stop interrupted is finished: each service with a generation not yet
        observed, or with operations not done, is reconciled again, once per such
        operation (in turn, as updates are), and each ends with that reconcile's outcome;
        the operations of a service that is gone fail.
        """
        if self.ingress is not None:
            for name, port in self.store.ports.items():
                if name in self.store.services:
                    await self.ingress.open(name, port)
        interrupted: dict[str, list[str]] = {}
        for op in self.operations.unfinished():
            if op.metadata.Is(ServicePb.DESCRIPTOR):
                svc = ServicePb()
                op.metadata.Unpack(svc)
                interrupted.setdefault(svc.name, []).append(op.name)
        for name, svc in list(self.store.services.items()):
            ops: list[str | None] = list(interrupted.pop(name, []))
            if ops or svc.reconciling or svc.generation > svc.observed_generation:
                for op_name in ops or [None]:
                    self._reconcile_soon(name, op_name)
                continue  # the reconcile starts what the service should run
            for status in svc.traffic_statuses:
                rev = self.store.revisions.get(f"{name}/revisions/{status.revision}")
                if status.percent > 0 and rev is not None and rev.scaling.min_instance_count:
                    task = asyncio.get_running_loop().create_task(
                        self._warm(rev), name=f"warm {rev.name}"
                    )
                    self._warming.add(task)
                    task.add_done_callback(self._warming.discard)
        for ops_of_gone in interrupted.values():
            for op_name in ops_of_gone:
                await self._abort(op_name, DELETED)

    async def _warm(self, rev: Any) -> None:
        """Start a revision's minimum instances (the pool's reaper keeps them after)."""
        try:
            pool = await self.pool_for(rev)
            await pool.reap(self.autoscaler.idle)
        except Exception as exc:  # the first request will try again and say why
            LOG.warning("starting the minimum instances of %s failed: %s", rev.name, exc)

    async def stop(self) -> None:
        self.stopping = True
        for warming in list(self._warming):
            warming.cancel()
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)

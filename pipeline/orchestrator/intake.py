"""Intake: turn an uploaded archive or a deploy request into one execution of ``deploy``.

Both entry points end in :func:`accept`: claim the deployment id exactly once (a claim
object created with ``if_generation_match=0``), check the archive and the manifest, publish
``accepted`` (or ``failed`` naming the problem, and start nothing), then start the
workflow. Eventarc delivers at least once, so a second delivery finds the claim and does
nothing; a delivery that finds a claim whose execution is not recorded yet (the first
attempt is still running, or crashed) raises, so Eventarc retries it later, and a claim
left that way for :data:`STALE_CLAIM_SECONDS` is taken over.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from google.api_core import exceptions

from orchestrator import archive, runtimes
from orchestrator.bounds import clip, loads_json
from orchestrator.config import pipeline
from orchestrator.manifest import (
    MAX_REQUEST_BYTES,
    Manifest,
    ManifestError,
    Source,
    deployment_id,
    object_metadata_overrides,
    parse_request,
    read_manifest_from_zip,
    resolve,
    service_from_archive,
)
from orchestrator.records import claim_name, now
from orchestrator.status import StatusEvent
from orchestrator.step import TRANSIENT, Context, context

LOG = logging.getLogger(__name__)
# Longer than the intake functions' own timeout (pipeline.json), so a slow first attempt is
# never taken for a dead one.
STALE_CLAIM_SECONDS = 150.0
EXECUTION_LABEL = "deployment-id"
MAX_ARGUMENT_BYTES = 32 * 1024  # Workflows' limit on an execution's argument


class ClaimBusy(RuntimeError):
    """Another attempt holds the claim and has not started the workflow yet: retry later."""


class Rejected(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _age(stamp: str) -> float:
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return float("inf")
    return (datetime.now(UTC) - then).total_seconds()


def _guess_service(source: Source, overrides: dict[str, Any]) -> str:
    if isinstance(overrides.get("service"), str):
        return overrides["service"]
    try:
        return service_from_archive(source.object)
    except ManifestError:
        return ""


def _claim(ctx: Context, dep_id: str, source: Source, service: str) -> str | None:
    """ "new" or "taken over" when this attempt owns the deployment; None when it is handled."""
    claim = {
        "deployment_id": dep_id,
        "service": service,
        "source": source.uri(),
        "execution": None,
        "state": "claimed",
        "error": None,
        "created": now(),
    }
    name = claim_name(dep_id)
    if ctx.records.create(name, claim) is not None:
        return "new"
    found = ctx.records.read(name)
    if found is None:
        return "new" if ctx.records.create(name, claim) is not None else None
    existing, generation = found
    if existing.get("state") != "claimed":
        LOG.info("deployment %s is already %s; ignoring this delivery", dep_id, existing["state"])
        return None
    if _age(existing.get("created", "")) < STALE_CLAIM_SECONDS:
        raise ClaimBusy(f"deployment {dep_id} is being accepted by another attempt")
    LOG.warning("taking over the stale claim of deployment %s", dep_id)
    return "taken over" if ctx.records.replace(name, claim, generation) is not None else None


def _unreadable(ctx: Context, source: Source, exc: exceptions.ClientError) -> Rejected:
    """Why ``source`` cannot be read, and what to grant when it is a permission: a bucket
    other than the sources bucket is read by the intake and by the build's account only
    once its owner grants them (Terraform grants the sources bucket alone)."""
    if isinstance(exc, exceptions.Forbidden):
        return Rejected(
            "SOURCE_UNREADABLE",
            f"{source.uri()} cannot be read by the pipeline's service account: "
            f"{clip(str(exc.message), 500)}; grant roles/storage.objectViewer on "
            f"gs://{source.bucket} to the intake functions' accounts and to the build account "
            f"{ctx.settings.build_service_account}",
        )
    return Rejected(
        "SOURCE_UNREADABLE", f"{source.uri()} cannot be read: {clip(str(exc.message), 500)}"
    )


@contextlib.contextmanager
def _reading(ctx: Context, source: Source) -> Iterator[None]:
    """Cloud Storage's errors reading ``source`` as the intake reports them: a transient one
    raised as it is (Eventarc retries), any other a Rejected naming what is wrong."""
    try:
        yield
    except exceptions.ClientError as exc:
        if isinstance(exc, (exceptions.TooManyRequests, exceptions.Conflict)):
            raise
        raise _unreadable(ctx, source, exc) from None


def _source_blob(ctx: Context, source: Source) -> Any:
    """The source object's metadata, checked for the archive size limit."""
    with _reading(ctx, source):
        blob = ctx.clients.storage.bucket(source.bucket).get_blob(
            source.object, generation=source.generation
        )
    if blob is None:
        raise Rejected("SOURCE_NOT_FOUND", f"{source.uri()} does not exist")
    if blob.size is not None and blob.size > archive.MAX_ARCHIVE_BYTES:
        raise Rejected(
            "INVALID_ARCHIVE",
            f"{source.uri()} is {blob.size} bytes; the limit is {archive.MAX_ARCHIVE_BYTES}",
        )
    return blob


def check_source(data: bytes, source: Source, overrides: dict[str, Any], origin: str) -> Manifest:
    """The manifest to deploy the archive ``data`` with, or Rejected naming what is wrong.

    The archive first (its entries, and which languages' entry files it has), then the
    manifest, whose runtime must be one of those languages (and defaults by it); then,
    for a Node.js source, its package.json and the main file it names. A Python source's
    package.json, or a Node.js source's main.py, is the builder's business, not checked.
    """
    try:
        contents = archive.inspect(data)
        found = read_manifest_from_zip(data) or {}
    except ManifestError as exc:  # function.yaml too large, bad YAML, too deep...
        raise Rejected("INVALID_MANIFEST", f"{source.uri()}: {exc}") from None
    except archive.ArchiveProblem as exc:
        raise Rejected("INVALID_ARCHIVE", f"{source.uri()}: {exc}") from None
    except archive.DAMAGED as exc:  # inspect passed, reading function.yaml did not
        raise Rejected(
            "INVALID_ARCHIVE", f"{source.uri()}: the zip archive is damaged: {exc}"
        ) from None
    try:
        manifest = resolve(
            found,
            overrides,
            source.object,
            overrides_origin=origin,
            languages=contents.languages,
        )
    except ManifestError as exc:
        raise Rejected("INVALID_MANIFEST", str(exc)) from None
    if runtimes.language_of(manifest.runtime) == runtimes.NODEJS:
        try:
            archive.node_main(contents, archive.read_package_json(data))
        except archive.ArchiveProblem as exc:
            raise Rejected("INVALID_ARCHIVE", f"{source.uri()}: {exc}") from None
    return manifest


def accept(
    source: Source,
    dep_id: str,
    overrides: dict[str, Any],
    origin: str,
    ctx: Context | None = None,
) -> str | None:
    """Claim, check and start one deployment; the execution name, or None if not started."""
    ctx = ctx or context()
    service = _guess_service(source, overrides)
    # The source's metadata is read while the deployment is claimed (one round trip less
    # before the workflow starts); only a claimed deployment downloads and checks it.
    with ThreadPoolExecutor(1) as pool:
        looking = pool.submit(_source_blob, ctx, source)
        claimed = _claim(ctx, dep_id, source, service)
    if claimed is None:
        return None
    try:
        blob = looking.result()
        with _reading(ctx, source):
            data = blob.download_as_bytes()
        manifest = check_source(data, source, overrides, origin)
    except Rejected as rejected:
        _fail(ctx, dep_id, service, source, rejected.code, rejected.message)
        return None

    argument = {
        "deployment_id": dep_id,
        "service": manifest.service,
        "source": source.uri(),
        "bucket": source.bucket,
        "object": source.object,
        "generation": source.generation,
        "manifest": manifest.to_dict(),
    }
    encoded = json.dumps(argument, separators=(",", ":"))
    if len(encoded.encode()) > MAX_ARGUMENT_BYTES:
        _fail(
            ctx,
            dep_id,
            manifest.service,
            source,
            "INVALID_MANIFEST",
            f"the deployment's settings are {len(encoded.encode()):,} bytes as JSON; a "
            f"Workflows execution argument holds at most {MAX_ARGUMENT_BYTES:,} "
            f"(https://cloud.google.com/workflows/quotas): make env smaller",
        )
        return None
    execution = _started_execution(ctx, dep_id) if claimed == "taken over" else None
    if execution is None:
        _publish(
            ctx,
            dep_id,
            manifest.service,
            source,
            "succeeded",
            f"deploying {source.uri()} as service {manifest.service}",
            details={"manifest": manifest.to_dict()},
        )
        try:
            execution = ctx.clients.executions.create_execution(
                parent=ctx.settings.workflow_path,
                execution={
                    "argument": encoded,
                    "labels": {EXECUTION_LABEL: dep_id},
                },
            ).name
        except exceptions.ClientError as exc:
            if isinstance(exc, (exceptions.TooManyRequests, exceptions.Conflict)):
                raise  # Eventarc retries
            message = f"the deploy workflow could not be started: {exc.message or exc}"
            error = {"code": "WORKFLOW_NOT_STARTED", "message": message}
            _record(ctx, dep_id, manifest.service, source, "failed", error=error)
            _publish(
                ctx, dep_id, manifest.service, source, "failed", message, error["code"], step="done"
            )
            return None
    _record(ctx, dep_id, manifest.service, source, "accepted", execution=execution)
    LOG.info("deployment %s of %s: execution %s", dep_id, manifest.service, execution)
    return execution


def _started_execution(ctx: Context, dep_id: str) -> str | None:
    """An execution already started for ``dep_id`` by an attempt that died before recording it.

    Only consulted when a stale claim was taken over. The server finds it by the label every
    execution intake starts carries: ListExecutions returns the BASIC view, which has no
    labels, so listing and comparing labels here would never match on Google Cloud.
    https://cloud.google.com/workflows/docs/reference/executions/rest/v1/projects.locations.workflows.executions/list
    (``filter``: AIP-160, the ``label`` field; deployment ids are ``d-`` and hex digits, so
    the value needs no escaping.)
    """
    from google.cloud.workflows import executions_v1

    request = executions_v1.ListExecutionsRequest(
        parent=ctx.settings.workflow_path,
        filter=f'labels.{EXECUTION_LABEL}="{dep_id}"',
        page_size=1,
        view=executions_v1.ExecutionView.BASIC,
    )
    page = next(iter(ctx.clients.executions.list_executions(request=request).pages), None)
    return page.executions[0].name if page is not None and page.executions else None


def _record(
    ctx: Context,
    dep_id: str,
    service: str,
    source: Source,
    state: str,
    *,
    execution: str | None = None,
    error: dict[str, str] | None = None,
) -> None:
    ctx.records.write(
        claim_name(dep_id),
        {
            "deployment_id": dep_id,
            "service": service,
            "source": source.uri(),
            "execution": execution,
            "state": state,
            "error": None if error is None else {**error, "message": clip(error["message"])},
            "created": now(),
        },
    )


def _fail(ctx: Context, dep_id: str, service: str, source: Source, code: str, message: str) -> None:
    """Report and record a deployment refused at intake; nothing is started.

    Reported first: a failure that cannot be published (the intake's account may not
    publish to the status topic) leaves the claim unfinished, so the delivery is retried
    and finally dead-lettered instead of acknowledged as reported. A claim that cannot be
    recorded (the account may not write the records) does not stop the report."""
    _publish(ctx, dep_id, service, source, "failed", message, code)
    try:
        _record(ctx, dep_id, service, source, "failed", error={"code": code, "message": message})
    except exceptions.Forbidden as exc:
        LOG.error("deployment %s: its failure is reported but not recorded: %s", dep_id, exc)


def _publish(
    ctx: Context,
    dep_id: str,
    service: str,
    source: Source,
    state: str,
    message: str,
    code: str | None = None,
    details: dict[str, Any] | None = None,
    step: str = "accepted",
) -> None:
    ctx.status.publish(
        StatusEvent(
            deployment_id=dep_id,
            service=service,
            step=step,
            state=state,
            message=message,
            error_code=code,
            details=details or {},
            source_uri=source.uri(),
        )
    )


def is_intake_object(name: str, reserved_prefix: str) -> bool:
    return name.lower().endswith(".zip") and not name.startswith(reserved_prefix)


def source_uploaded(data: dict[str, Any], ctx: Context | None = None) -> str | None:
    """A Cloud Storage ``object.finalized`` event's data -> the deployment it starts."""
    ctx = ctx or context()
    bucket, name = str(data.get("bucket", "")), str(data.get("name", ""))
    try:
        generation = int(data.get("generation") or 0)
    except (TypeError, ValueError):
        generation = 0
    source = Source(bucket, name, generation or None)
    with _whatever_happens(ctx, deployment_id(bucket, name, generation), source):
        return _source_uploaded(data, ctx)


def deploy_requested(message: dict[str, Any], ctx: Context | None = None) -> str | None:
    """A Pub/Sub ``messagePublished`` event's message -> the deployment it starts."""
    ctx = ctx or context()
    msg_id = str(message.get("messageId") or message.get("message_id") or "")
    bad = Source("invalid-request", msg_id or "message", None)
    with _whatever_happens(ctx, deployment_id("deploy-requests", msg_id, 0), bad):
        return _deploy_requested(message, msg_id, bad, ctx)


@contextlib.contextmanager
def _whatever_happens(ctx: Context, dep_id: str, source: Source) -> Iterator[None]:
    """Every delivery ends in a status event: an error the intake did not foresee still
    reports ``failed`` at ``accepted`` (code INTERNAL, a short reason) and the delivery is
    acknowledged, since redelivering it would fail the same way. Transient errors (an API
    answering 5xx, a connection lost) and a claim held by another attempt are raised, so
    Eventarc delivers again."""
    try:
        yield
    except (ClaimBusy, *TRANSIENT):
        raise
    except Exception as exc:
        LOG.exception("intake of %s failed unexpectedly", source.uri())
        reason = clip(f"the intake failed unexpectedly: {type(exc).__name__}: {exc}", 500)
        try:
            found = ctx.records.read(claim_name(dep_id))
        except exceptions.Forbidden:  # the records are what is refused: report it anyway
            found = None
        if found is not None and found[0].get("state") != "claimed":
            return  # already reported (accepted or failed): nothing more to say
        _fail(ctx, dep_id, "", source, "INTERNAL", reason)


def _source_uploaded(data: dict[str, Any], ctx: Context) -> str | None:
    bucket, name = data.get("bucket", ""), data.get("name", "")
    prefix = pipeline()["reserved_prefix"]
    if not is_intake_object(name, prefix):
        LOG.info("ignoring gs://%s/%s: not a .zip source archive outside %s", bucket, name, prefix)
        return None
    source = Source(bucket, name, int(data["generation"]))
    dep_id = deployment_id(bucket, name, source.generation or 0)
    try:
        overrides = object_metadata_overrides(data.get("metadata") or {})
    except ManifestError as exc:
        service = _guess_service(source, {})
        if _claim(ctx, dep_id, source, service):
            _fail(ctx, dep_id, service, source, "INVALID_MANIFEST", str(exc))
        return None
    return accept(source, dep_id, overrides, "object metadata", ctx)


def _deploy_requested(
    message: dict[str, Any], msg_id: str, bad: Source, ctx: Context
) -> str | None:
    raw = base64.b64decode(message.get("data") or b"")
    try:
        source, fields = parse_request(raw)
    except ManifestError as exc:
        # No trustworthy source: the deployment is named after the message itself.
        dep_id = deployment_id("deploy-requests", msg_id, 0)
        service = _service_in(raw)
        if _claim(ctx, dep_id, bad, service):
            _fail(ctx, dep_id, service, bad, "INVALID_REQUEST", str(exc))
        return None
    if source.generation is None:
        try:
            blob = ctx.clients.storage.bucket(source.bucket).get_blob(source.object)
        except exceptions.NotFound:
            blob = None
        except exceptions.ClientError as exc:
            if isinstance(exc, (exceptions.TooManyRequests, exceptions.Conflict)):
                raise  # transient: Eventarc retries
            rejected = _unreadable(ctx, source, exc)
            dep_id = deployment_id(source.bucket, source.object, 0, fields)
            service = _guess_service(source, fields)
            if _claim(ctx, dep_id, source, service):
                _fail(ctx, dep_id, service, source, rejected.code, rejected.message)
            return None
        if blob is None:
            dep_id = deployment_id(source.bucket, source.object, 0, fields)
            service = _guess_service(source, fields)
            if _claim(ctx, dep_id, source, service):
                _fail(
                    ctx,
                    dep_id,
                    service,
                    source,
                    "SOURCE_NOT_FOUND",
                    f"{source.uri()} does not exist",
                )
            return None
        source = Source(source.bucket, source.object, int(blob.generation))
    dep_id = deployment_id(source.bucket, source.object, source.generation or 0, fields)
    return accept(source, dep_id, fields, "deploy request", ctx)


def _service_in(raw: bytes) -> str:
    """The ``service`` a request that failed to parse asked for, if it can be read cheaply."""
    if len(raw) > MAX_REQUEST_BYTES:
        return ""
    try:
        found = loads_json(raw, "deploy request", MAX_REQUEST_BYTES)
    except ValueError:
        return ""
    service = found.get("service") if isinstance(found, dict) else None
    return service if isinstance(service, str) and len(service) <= 63 else ""

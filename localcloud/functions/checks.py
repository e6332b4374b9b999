"""What a function must say before anything is built: each refusal names the field.

``core/validate.py`` already holds every request to the API's annotations (an
``event_trigger`` without ``event_type`` is refused there, as REQUIRED). What the
annotations cannot say is checked here, on the function as it will be deployed (a
create's, or an update's merged with what it updates), the way Cloud Functions answers:
INVALID_ARGUMENT naming the field (https://cloud.google.com/functions/docs/reference/rest/v2/projects.locations.functions).
"""

from __future__ import annotations

import re
from typing import Any

from google.cloud.functions_v2 import types

from localcloud.core.errors import InvalidArgument
from localcloud.eventarc import events
from localcloud.functions import runtimes
from localcloud.run import resources

# "This value should be 4-63 characters, and valid characters are /[a-z][0-9]-/."
# (CreateFunctionRequest.function_id, google/cloud/functions/v2/functions.proto)
FUNCTION_ID = re.compile(r"[a-z][a-z0-9-]{2,61}[a-z0-9]")
TOPIC = re.compile(r"projects/[^/]+/topics/[^/]+")
ACCOUNT = re.compile(r"[^@\s/]+@[^@\s/]+\.[^@\s/]+")
# Event-driven functions may run 540 s at most, HTTP functions 3600 s
# (https://cloud.google.com/functions/docs/configuring/timeout).
MAX_TIMEOUT_HTTP = 3600
MAX_TIMEOUT_EVENT = 540
Ingress = types.ServiceConfig.IngressSettings


def _bad(field: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"Invalid function.{field}: {why}")


def function_id(value: str) -> None:
    if not FUNCTION_ID.fullmatch(value):
        raise InvalidArgument(
            f"Invalid function_id {value!r}: use 4 to 63 lowercase letters, digits and "
            "hyphens, starting with a letter and not ending with a hyphen"
        )


def function(fn: Any, function_id: str) -> None:
    """Refuse ``fn`` (a ``Function`` protobuf) as Cloud Functions would, naming the field."""
    _build(fn.build_config, function_id)
    _service(fn.service_config, fn.HasField("event_trigger"))
    if fn.HasField("event_trigger"):
        _trigger(fn.event_trigger)
    if fn.kms_key_name:
        raise _bad("kms_key_name", "customer-managed encryption keys are not supported locally")


def _build(build: Any, function_id: str) -> None:
    source = build.source
    which = source.WhichOneof("source")
    if which is None:
        raise _bad(
            "build_config.source",
            "a source is required: upload a zip with GenerateUploadUrl and name it in "
            "build_config.source.storage_source",
        )
    if which == "repo_source":
        raise _bad(
            "build_config.source.repo_source",
            "Cloud Source Repositories are not supported by localcloud; use storage_source",
        )
    if which == "git_uri":
        raise _bad("build_config.source.git_uri", "git_uri is valid only for 1st gen functions")
    storage = source.storage_source
    if not storage.bucket:
        raise _bad("build_config.source.storage_source.bucket", "the bucket is required")
    if not storage.object_:
        raise _bad("build_config.source.storage_source.object", "the object is required")
    offered = runtimes.names()
    if not build.runtime:
        raise _bad(
            "build_config.runtime",
            f"a runtime is required when deploying a new function; one of {', '.join(offered)}",
        )
    if build.runtime not in offered:
        raise _bad(
            "build_config.runtime",
            f"runtime {build.runtime!r} is not supported; use one of {', '.join(offered)} "
            "(ListRuntimes)",
        )
    entry = build.entry_point or function_id
    if not all(part.isidentifier() for part in entry.split(".")):
        where = "" if build.entry_point else " (the function id, as no entry point is given)"
        raise _bad(
            "build_config.entry_point",
            f"{entry!r}{where} is not the name of a Python function",
        )
    if build.worker_pool:
        raise _bad("build_config.worker_pool", "private worker pools are not supported locally")
    if build.docker_repository and not build.docker_repository.endswith(
        "/repositories/gcf-artifacts"
    ):
        raise _bad(
            "build_config.docker_repository",
            "localcloud pushes to the gcf-artifacts repository Cloud Functions manages",
        )
    for key in build.environment_variables:
        if not key or key.startswith("GOOGLE_FUNCTION_"):
            raise _bad(
                "build_config.environment_variables",
                f"{key!r} is reserved: Cloud Functions sets it from the function",
            )


def _service(service: Any, event: bool) -> None:
    if service.available_memory:
        try:
            resources.memory(service.available_memory)
        except InvalidArgument as exc:
            raise _bad("service_config.available_memory", exc.message) from None
    if service.available_cpu:
        try:
            resources.cpu(service.available_cpu)
        except InvalidArgument as exc:
            raise _bad("service_config.available_cpu", exc.message) from None
    limit = MAX_TIMEOUT_EVENT if event else MAX_TIMEOUT_HTTP
    if not 0 <= service.timeout_seconds <= limit:
        kind = "an event-driven" if event else "an HTTP"
        raise _bad(
            "service_config.timeout_seconds",
            f"{service.timeout_seconds} s: {kind} function's timeout is 1 to {limit} seconds",
        )
    if service.max_instance_count < 0 or service.min_instance_count < 0:
        raise _bad("service_config.max_instance_count", "instance counts must not be negative")
    if service.max_instance_count and service.min_instance_count > service.max_instance_count:
        raise _bad(
            "service_config.min_instance_count",
            f"{service.min_instance_count} exceeds max_instance_count {service.max_instance_count}",
        )
    if not 0 <= service.max_instance_request_concurrency <= 1000:
        raise _bad("service_config.max_instance_request_concurrency", "must be between 1 and 1000")
    if service.max_instance_request_concurrency > 1:
        # https://cloud.google.com/functions/docs/configuring/concurrency: "at least 1 CPU"
        cpu = resources.cpu(service.available_cpu) if service.available_cpu else 0.0
        if cpu < 1:
            raise _bad(
                "service_config.max_instance_request_concurrency",
                f"{service.max_instance_request_concurrency} needs available_cpu of at least "
                "1: total cpu < 1 is not supported with concurrency > 1",
            )
    if service.service_account_email and not ACCOUNT.fullmatch(service.service_account_email):
        raise _bad("service_config.service_account_email", "not a service account's email")
    if service.vpc_connector:
        raise _bad("service_config.vpc_connector", "VPC connectors are not supported locally")
    if service.secret_environment_variables or service.secret_volumes:
        raise _bad(
            "service_config.secret_environment_variables",
            "Secret Manager is not served by localcloud",
        )


def _trigger(trigger: Any) -> None:
    event_type = trigger.event_type
    supported = [events.PUBSUB_TYPE, *events.STORAGE_TYPES]
    if event_type not in supported:
        raise _bad(
            "event_trigger.event_type",
            f"{event_type!r} is not supported; localcloud delivers {', '.join(supported)}",
        )
    if trigger.pubsub_topic:
        if event_type != events.PUBSUB_TYPE:
            raise _bad(
                "event_trigger.pubsub_topic", f"a topic is valid only for {events.PUBSUB_TYPE}"
            )
        if not TOPIC.fullmatch(trigger.pubsub_topic):
            raise _bad(
                "event_trigger.pubsub_topic",
                f"{trigger.pubsub_topic!r} is not projects/PROJECT/topics/TOPIC",
            )
    attributes = [f.attribute for f in trigger.event_filters]
    if "type" in attributes:
        raise _bad("event_trigger.event_filters", "the event type goes in event_type")
    if event_type in events.STORAGE_TYPES and "bucket" not in attributes:
        raise _bad(
            "event_trigger.event_filters",
            f"{event_type} needs a filter on attribute 'bucket' naming the bucket",
        )
    if trigger.service_account_email and not ACCOUNT.fullmatch(trigger.service_account_email):
        raise _bad("event_trigger.service_account_email", "not a service account's email")
    if trigger.channel:
        raise _bad("event_trigger.channel", "third-party channels are not supported locally")

"""Every gRPC method localcloud serves holds its requests to the API's own annotations.

One table walks every ``@rpc`` method of every servicer: for each REQUIRED field (read from
``api_annotations.json``, which is generated from Google's ``.proto`` files) a request
complete but for that field is refused with INVALID_ARGUMENT and a ``google.rpc.BadRequest``
naming it; a resource-name field that does not match its ``google.api.resource`` pattern is
refused the same way; and the complete request is never refused by the checks. The rules
the table expects are stated here apart from ``localcloud/core/validate.py``:

- REQUIRED means present (proto3: non-default; a list: non-empty) (https://google.aip.dev/203).
- A Create's resource ``name`` is not required: it comes from parent + id
  (https://google.aip.dev/133). An Update's resource ``name`` is (https://google.aip.dev/134).
- The request field an HTTP rule maps the body to is never missing over REST, so its own
  presence is not required, but the REQUIRED fields inside it are.
- A method whose HTTP bindings name the resource by different fields (Cloud Build's
  ``project_id`` + ``id``, or ``name``) needs only one binding's: ``gcloud builds list``
  sends ``parent`` alone, which Google answers.

Then a few behaviours through the official clients: OUTPUT_ONLY fields are ignored on create,
an IMMUTABLE field in an update mask is refused, the error's details name the field.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions
from google.protobuf import field_mask_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.pubsub_v1 import types as pubsub_types
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from localcloud.core.wire import RpcSpec

ANNOTATIONS = json.loads(
    (Path(__file__).parents[2] / "localcloud" / "core" / "api_annotations.json").read_text()
)
SERVICER_MODULES = [
    "localcloud.pubsub.service",
    "localcloud.workflows.service",
    "localcloud.cloudbuild.service",
    "localcloud.run.service",
    "localcloud.eventarc.service",
    "localcloud.operations.service",
    "localcloud.core.iam",
    "localcloud.iam.service",
    "localcloud.iam.projects",
    "localcloud.artifactregistry.service",
    "localcloud.functions.service",
]
PROJECT = "strict-project"  # apart from every other suite's resources
BAD_NAME = "not-a-resource-name"


SERVICER_CLASSES: set[type] = set()


def _served() -> list[tuple[str, RpcSpec]]:
    """(service, spec) for every @rpc method of every servicer class in localcloud."""
    found: dict[tuple[str, str], RpcSpec] = {}
    for module_name in SERVICER_MODULES:
        module = importlib.import_module(module_name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module_name:
                continue
            specs = [
                fn.__rpc__
                for _, fn in inspect.getmembers(cls, callable)
                if isinstance(getattr(fn, "__rpc__", None), RpcSpec)
            ]
            if specs:
                SERVICER_CLASSES.add(cls)
                service = getattr(cls, "SERVICE", None) or module.SERVICE
                for spec in specs:
                    found[(service, spec.name)] = spec
    return [(service, spec) for (service, _), spec in sorted(found.items())]


SERVED = _served()


def _pb(cls: Any) -> Any:
    return cls.pb() if hasattr(cls, "pb") and hasattr(cls, "meta") else cls


def _behavior(desc: Descriptor, name: str) -> list[str]:
    return ANNOTATIONS["fields"].get(desc.full_name, {}).get(name, {}).get("behavior", [])


def _patterns(desc: Descriptor, fd: FieldDescriptor, top: bool) -> list[str]:
    """The patterns a string field's value must match; [] when it is no checked name."""
    entry = ANNOTATIONS["fields"].get(desc.full_name, {}).get(fd.name, {})
    patterns: list[str] = []
    if top and "patterns" in entry:
        patterns = entry["patterns"]
    elif top and "type" in entry:
        patterns = ANNOTATIONS["resources"].get(entry["type"], [])
    elif top and "child_type" in entry:
        for child in ANNOTATIONS["resources"].get(entry["child_type"], []):
            parts = child.split("/")
            cut = 2 if parts[-1].startswith("{") else 1
            patterns.append("/".join(parts[:-cut]))
    elif fd.name == "name" and desc.full_name in ANNOTATIONS["messages"]:
        kind = ANNOTATIONS["messages"][desc.full_name]
        patterns = [p for p in ANNOTATIONS["resources"][kind] if "{" in p]
    return [] if "*" in patterns else [p for p in patterns if p]


def _example(pattern: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda m: PROJECT if m.group() == "{project}" else "v1", pattern)


def _fill(message: Any, top: bool, skip_name: bool = False) -> None:
    """Set every REQUIRED field, recursively, to a value its rules accept."""
    desc = message.DESCRIPTOR
    filled_oneofs: set[str] = set()
    for fd in desc.fields:
        required = "REQUIRED" in _behavior(desc, fd.name)
        patterns = [] if fd.type != fd.TYPE_STRING else _patterns(desc, fd, top)
        if fd.name == "name" and skip_name:
            continue
        if not required and not patterns:
            continue
        oneof = fd.containing_oneof
        if oneof is not None and len(oneof.fields) > 1:
            if oneof.name in filled_oneofs:
                continue
            filled_oneofs.add(oneof.name)
        _set(message, fd, _example(patterns[0]) if patterns else None)


def _set(message: Any, fd: FieldDescriptor, text: str | None) -> None:
    if fd.type == fd.TYPE_MESSAGE:
        if fd.message_type.GetOptions().map_entry:
            getattr(message, fd.name)["k"] = "v"  # maps of strings, the only REQUIRED ones
            return
        sub = getattr(message, fd.name).add() if fd.is_repeated else getattr(message, fd.name)
        sub.SetInParent()
        if not fd.message_type.full_name.startswith("google.protobuf."):
            _fill(sub, top=False)
        return
    if fd.type == fd.TYPE_STRING:
        value: Any = text or "v1"
    elif fd.type == fd.TYPE_BYTES:
        value = b"v1"
    elif fd.type == fd.TYPE_BOOL:
        value = True
    elif fd.type == fd.TYPE_ENUM:
        value = fd.enum_type.values[-1].number
    elif fd.cpp_type in (fd.CPPTYPE_FLOAT, fd.CPPTYPE_DOUBLE):
        value = 1.0
    else:
        value = 10  # a valid stream ack deadline, page size, count...
    if fd.is_repeated:
        getattr(message, fd.name).append(value)
    else:
        setattr(message, fd.name, value)


@dataclass(frozen=True)
class Method:
    service: str
    spec: RpcSpec

    @property
    def verb(self) -> str:
        return self.spec.name

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.spec.name}"

    @property
    def request(self) -> Any:
        return _pb(self.spec.request)

    @property
    def body(self) -> str:
        return ANNOTATIONS["bodies"].get(f"{self.service}/{self.spec.name}", "")

    def resource_fields(self) -> list[FieldDescriptor]:
        return [
            fd
            for fd in self.request.DESCRIPTOR.fields
            if fd.type == fd.TYPE_MESSAGE
            and not fd.is_repeated
            and fd.message_type.full_name in ANNOTATIONS["messages"]
        ]

    def complete(self) -> Any:
        """A request whose every REQUIRED field and checked name is set."""
        message = self.request()
        _fill(message, top=True)
        for fd in self.resource_fields():
            resource = getattr(message, fd.name)
            resource.SetInParent()
            _fill(resource, top=False, skip_name=self.verb.startswith("Create"))
            if self.verb.startswith("Update"):
                kind = ANNOTATIONS["messages"][fd.message_type.full_name]
                pattern = next(p for p in ANNOTATIONS["resources"][kind] if "{" in p)
                resource.name = _example(pattern)
        return message

    def alternatives(self, message: Any) -> set[str]:
        """Fields another HTTP binding names in its path, when ``message`` sets every
        field of a binding's path: the request names its resource that binding's way."""
        paths = [
            set(re.findall(r"\{([A-Za-z_]\w*)", b["path"]))
            for b in ANNOTATIONS["http"].get(f"{self.service}/{self.verb}", [])
        ]
        named = set().union(*paths) if paths else set()
        free: set[str] = set()
        for own in paths:
            if own and all(getattr(message, f) for f in own):
                free |= named - own
        return free

    def required_paths(self) -> Iterator[str]:
        """Each field the API requires, as a path from the request."""
        message = self.complete()
        free = self.alternatives(message)
        yield from (p for p in _required(message, "", self, top=True) if p not in free)
        if self.verb.startswith("Update"):
            for fd in self.resource_fields():
                if "REQUIRED" not in _behavior(fd.message_type, "name"):
                    yield f"{fd.name}.name"

    def name_paths(self) -> Iterator[str]:
        """Each resource-name field of the request that must match a pattern."""
        desc = self.request.DESCRIPTOR
        for fd in desc.fields:
            if fd.type == fd.TYPE_STRING and not fd.is_repeated and _patterns(desc, fd, True):
                yield fd.name
        if self.verb.startswith("Update"):
            for fd in self.resource_fields():
                yield f"{fd.name}.name"


def _required(message: Any, prefix: str, method: Method, top: bool) -> Iterator[str]:
    desc = message.DESCRIPTOR
    for fd in desc.fields:
        path = prefix + fd.name
        is_body = top and fd.name == method.body
        in_create_body = (
            prefix
            and method.verb.startswith("Create")
            and fd.name == "name"
            and desc.full_name in ANNOTATIONS["messages"]
        )
        # A number or bool reads 0 when unset and 0 may be meant (a nack's ack deadline):
        # Google's services check their ranges, presence cannot be asked.
        numeric = not fd.is_repeated and fd.type not in (
            fd.TYPE_STRING,
            fd.TYPE_BYTES,
            fd.TYPE_MESSAGE,
            fd.TYPE_ENUM,
        )
        required = "REQUIRED" in _behavior(desc, fd.name) and not numeric
        if required and not is_body and not in_create_body:
            yield path
        if fd.type == fd.TYPE_MESSAGE and not fd.message_type.GetOptions().map_entry:
            if fd.is_repeated and len(getattr(message, fd.name)):
                yield from _required(getattr(message, fd.name)[0], f"{path}[0].", method, False)
            elif not fd.is_repeated and message.HasField(fd.name):
                yield from _required(getattr(message, fd.name), f"{path}.", method, False)


def _without(message: Any, path: str) -> Any:
    """A copy of ``message`` with the field at ``path`` cleared."""
    copy = type(message)()
    copy.CopyFrom(message)
    *parents, last = path.split(".")
    target = copy
    for part in parents:
        name, _, index = part.partition("[")
        target = getattr(target, name)[int(index[:-1])] if index else getattr(target, name)
    target.ClearField(last)
    return copy


def _with(message: Any, path: str, value: str) -> Any:
    copy = type(message)()
    copy.CopyFrom(message)
    *parents, last = path.split(".")
    target = copy
    for part in parents:
        target = getattr(target, part)
    setattr(target, last, value)
    return copy


def _call(channel: grpc.Channel, method: Method, request: Any) -> grpc.RpcError | None:
    """Send ``request``; the error the server answered with, or None."""
    serialize = type(request).SerializeToString
    try:
        if method.spec.request_streaming:
            call = channel.stream_stream(
                method.path, request_serializer=serialize, response_deserializer=bytes
            )
            for _ in call(iter([request]), timeout=10):
                break
        elif method.spec.response_streaming:
            for _ in channel.unary_stream(
                method.path, request_serializer=serialize, response_deserializer=bytes
            )(request, timeout=10):
                break
        else:
            channel.unary_unary(
                method.path, request_serializer=serialize, response_deserializer=bytes
            )(request, timeout=10)
    except grpc.RpcError as exc:
        return exc
    return None


def _violations(error: grpc.RpcError | None) -> list[str]:
    """The fields a BadRequest detail names (none when the checks let the request by)."""
    if error is None or error.code() != grpc.StatusCode.INVALID_ARGUMENT:  # type: ignore[attr-defined]
        return []
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    fields: list[str] = []
    for detail in status.details if status else []:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields.extend(v.field for v in bad.field_violations)
    return fields


METHODS = [Method(service, spec) for service, spec in SERVED]
REQUIRED_CASES = [(m, path) for m in METHODS for path in m.required_paths()]
NAME_CASES = [(m, path) for m in METHODS for path in m.name_paths()]


@pytest.fixture(scope="module")
def channel(localcloud) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(localcloud.config.grpc_address) as ch:
        yield ch


def test_the_table_covers_every_service():
    """A servicer the discovery missed would go unchecked: the table walks every servicer
    the server registers (``LocalCloud._handlers``) and names all the services."""
    from localcloud import server

    called = set(re.findall(r"(\w+)\(", inspect.getsource(server.LocalCloud._handlers)))
    registered = {
        cls
        for name in called
        if inspect.isclass(cls := getattr(server, name, None))
        and any(hasattr(fn, "__rpc__") for _, fn in inspect.getmembers(cls, callable))
    }
    assert registered and registered <= SERVICER_CLASSES
    assert {m.service for m in METHODS} == {
        "google.pubsub.v1.Publisher",
        "google.pubsub.v1.Subscriber",
        "google.cloud.workflows.v1.Workflows",
        "google.cloud.workflows.executions.v1.Executions",
        "google.devtools.cloudbuild.v1.CloudBuild",
        "google.cloud.run.v2.Services",
        "google.cloud.run.v2.Revisions",
        "google.cloud.eventarc.v1.Eventarc",
        "google.longrunning.Operations",
        "google.iam.v1.IAMPolicy",
        "google.iam.admin.v1.IAM",
        "google.cloud.resourcemanager.v3.Projects",
        "google.devtools.artifactregistry.v1.ArtifactRegistry",
        "google.cloud.functions.v2.FunctionService",
    }
    assert len(REQUIRED_CASES) > 50 and len(NAME_CASES) > 40


@pytest.mark.parametrize(
    ("method", "path"), REQUIRED_CASES, ids=[f"{m.verb}-{p}" for m, p in REQUIRED_CASES]
)
def test_a_missing_required_field_is_refused_naming_it(channel, method, path):
    error = _call(channel, method, _without(method.complete(), path))
    assert error is not None, f"{method.path} accepted a request without {path}"
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert path in _violations(error), error
    assert path in error.details()


@pytest.mark.parametrize(
    ("method", "path"), NAME_CASES, ids=[f"{m.verb}-{p}" for m, p in NAME_CASES]
)
def test_a_malformed_resource_name_is_refused_naming_it(channel, method, path):
    error = _call(channel, method, _with(method.complete(), path, BAD_NAME))
    assert error is not None, f"{method.path} accepted {path}={BAD_NAME}"
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert path in _violations(error), error
    assert BAD_NAME in error.details()


@pytest.mark.parametrize("method", METHODS, ids=[m.path for m in METHODS])
def test_a_complete_request_passes_the_checks(channel, method):
    """The checks refuse only what the annotations say (the handler may still say no)."""
    assert _violations(_call(channel, method, method.complete())) == []


def test_a_resource_named_as_another_binding_names_it_passes(channel):
    """ListBuilds and GetBuild by ``parent``/``name`` alone (Cloud Build's location bindings,
    what ``gcloud builds list/describe`` send): ``project_id`` and ``id`` are not asked."""
    by_verb = {m.verb: m for m in METHODS if m.service.endswith("CloudBuild")}
    parent = f"projects/{PROJECT}/locations/global"
    listing = by_verb["ListBuilds"].request(parent=parent)
    assert _violations(_call(channel, by_verb["ListBuilds"], listing)) == []
    getting = by_verb["GetBuild"].request(name=f"{parent}/builds/nope")
    assert _violations(_call(channel, by_verb["GetBuild"], getting)) == []
    assert _violations(_call(channel, by_verb["ListBuilds"], by_verb["ListBuilds"].request())) == [
        "project_id"
    ]


def test_a_body_request_field_is_not_required_but_its_contents_are(channel):
    """CreateExecution without ``execution`` is what Google's own samples send."""
    executions = Method(
        "google.cloud.workflows.executions.v1.Executions",
        next(s for v, s in SERVED if s.name == "CreateExecution"),
    )
    request = executions.request(parent=f"projects/{PROJECT}/locations/v1/workflows/absent")
    error = _call(channel, executions, request)
    assert error is not None and error.code() == grpc.StatusCode.NOT_FOUND, error
    services = Method(
        "google.cloud.run.v2.Services", next(s for v, s in SERVED if s.name == "CreateService")
    )
    request = services.request(parent=f"projects/{PROJECT}/locations/v1", service_id="s")
    assert _violations(_call(channel, services, request)) == ["service.template"]


def test_output_only_fields_are_ignored_on_create(local_target):
    """Google ignores output-only fields a caller sets: they never reach the resource."""
    name = local_target.topic_path("output-only")
    topic = local_target.publisher.create_topic(
        request=pubsub_types.Topic(
            name=name, state=pubsub_types.Topic.State.INGESTION_RESOURCE_ERROR
        )
    )
    assert topic.state != pubsub_types.Topic.State.INGESTION_RESOURCE_ERROR
    sub = local_target.subscriber.create_subscription(
        request=pubsub_types.Subscription(
            name=local_target.subscription_path("output-only"),
            topic=name,
            state=pubsub_types.Subscription.State.RESOURCE_ERROR,
            topic_message_retention_duration={"seconds": 12345},
        )
    )
    assert sub.state != pubsub_types.Subscription.State.RESOURCE_ERROR
    assert sub.topic_message_retention_duration.seconds != 12345
    assert local_target.publisher.get_topic(topic=name).state == topic.state


def test_an_immutable_field_in_an_update_mask_is_refused(local_target):
    name = local_target.topic_path("immutable")
    local_target.publisher.create_topic(name=name)
    with pytest.raises(exceptions.InvalidArgument) as caught:
        local_target.publisher.update_topic(
            topic=pubsub_types.Topic(name=name, tags={"env": "prod"}),
            update_mask=field_mask_pb2.FieldMask(paths=["tags"]),
        )
    assert "'tags' is immutable" in caught.value.message
    bad = [d for d in caught.value.details if isinstance(d, error_details_pb2.BadRequest)]
    assert [v.field for v in bad[0].field_violations] == ["update_mask"]


def test_the_official_client_sees_the_field_violation(localcloud):
    """google-api-core decodes the BadRequest: a caller can tell which field to fix."""
    from google.cloud import run_v2

    from orchestrator.clients import Clients, Environment

    services = Clients(Environment.from_env(localcloud.env)).run_services
    with pytest.raises(exceptions.InvalidArgument) as caught:
        services.create_service(
            parent=f"projects/{PROJECT}/locations/us-central1",
            service=run_v2.Service(template=run_v2.RevisionTemplate(containers=[{}])),
            service_id=f"s-{uuid.uuid4().hex[:6]}",
        )
    assert caught.value.message == (
        "Violation in CreateServiceRequest.service.template.containers[0].image: "
        "required field not present."
    )
    bad = [d for d in caught.value.details if isinstance(d, error_details_pb2.BadRequest)]
    assert [v.field for v in bad[0].field_violations] == ["service.template.containers[0].image"]


def test_an_update_needs_only_the_required_fields_its_mask_names(local_target):
    """A subscription's REQUIRED topic is not resent to change its ack deadline."""
    topic = local_target.topic_path("masked")
    local_target.publisher.create_topic(name=topic)
    name = local_target.subscription_path("masked")
    local_target.subscriber.create_subscription(name=name, topic=topic)
    updated = local_target.subscriber.update_subscription(
        subscription=pubsub_types.Subscription(name=name, ack_deadline_seconds=42),
        update_mask=field_mask_pb2.FieldMask(paths=["ack_deadline_seconds"]),
    )
    assert updated.ack_deadline_seconds == 42
    with pytest.raises(exceptions.InvalidArgument, match=r"subscription\.topic"):
        local_target.subscriber.update_subscription(
            subscription=pubsub_types.Subscription(name=name),
            update_mask=field_mask_pb2.FieldMask(paths=["topic"]),
        )

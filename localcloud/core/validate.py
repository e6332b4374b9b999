"""Every request checked against the API's own annotations before a handler sees it.

Google's front ends hold each request to the rules its ``.proto`` declares
(https://google.aip.dev/203): a ``REQUIRED`` field must be set, an ``OUTPUT_ONLY`` field is
ignored on input, an ``IMMUTABLE`` (or ``IDENTIFIER``) field cannot be named by an update
mask, and a resource name must match its ``google.api.resource`` patterns
(https://google.aip.dev/122). localcloud holds its callers to the same rules, read from
``api_annotations.json`` (generated from the APIs' ``.proto`` files by ``gen_annotations``:
the client libraries' own descriptors have lost these options), so a request that a real
project would see refused is refused here too, never handled by accident.

A refusal is INVALID_ARGUMENT with a ``google.rpc.BadRequest`` naming each field, as
https://google.aip.dev/193 asks; the message follows Cloud Run's wording ("Violation in
CreateServiceRequest.service.template: required field not present.").

Where Google's services depart from their annotations, the departure is written here:
- On Create (https://google.aip.dev/133) the new resource's ``name`` is composed from
  ``parent`` and the id field and the one in the body is ignored: it is neither required
  nor matched, even where the proto marks it REQUIRED (Eventarc's ``Trigger.name``). Pub/Sub
  predates this: its Create requests are the resource itself and name it.
- On Update (https://google.aip.dev/134) the resource's ``name`` says what to update: it is
  required and matched even where the proto leaves it unmarked (``Workflow.name``).
- A REQUIRED message field that a method's HTTP rule maps the request body to is never
  missing over REST (an empty body is an empty message), so it is not required over gRPC
  either; its contents still are (Google's samples call CreateExecution with no
  ``execution``, and CreateService with an empty service is refused for
  ``service.template``: https://github.com/googleapis/google-cloud-java/issues/11101).
- A method whose HTTP bindings name the resource in different fields (Cloud Build's
  ``/v1/projects/{project_id}/builds/{id}`` and ``/v1/{name=projects/*/locations/*/builds/*}``)
  takes a request that names it as one binding does: the other bindings' path fields are not
  required of it, REQUIRED or not (``gcloud builds list`` sends only ``parent``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from localcloud.core.errors import FieldViolation, InvalidFields

ANNOTATIONS = Path(__file__).with_name("api_annotations.json")
_MESSAGE = FieldDescriptor.TYPE_MESSAGE
_STRING = FieldDescriptor.TYPE_STRING
# A proto3 number or bool without presence reads 0 whether sent or not, and 0 can be
# meant (ModifyAckDeadline's REQUIRED ack_deadline_seconds=0 is a nack): presence cannot
# be asked of them, their services check their ranges.
_UNCHECKABLE = {
    FieldDescriptor.CPPTYPE_INT32,
    FieldDescriptor.CPPTYPE_INT64,
    FieldDescriptor.CPPTYPE_UINT32,
    FieldDescriptor.CPPTYPE_UINT64,
    FieldDescriptor.CPPTYPE_DOUBLE,
    FieldDescriptor.CPPTYPE_FLOAT,
    FieldDescriptor.CPPTYPE_BOOL,
}


@cache
def _annotations() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ANNOTATIONS.read_text())
    return data


def _regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for segment in pattern.split("/"):
        if segment.startswith("{") and segment.endswith("}"):
            parts.append(".+" if segment.endswith("=**}") else "[^/]+")
        else:
            parts.append(re.escape(segment))
    return re.compile("/".join(parts))


def _parents(child_patterns: list[str]) -> list[str]:
    """A ``child_type`` reference names the collection's parent: each pattern less its tail."""
    parents = []
    for pattern in child_patterns:
        segments = pattern.split("/")
        tail = 2 if segments[-1].startswith("{") else 1
        if len(segments) > tail and pattern not in ("*",):
            parent = "/".join(segments[:-tail])
            if parent not in parents:
                parents.append(parent)
    return parents


@dataclass(frozen=True)
class NameRule:
    """Which patterns a resource-name field's value must match."""

    patterns: tuple[str, ...]
    regexes: tuple[re.Pattern[str], ...]

    @staticmethod
    def of(patterns: list[str]) -> NameRule | None:
        if not patterns or "*" in patterns:
            return None  # "any resource" (IAM's resource, Eventarc's bare service id)
        return NameRule(tuple(patterns), tuple(_regex(p) for p in patterns))

    def matches(self, value: str) -> bool:
        return any(r.fullmatch(value) for r in self.regexes)


@dataclass
class Rules:
    """What to check in one message type; ``None`` stands for "nothing in this subtree"."""

    required: list[FieldDescriptor] = field(default_factory=list)
    output_only: list[FieldDescriptor] = field(default_factory=list)
    names: list[tuple[FieldDescriptor, NameRule]] = field(default_factory=list)
    nested: list[tuple[FieldDescriptor, Rules]] = field(default_factory=list)


def _entries(desc: Descriptor) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = _annotations()["fields"].get(desc.full_name, {})
    return entries


def _behavior(desc: Descriptor, name: str) -> list[str]:
    behavior: list[str] = _entries(desc).get(name, {}).get("behavior", [])
    return behavior


def _resource_patterns(kind: str) -> list[str]:
    patterns: list[str] = _annotations()["resources"].get(kind, [])
    return patterns


def _own_name_rule(desc: Descriptor) -> NameRule | None:
    """The rule for a resource message's own ``name`` field, from its ``google.api.resource``."""
    kind = _annotations()["messages"].get(desc.full_name)
    if not kind:
        return None
    # A literal pattern is a placeholder other messages may hold (Pub/Sub's
    # "_deleted-topic_"), never a name a resource can be given.
    return NameRule.of([p for p in _resource_patterns(kind) if "{" in p])


def _reference_rule(entry: dict[str, Any]) -> NameRule | None:
    if "patterns" in entry:
        return NameRule.of(entry["patterns"])
    if "type" in entry:
        return NameRule.of(_resource_patterns(entry["type"]))
    if "child_type" in entry:
        return NameRule.of(_parents(_resource_patterns(entry["child_type"])))
    return None


def _value_field(fd: FieldDescriptor) -> FieldDescriptor | None:
    """The value field of a map entry, or None when ``fd`` is no map."""
    if fd.type == _MESSAGE and fd.message_type.GetOptions().map_entry:
        value: FieldDescriptor = fd.message_type.fields_by_name["value"]
        return value
    return None


_building: dict[tuple[str, bool], Rules] = {}
_built: dict[tuple[str, bool], Rules | None] = {}


def rules_for(desc: Descriptor, top: bool = True) -> Rules | None:
    """The checks for ``desc`` and the messages below it, computed once per message type.

    References are matched only in the request's own fields (``name``, ``parent``, the
    ``topic`` of a subscription...), which Google always takes as full resource names;
    below them only a resource's own ``name`` is. Deeper references are not always full
    names in practice although annotated so: Cloud Run's ``TrafficTarget.revision`` holds
    a revision's id, Eventarc's ``Trigger.service_account`` an email.
    """
    key = (desc.full_name, top)
    if key in _built:
        return _built[key]
    if key in _building:  # a recursive type: its rules are being filled in above us
        return _building[key]
    rules = _building[key] = Rules()
    entries = _entries(desc)
    own_name = _own_name_rule(desc)
    for fd in desc.fields:
        entry = entries.get(fd.name, {})
        behavior = entry.get("behavior", [])
        if "OUTPUT_ONLY" in behavior:
            rules.output_only.append(fd)
            continue
        if "REQUIRED" in behavior and (fd.is_repeated or fd.cpp_type not in _UNCHECKABLE):
            rules.required.append(fd)
        if fd.type == _STRING:
            rule = _reference_rule(entry) if top else None
            if rule is None and fd.name == "name" and own_name is not None:
                rule = own_name
            if rule is not None:
                rules.names.append((fd, rule))
        target = _value_field(fd) or fd
        if target.type == _MESSAGE and not target.message_type.full_name.startswith(
            "google.protobuf."
        ):
            sub = rules_for(target.message_type, top=False)
            if sub is not None:
                rules.nested.append((fd, sub))
    del _building[key]
    empty = not (rules.required or rules.output_only or rules.names or rules.nested)
    _built[key] = None if empty else rules
    return _built[key]


def _present(message: Any, fd: FieldDescriptor) -> bool:
    if fd.is_repeated:
        return len(getattr(message, fd.name)) > 0
    oneof = fd.containing_oneof
    if oneof is not None and len(oneof.fields) > 1:
        # A REQUIRED member of a real oneof is satisfied by any member being set.
        return message.WhichOneof(oneof.name) is not None
    if fd.has_presence:
        return bool(message.HasField(fd.name))
    return bool(getattr(message, fd.name) != fd.default_value)


@dataclass
class _Walk:
    request_type: str
    exempt: set[tuple[str, str]]  # (path, field) pairs not checked: a Create's resource name
    violations: list[FieldViolation] = field(default_factory=list)
    # (path, field) pairs not required (but still matched): another HTTP binding's names.
    optional: set[tuple[str, str]] = field(default_factory=set)
    # An Update with a mask: (the resource's prefix, the mask's paths). Only what the mask
    # names is replaced, so only that need be set (https://google.aip.dev/134): a caller
    # updating a subscription's ack deadline sends no topic.
    mask: tuple[str, list[str]] | None = None

    def unmasked(self, path: str) -> bool:
        if self.mask is None:
            return False
        prefix, paths = self.mask
        if not path.startswith(prefix) or path == prefix + "name":
            return False
        rel = re.sub(r"\[[^]]*\]", "", path[len(prefix) :])
        return not any(
            rel == p or rel.startswith(p + ".") or p.startswith(rel + ".") for p in paths
        )

    def required(self, path: str) -> None:
        self.violations.append(
            FieldViolation(
                path,
                "required field not present",
                f"Violation in {self.request_type}.{path}: required field not present.",
            )
        )

    def bad_name(self, path: str, value: str, rule: NameRule) -> None:
        shapes = " or ".join(rule.patterns)
        self.violations.append(
            FieldViolation(
                path,
                f"must be a resource name of the form {shapes}",
                f"Invalid resource name given ({path}={value}): it must match {shapes}.",
            )
        )

    def message(self, message: Any, rules: Rules, prefix: str, skip_present: str = "") -> None:
        for fd in rules.output_only:
            if fd.is_repeated or not fd.has_presence or message.HasField(fd.name):
                message.ClearField(fd.name)
        for fd in rules.required:
            if (prefix, fd.name) in self.exempt or fd.name == skip_present:
                continue
            if (prefix, fd.name) in self.optional:
                continue
            if not _present(message, fd) and not self.unmasked(prefix + fd.name):
                self.required(prefix + fd.name)
        for fd, rule in rules.names:
            if (prefix, fd.name) in self.exempt:
                continue
            values = getattr(message, fd.name)
            for i, value in enumerate(values) if fd.is_repeated else [(None, values)]:
                if value and not rule.matches(value):
                    where = prefix + fd.name + ("" if i is None else f"[{i}]")
                    self.bad_name(where, value, rule)
        for fd, sub in rules.nested:
            value = getattr(message, fd.name)
            if _value_field(fd) is not None:
                for key, item in value.items():
                    self.message(item, sub, f"{prefix}{fd.name}[{key}].")
            elif fd.is_repeated:
                for i, item in enumerate(value):
                    self.message(item, sub, f"{prefix}{fd.name}[{i}].")
            elif message.HasField(fd.name):
                self.message(value, sub, f"{prefix}{fd.name}.")


class Validator:
    """The checks of one RPC, built from its request type and its method's name."""

    def __init__(self, method: str, request: Descriptor) -> None:
        """``method`` is the full name, ``google.cloud.run.v2.Services/CreateService``."""
        self.request = request
        self.rules = rules_for(request)
        verb = method.rsplit("/", 1)[-1]
        self.body = _annotations()["bodies"].get(method, "")
        # The request fields that carry the resource a Create makes or an Update changes.
        self.resource_fields = [
            fd
            for fd in request.fields
            if fd.type == _MESSAGE
            and not fd.is_repeated
            and fd.message_type.full_name in _annotations()["messages"]
        ]
        self.exempt: set[tuple[str, str]] = set()
        self.name_required: list[FieldDescriptor] = []
        for fd in self.resource_fields:
            if verb.startswith("Create"):
                self.exempt.add((fd.name + ".", "name"))
            elif verb.startswith("Update"):
                self.name_required.append(fd)
        # Per HTTP binding: the request fields its path names, and those only others name.
        paths = [
            set(re.findall(r"\{([A-Za-z_]\w*)", b["path"]))
            for b in _annotations().get("http", {}).get(method, [])
        ]
        named = set().union(*paths) if paths else set()
        self.alternatives = [
            (sorted(own), {("", f) for f in named - own}) for own in paths if own and named - own
        ]
        self.mask = request.fields_by_name.get("update_mask")
        if (
            self.mask is not None
            and self.mask.message_type.full_name != "google.protobuf.FieldMask"
        ):
            self.mask = None

    def __call__(self, message: Any) -> None:
        """Clear what Google ignores, then raise ``InvalidFields`` naming what it refuses."""
        walk = _Walk(self.request.name, self.exempt)
        for own, others in self.alternatives:
            if all(getattr(message, f) for f in own):
                walk.optional |= others
        if self.mask is not None and self.resource_fields and message.HasField(self.mask.name):
            paths = [p for p in getattr(message, self.mask.name).paths if p != "*"]
            if paths:
                walk.mask = (self.resource_fields[0].name + ".", paths)
        body = self.request.fields_by_name.get(self.body) if self.body else None
        if self.rules is not None:
            walk.message(message, self.rules, "", skip_present=body.name if body else "")
        if body is not None and not message.HasField(body.name):
            # Absent over gRPC is empty over REST: its REQUIRED contents are still missing.
            sub = rules_for(body.message_type, top=False)
            if sub is not None:
                empty = message_factory.GetMessageClass(body.message_type)()
                walk.message(empty, sub, body.name + ".")
        for fd in self.name_required:
            # The resource's name says what to update; the walk matched its shape.
            missing = not getattr(message, fd.name).name
            if missing and not any(v.field == f"{fd.name}.name" for v in walk.violations):
                walk.required(f"{fd.name}.name")
        if self.mask is not None and message.HasField(self.mask.name):
            self._check_mask(message, walk)
        if walk.violations:
            raise InvalidFields(walk.violations)

    def _check_mask(self, message: Any, walk: _Walk) -> None:
        target = next((fd for fd in self.resource_fields), None)
        if target is None:
            return
        for path in getattr(message, self.mask.name).paths:
            if path == "*":
                continue
            problem = _mask_problem(target.message_type, path)
            if problem:
                walk.violations.append(
                    FieldViolation(
                        "update_mask",
                        problem,
                        f"Invalid update_mask provided in the {self.request.name}: {problem}.",
                    )
                )


def _mask_problem(desc: Descriptor, path: str) -> str:
    """Why ``path`` cannot be in an update mask of ``desc``, or "" when it can."""
    for i, part in enumerate(path.split(".")):
        fd = desc.fields_by_name.get(part)
        if fd is None:
            return f"'{path}' is not a field of {desc.name}"
        behavior = _behavior(desc, part)
        if "IMMUTABLE" in behavior or "IDENTIFIER" in behavior:
            return f"'{path}' is immutable and cannot be updated"
        if "OUTPUT_ONLY" in behavior:
            return f"'{path}' is output only and cannot be updated"
        if _value_field(fd) is not None or fd.type != _MESSAGE or fd.is_repeated:
            return ""  # a map key, a scalar or a list: nothing further to resolve
        if i < len(path.split(".")) - 1:
            desc = fd.message_type
    return ""


def validator_for(method: str, request_type: Any) -> Validator:
    """The validator of ``method`` whose request is ``request_type`` (proto-plus or protobuf)."""
    pb = (
        request_type.pb()
        if hasattr(request_type, "pb") and hasattr(request_type, "meta")
        else request_type
    )
    return Validator(method, pb.DESCRIPTOR)

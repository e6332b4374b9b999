"""HTTP/JSON to request messages and response messages to JSON, as Google's front end
transcodes (https://cloud.google.com/endpoints/docs/grpc-service-config/reference/rpc/google.api#http):

- the path's variables set the fields they name (``{service.name=...}`` a nested one);
- the body is the request (``body: "*"``) or the one field the rule names, parsed with the
  proto3 JSON mapping (https://protobuf.dev/programming-guides/json/: camelCase or the
  proto's own names, int64 as strings or numbers, enums by name, well-known types in their
  JSON forms, bytes in base64);
- every other field may come as a query parameter (``pageSize=10``, ``a.b=x``, a repeated
  field by repeating the key) unless the body is ``*``; a parameter naming no field is
  refused, as Google refuses it ("Cannot bind query parameter");
- the response is printed with the same mapping (``google.protobuf.json_format``, through
  ``protojson``'s shortcut for plain messages).
"""

from __future__ import annotations

import json
import re
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from localcloud.core.errors import FieldViolation, InvalidFields
from localcloud.rest import protojson

_FIELD_MASK = "google.protobuf.FieldMask"
_WKT_SCALAR = {  # well-known messages a query parameter can carry as text
    "google.protobuf.FieldMask",
    "google.protobuf.Duration",
    "google.protobuf.Timestamp",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
    "google.protobuf.Int32Value",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.FloatValue",
    "google.protobuf.DoubleValue",
    "google.protobuf.BoolValue",
}
_BOOL_WRAPPER = "google.protobuf.BoolValue"
_INTS = {
    FieldDescriptor.CPPTYPE_INT32,
    FieldDescriptor.CPPTYPE_UINT32,
}
_FLOATS = {FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE}
_NUMBER_WRAPPERS = {
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.FloatValue",
    "google.protobuf.DoubleValue",
}


def invalid(message: str, field: str = "") -> InvalidFields:
    """INVALID_ARGUMENT with a BadRequest naming ``field``, as Google's transcoder answers
    a body or parameter it cannot read."""
    return InvalidFields([FieldViolation(field, message, message)])


def _unknown_name(error: json_format.ParseError, where: str) -> InvalidFields:
    text = str(error)
    unknown = re.search(r'has no field named "([^"]+)" at "([^"]*)"', text)
    if unknown:
        # json_format's path starts with the message's own name: Google's names the field.
        path = unknown.group(2).partition(".")[2]
        at = ".".join(p for p in (where, path) if p)
        message = (
            f'Invalid JSON payload received. Unknown name "{unknown.group(1)}"'
            + (f" at '{at}'" if at else "")
            + ": Cannot find field."
        )
        return invalid(message, at)
    return invalid(f"Invalid JSON payload received. {text.splitlines()[0]}", where)


def parse_body(raw: bytes, target: Message, where: str) -> None:
    """Merge the JSON ``raw`` into ``target`` (the request, or the field the rule names)."""
    if not raw.strip():
        return
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        # Google: 'Invalid JSON payload received. Unexpected token.' with where it stopped.
        raise invalid(f"Invalid JSON payload received. {exc}.") from None
    if not isinstance(document, dict) and target.DESCRIPTOR.full_name not in _JSON_VALUES:
        raise invalid(
            "Invalid JSON payload received. Expected an object for "
            f"{target.DESCRIPTOR.full_name}, got {type(document).__name__}.",
            where,
        )
    try:
        protojson.parse_dict(document, target)
    except json_format.ParseError as exc:
        raise _unknown_name(exc, where) from None


_JSON_VALUES = {"google.protobuf.Value", "google.protobuf.ListValue", "google.protobuf.Struct"}


def field_path(descriptor: Descriptor, path: str) -> list[FieldDescriptor] | None:
    """The fields a dotted path (proto or JSON names) walks through, or None."""
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = descriptor
    for part in path.split("."):
        if current is None:
            return None
        fd = current.fields_by_name.get(part) or _by_json_name(current, part)
        if fd is None:
            return None
        fields.append(fd)
        current = fd.message_type
    return fields


def _by_json_name(descriptor: Descriptor, name: str) -> FieldDescriptor | None:
    for fd in descriptor.fields:
        if fd.json_name == name:
            return fd
    return None


def set_path(request: Message, path: str, value: str) -> None:
    """Set the string field ``path`` names (a path template's variable) to ``value``."""
    fields = field_path(request.DESCRIPTOR, path)
    if fields is None or fields[-1].type != FieldDescriptor.TYPE_STRING:
        raise invalid(f"Cannot bind path variable {path!r}: no string field of that name.")
    target = request
    for fd in fields[:-1]:
        target = getattr(target, fd.name)
    setattr(target, fields[-1].name, value)


def _query_value(fd: FieldDescriptor, text: str, key: str) -> Any:
    """``text`` as the JSON value ``json_format`` reads for ``fd``."""
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        kind = fd.message_type.full_name
        if kind not in _WKT_SCALAR:
            raise invalid(
                f"Invalid JSON payload received. Cannot bind query parameter. Field '{key}' "
                "is a message, which a query parameter cannot carry.",
                key,
            )
        if kind == _BOOL_WRAPPER:
            return _bool(text, key)
        if kind in _NUMBER_WRAPPERS:
            return _number(text, key, float if "Float" in kind or "Double" in kind else int)
        if kind == _FIELD_MASK:
            return _camel_mask(text)
        return text
    if fd.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return _bool(text, key)
    if fd.cpp_type in _INTS:
        return _number(text, key, int)
    if fd.cpp_type in _FLOATS:
        return _number(text, key, float)
    if fd.type == FieldDescriptor.TYPE_ENUM and text.lstrip("-").isdigit():
        return int(text)
    return text  # strings, bytes (base64), enums by name, 64-bit integers (JSON strings)


def _camel_mask(text: str) -> str:
    """A field mask's paths as proto3 JSON spells them (camelCase), whichever way the
    caller wrote them: Google's front end takes the proto's own snake_case names in a
    query parameter too, and gcloud sends those (``gcloud functions deploy`` of an existing
    function: ``updateMask=build_config.entry_point,build_config.source``)."""

    def camel(segment: str) -> str:
        head, *rest = segment.split("_")
        return head + "".join(word[:1].upper() + word[1:] for word in rest)

    return ",".join(
        ".".join(camel(segment) for segment in path.split(".")) for path in text.split(",")
    )


def _bool(text: str, key: str) -> bool:
    if text in ("true", "false"):
        return text == "true"
    raise invalid(f"Invalid value at '{key}' (TYPE_BOOL), \"{text}\"", key)


def _number(text: str, key: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        name = "TYPE_INT32" if kind is int else "TYPE_DOUBLE"
        raise invalid(f"Invalid value at '{key}' ({name}), \"{text}\"", key) from None


def parse_query(pairs: list[tuple[str, str]], request: Message, bound: set[str], body: str) -> None:
    """Set the request's fields from query parameters (``bound``: fields the path or the
    body already set, which a parameter cannot name)."""
    document: dict[str, Any] = {}
    for key, text in pairs:
        fields = field_path(request.DESCRIPTOR, key)
        names = ".".join(fd.name for fd in fields) if fields else ""
        if (
            fields is None
            or body == "*"
            or any(names == b or names.startswith(b + ".") for b in bound)
            or any(fd.is_repeated for fd in fields[:-1])
            or (
                fields[-1].message_type is not None
                and fields[-1].message_type.GetOptions().map_entry
            )
        ):
            raise invalid(
                f'Invalid JSON payload received. Unknown name "{key}": Cannot bind query '
                f"parameter. Field '{key}' could not be found in request message.",
                key,
            )
        leaf = fields[-1]
        value = _query_value(leaf, text, key)
        slot = document
        for fd in fields[:-1]:
            slot = slot.setdefault(fd.name, {})
        if leaf.is_repeated:
            slot.setdefault(leaf.name, []).append(value)
        elif leaf.name in slot:
            raise invalid(
                f"Invalid JSON payload received. Field '{key}' is not repeated and is given "
                "more than once.",
                key,
            )
        else:
            slot[leaf.name] = value
    if document:
        scratch = type(request)()
        try:
            json_format.ParseDict(document, scratch, ignore_unknown_fields=False)
        except json_format.ParseError as exc:
            raise invalid(f"Invalid query parameter: {str(exc).splitlines()[0]}") from None
        request.MergeFrom(scratch)


def to_json(message: Message) -> dict[str, Any]:
    """The proto3 JSON form Google's REST APIs answer with: camelCase, default values left
    out, int64 as strings, enums by name, ``Any`` with its ``@type``."""
    result: dict[str, Any] = protojson.to_dict(message)
    return result

"""Proto3 JSON for the plain messages that carry bulk traffic, exactly as ``json_format``.

``json_format`` is general and pure Python: every field of every message goes through
descriptor checks that cost more than the conversion (a 1,000-message pull takes about
20 ms to print, a 100-message publish over 1 ms to parse). Most of those messages are
plain: strings, bytes, integers, booleans, maps of strings, nested plain messages. For
them a per-descriptor plan, built once, does the same conversion in a fraction of the time.

Anything else is left to ``json_format`` itself, so there is one definition of the mapping
and this module only skips its overhead: a message whose type has an enum, a float, an
extension or a well-known type is printed by ``json_format.MessageToDict``; a document the
plan does not cover in every detail (a null, a name it does not know, a number given as a
string, a text with an unpaired surrogate, a field or a oneof set twice, ...) is parsed by
``json_format.ParseDict`` from the start, which also raises its errors. The tests hold
both directions to ``json_format``'s output for every message type localcloud serves.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from functools import cache, lru_cache
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

_F = FieldDescriptor
_INT64 = {_F.CPPTYPE_INT64, _F.CPPTYPE_UINT64}
_INT32 = {_F.CPPTYPE_INT32, _F.CPPTYPE_UINT32}
_MAX_DEPTH = 32  # deeper documents go to json_format, which counts to 100
# Well-known types json_format converts with their own ToJsonString / FromJsonString.
_TEXT_TYPES = {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}


class _Fallback(Exception):
    """The document or message needs ``json_format``."""


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


@cache
def plain(descriptor: Descriptor) -> bool:
    """Whether every field of ``descriptor`` (and of the messages it holds) is one the
    plans convert: no enums, floats, extensions, groups or well-known types but the ones
    written as text (a timestamp, a duration, a field mask)."""
    return _plain_in(descriptor, set())


def _plain_in(descriptor: Descriptor, visiting: set[str]) -> bool:
    if descriptor.full_name in _TEXT_TYPES:
        return True
    if descriptor.full_name.startswith("google.protobuf.") or descriptor.extension_ranges:
        return False
    if descriptor.full_name in visiting:
        return True  # a recursive type: plain if the rest of it is
    visiting.add(descriptor.full_name)
    for fd in descriptor.fields:
        if fd.cpp_type in (_F.CPPTYPE_ENUM, _F.CPPTYPE_FLOAT, _F.CPPTYPE_DOUBLE):
            return False
        if fd.type == _F.TYPE_GROUP:
            return False
        if fd.message_type is not None and not _plain_in(fd.message_type, visiting):
            return False
    return True


# Printing ------------------------------------------------------------------------------


def to_dict(message: Message) -> Any:
    """``json_format.MessageToDict(message)``, the same dict in the same key order."""
    if not plain(message.DESCRIPTOR) or message.DESCRIPTOR.full_name in _TEXT_TYPES:
        return json_format.MessageToDict(message)
    try:
        return _print(message)
    except ValueError:  # a timestamp out of range, a field mask path with capitals, ...
        return json_format.MessageToDict(message)  # raises json_format's error


def _print(message: Message) -> dict[str, Any]:
    js: dict[str, Any] = {}
    for fd, value in message.ListFields():
        name, convert = _printer(fd)
        js[name] = convert(value)
    return js


def _bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("utf-8")


def _same(value: Any) -> Any:
    return value


@cache
def _printer(fd: FieldDescriptor) -> tuple[str, Callable[[Any], Any]]:
    """The JSON name of a field of a plain message, and what turns its value into JSON."""
    if _is_map(fd):
        value_convert = _scalar_printer(fd.message_type.fields_by_name["value"])
        bool_keys = fd.message_type.fields_by_name["key"].cpp_type == _F.CPPTYPE_BOOL

        def convert_map(value: Any) -> dict[str, Any]:
            return {
                (("true" if key else "false") if bool_keys else str(key)): value_convert(value[key])
                for key in value
            }

        return fd.json_name, convert_map
    one = _scalar_printer(fd)
    if fd.is_repeated:
        return fd.json_name, lambda values: [one(v) for v in values]
    return fd.json_name, one


def _as_text(value: Any) -> str:
    text: str = value.ToJsonString()
    return text


def _timestamp(value: Timestamp) -> str:
    return _timestamp_text(value.seconds, value.nanos)


@lru_cache(maxsize=1024)
def _timestamp_text(seconds: int, nanos: int) -> str:
    """A timestamp as ``Timestamp.ToJsonString`` writes it (about 4 µs a call), kept: the
    messages of one publish share one publish time, and a pull returns them together."""
    text: str = Timestamp(seconds=seconds, nanos=nanos).ToJsonString()
    return text


def _scalar_printer(fd: FieldDescriptor) -> Callable[[Any], Any]:
    if fd.cpp_type == _F.CPPTYPE_MESSAGE:
        kind = fd.message_type.full_name
        if kind == "google.protobuf.Timestamp":
            return _timestamp
        return _as_text if kind in _TEXT_TYPES else _print
    if fd.type == _F.TYPE_BYTES:
        return _bytes
    if fd.cpp_type == _F.CPPTYPE_STRING:
        return str
    if fd.cpp_type == _F.CPPTYPE_BOOL:
        return bool
    if fd.cpp_type in _INT64:
        return str
    return _same


# Parsing -------------------------------------------------------------------------------


def parse_dict(document: Any, message: Message) -> None:
    """``json_format.ParseDict(document, message)`` for an empty ``message``: the same
    fields set, the same errors raised."""
    descriptor = message.DESCRIPTOR
    if plain(descriptor) and descriptor.full_name not in _TEXT_TYPES and not message.ByteSize():
        scratch = type(message)()
        try:
            _parse(document, scratch, 0, _fields(descriptor))
        except (_Fallback, ValueError, TypeError):
            pass
        else:
            message.MergeFrom(scratch)
            return
    json_format.ParseDict(document, message, ignore_unknown_fields=False)


def _parse(js: Any, message: Message, depth: int, fields: _Table) -> None:
    if type(js) is not dict or depth > _MAX_DEPTH:
        raise _Fallback
    seen: set[str] = set()
    for name, value in js.items():
        found = fields.get(name)
        if found is None or value is None:
            raise _Fallback
        key, setter = found
        if key in seen:
            raise _Fallback
        seen.add(key)
        setter(message, value, depth)


# A plain message's fields by JSON and proto name: (the field's name, or its oneof's, which
# one document may set once; what sets it).
_Table = dict[str, tuple[str, Callable[[Message, Any, int], None]]]


@cache
def _fields(descriptor: Descriptor) -> _Table:
    """A plain message's fields by JSON name and by proto name, with their setters."""
    by_name = {}
    for fd in descriptor.fields:
        oneof = fd.containing_oneof
        by_name[fd.name] = (oneof.name if oneof is not None else fd.name, _setter(fd))
    # json_format looks a key up by JSON name first.
    return {**by_name, **{fd.json_name: by_name[fd.name] for fd in descriptor.fields}}


def _setter(fd: FieldDescriptor) -> Callable[[Message, Any, int], None]:
    name = fd.name
    if _is_map(fd):
        key_fd = fd.message_type.fields_by_name["key"]
        value_fd = fd.message_type.fields_by_name["value"]
        if key_fd.cpp_type != _F.CPPTYPE_STRING or value_fd.cpp_type != _F.CPPTYPE_STRING:
            return _give_up
        convert_value = _scalar_parser(value_fd)

        def set_map(message: Message, value: Any, _depth: int) -> None:
            if type(value) is not dict:
                raise _Fallback
            target = getattr(message, name)
            for key, item in value.items():
                if item is None:
                    raise _Fallback
                target[key] = convert_value(item)

        return set_map
    if fd.cpp_type == _F.CPPTYPE_MESSAGE and fd.message_type.full_name in _TEXT_TYPES:
        if fd.is_repeated:
            return _give_up

        def set_text(message: Message, value: Any, _depth: int) -> None:
            if type(value) is not str:
                raise _Fallback
            getattr(message, name).FromJsonString(value)

        return set_text
    if fd.cpp_type == _F.CPPTYPE_MESSAGE:
        sub_type = fd.message_type
        if fd.is_repeated:

            def add_messages(message: Message, value: Any, depth: int) -> None:
                if type(value) is not list:
                    raise _Fallback
                target = getattr(message, name)
                table = _fields(sub_type)
                for item in value:
                    _parse(item, target.add(), depth + 1, table)

            return add_messages

        def set_message(message: Message, value: Any, depth: int) -> None:
            sub = getattr(message, name)
            sub.SetInParent()
            _parse(value, sub, depth + 1, _fields(sub_type))

        return set_message
    convert = _scalar_parser(fd)
    if fd.is_repeated:

        def add_scalars(message: Message, value: Any, _depth: int) -> None:
            if type(value) is not list:
                raise _Fallback
            getattr(message, name).extend([convert(item) for item in value])

        return add_scalars

    def set_scalar(message: Message, value: Any, _depth: int) -> None:
        setattr(message, name, convert(value))

    return set_scalar


def _give_up(*_args: Any) -> None:
    raise _Fallback


def _scalar_parser(fd: FieldDescriptor) -> Callable[[Any], Any]:
    if fd.type == _F.TYPE_BYTES:
        return _parse_bytes
    if fd.cpp_type == _F.CPPTYPE_STRING:
        return _parse_string
    if fd.cpp_type == _F.CPPTYPE_BOOL:
        return _parse_bool
    if fd.cpp_type in _INT64 or fd.cpp_type in _INT32:
        return _parse_int
    return _give_up


# json_format's test of a text: an unpaired surrogate is refused.
_UNPAIRED_SURROGATE = re.compile(
    "[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]"
)


def _parse_string(value: Any) -> str:
    if type(value) is not str or (not value.isascii() and _UNPAIRED_SURROGATE.search(value)):
        raise _Fallback
    return value


_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _parse_bytes(value: Any) -> bytes:
    if type(value) is not str:
        raise _Fallback
    encoded = value.encode("utf-8")
    # json_format's reading, base64.urlsafe_b64decode of the text padded with "=" (URL-safe
    # or standard base64, padding optional), without its two layers of Python calls.
    return binascii.a2b_base64((encoded + b"=" * (4 - len(encoded) % 4)).translate(_URLSAFE))


def _parse_bool(value: Any) -> bool:
    if value is True or value is False:
        return value
    raise _Fallback


def _parse_int(value: Any) -> int:
    if type(value) is not int:
        raise _Fallback  # a string, a float, a bool: json_format's rules
    return value

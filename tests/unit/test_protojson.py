"""``protojson`` prints and parses exactly as ``json_format``, for every message type any
served method takes or answers: random messages of each type printed both ways give the
same JSON text (key order too), their JSON parsed both ways gives the same message, and
damaged documents give the same message or the same error."""

from __future__ import annotations

import random
import string
from typing import Any

import orjson
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from google.pubsub_v1.types import pubsub

from localcloud.rest import protojson
from tests.integration.test_request_validation import SERVED

F = FieldDescriptor


def _class(cls: Any) -> Any:
    return cls.pb() if hasattr(cls, "pb") and hasattr(cls, "meta") else cls


def _reachable() -> list[Descriptor]:
    found: dict[str, Descriptor] = {}
    todo = [_class(cls).DESCRIPTOR for _, spec in SERVED for cls in (spec.request, spec.response)]
    while todo:
        d = todo.pop()
        if d.full_name in found:
            continue
        found[d.full_name] = d
        todo.extend(fd.message_type for fd in d.fields if fd.message_type is not None)
    return sorted(found.values(), key=lambda d: d.full_name)


TYPES = [d for d in _reachable() if not d.GetOptions().map_entry]
PLAIN = [d for d in TYPES if protojson.plain(d)]
TEXT = string.ascii_letters + string.digits + " -_/.:é€😀"


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(TEXT) for _ in range(rng.randint(0, 12)))


def _scalar(fd: FieldDescriptor, rng: random.Random) -> Any:
    t = fd.cpp_type
    if t == F.CPPTYPE_STRING:
        if fd.type == F.TYPE_BYTES:
            return rng.randbytes(rng.randint(0, 20))
        return _text(rng)
    if t == F.CPPTYPE_BOOL:
        return rng.random() < 0.5
    if t == F.CPPTYPE_INT32:
        return rng.choice([0, 1, -1, 2**31 - 1, -(2**31), rng.randint(-1000, 1000)])
    if t == F.CPPTYPE_UINT32:
        return rng.choice([0, 1, 2**32 - 1, rng.randint(0, 1000)])
    if t == F.CPPTYPE_INT64:
        return rng.choice([0, -1, 2**63 - 1, -(2**63), 2**53 + 1, rng.randint(-(10**12), 10**12)])
    if t == F.CPPTYPE_UINT64:
        return rng.choice([0, 2**64 - 1, 2**53 + 1, rng.randint(0, 10**12)])
    if t in (F.CPPTYPE_FLOAT, F.CPPTYPE_DOUBLE):
        return rng.choice([0.0, 1.5, -2.25, 1e10, float("inf")])
    if t == F.CPPTYPE_ENUM:
        return rng.choice(fd.enum_type.values).number
    raise AssertionError(fd.full_name)


def _fill(message: Message, rng: random.Random, depth: int) -> None:
    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Timestamp":
        message.seconds = rng.randint(0, 4_000_000_000)
        message.nanos = rng.choice([0, 1_000_000, 123_456_000, 999_999_999])
        return
    if name == "google.protobuf.Duration":
        message.seconds = rng.randint(0, 10**6)
        message.nanos = rng.choice([0, 5_000_000, 7])
        return
    if name == "google.protobuf.FieldMask":
        message.paths.extend(rng.choice(["a", "b_c", "d_e.f_g"]) for _ in range(rng.randint(0, 3)))
        return
    if name.startswith("google.protobuf."):
        if depth > 0:
            message.SetInParent()
        return  # other well-known types: left empty (json_format prints them either way)
    for fd in message.DESCRIPTOR.fields:
        if rng.random() < 0.35:
            continue
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            key_fd = fd.message_type.fields_by_name["key"]
            value_fd = fd.message_type.fields_by_name["value"]
            target = getattr(message, fd.name)
            for _ in range(rng.randint(0, 3)):
                key = _scalar(key_fd, rng)
                if value_fd.message_type is not None:
                    if depth < 3:
                        _fill(target[key], rng, depth + 1)
                else:
                    target[key] = _scalar(value_fd, rng)
        elif fd.message_type is not None:
            if depth >= 3:
                continue
            if fd.is_repeated:
                for _ in range(rng.randint(0, 3)):
                    _fill(getattr(message, fd.name).add(), rng, depth + 1)
            else:
                sub = getattr(message, fd.name)
                sub.SetInParent()
                _fill(sub, rng, depth + 1)
        elif fd.is_repeated:
            getattr(message, fd.name).extend(_scalar(fd, rng) for _ in range(rng.randint(0, 3)))
        else:
            setattr(message, fd.name, _scalar(fd, rng))


def _random(d: Descriptor, seed: int) -> Message:
    message = GetMessageClass(d)()
    _fill(message, random.Random(f"{d.full_name}-{seed}"), 0)
    return message


def _outcome(parse: Any, document: Any, d: Descriptor) -> Any:
    message = GetMessageClass(d)()
    try:
        parse(document, message)
    except Exception as exc:  # the same error is the point
        return type(exc).__name__, str(exc)
    return message.SerializeToString(deterministic=True)


def _json_format(document: Any, message: Message) -> None:
    json_format.ParseDict(document, message, ignore_unknown_fields=False)


def test_the_bulk_of_pub_sub_is_plain():
    for cls in (
        pubsub.PublishRequest,
        pubsub.PublishResponse,
        pubsub.PullRequest,
        pubsub.PullResponse,
        pubsub.AcknowledgeRequest,
        pubsub.ModifyAckDeadlineRequest,
    ):
        assert protojson.plain(cls.pb().DESCRIPTOR), cls
    assert len(PLAIN) > 40, [d.full_name for d in PLAIN]


@pytest.mark.parametrize("descriptor", TYPES, ids=lambda d: d.full_name)
def test_printing_is_json_formats(descriptor):
    for seed in range(6):
        message = _random(descriptor, seed)
        assert orjson.dumps(protojson.to_dict(message)) == orjson.dumps(
            json_format.MessageToDict(message)
        ), message


@pytest.mark.parametrize("descriptor", TYPES, ids=lambda d: d.full_name)
def test_parsing_is_json_formats(descriptor):
    for seed in range(6):
        message = _random(descriptor, seed)
        for proto_names in (False, True):
            document = json_format.MessageToDict(message, preserving_proto_field_name=proto_names)
            ours = _outcome(protojson.parse_dict, document, descriptor)
            assert ours == _outcome(_json_format, document, descriptor)
            if protojson.plain(descriptor):  # json_format's own round trip is not exact
                assert ours == message.SerializeToString(deterministic=True)  # for all


DAMAGE = [
    None,
    "x",
    "12",
    "-3",
    1.5,
    1.0,
    True,
    False,
    7,
    2**70,
    -1,
    [],
    [None],
    [1, "a"],
    {},
    {"nope": 1},
    "\ud800",
    "a\udc00b",
    "é",
    "AQ==",
    "_-8",
    "!!",
    "2024-01-02T03:04:05Z",
    "2024-01-02T03:04:05.5+01:00",
    "3.5s",
    "aB.cD",
]


def _damaged(document: Any, rng: random.Random) -> Any:
    """``document`` with one value (or key) somewhere replaced."""
    if isinstance(document, dict):
        if not document or rng.random() < 0.2:
            return {**document, rng.choice(["unknownField", "data", "ack_ids"]): rng.choice(DAMAGE)}
        key = rng.choice(list(document))
        if rng.random() < 0.5:
            return {**document, key: rng.choice(DAMAGE)}
        return {**document, key: _damaged(document[key], rng)}
    if isinstance(document, list) and document:
        i = rng.randrange(len(document))
        return [*document[:i], _damaged(document[i], rng), *document[i + 1 :]]
    return rng.choice(DAMAGE)


def _twice(descriptor: Descriptor, seed: int) -> list[Any]:
    """Documents that set one field twice (under its JSON and its proto name), or two
    fields of one oneof, each value valid on its own."""
    other = json_format.MessageToDict(
        _random(descriptor, seed + 100), preserving_proto_field_name=True
    )
    document = json_format.MessageToDict(_random(descriptor, seed))
    out = []
    for fd in descriptor.fields:
        if fd.name in other and fd.json_name != fd.name:
            out.append({**document, fd.name: other[fd.name]})
        oneof = fd.containing_oneof
        if oneof is not None and fd.json_name in document:
            for peer in oneof.fields:
                if peer is not fd and peer.name in other:
                    out.append({**document, peer.name: other[peer.name]})
    return out


@pytest.mark.parametrize("descriptor", PLAIN, ids=lambda d: d.full_name)
def test_damaged_documents_get_json_formats_message_or_error(descriptor):
    rng = random.Random(descriptor.full_name)
    for seed in range(6):
        document = json_format.MessageToDict(_random(descriptor, seed))
        for _ in range(10):
            bad = _damaged(document, rng)
            assert _outcome(protojson.parse_dict, bad, descriptor) == _outcome(
                _json_format, bad, descriptor
            ), bad
        for bad in _twice(descriptor, seed):
            assert _outcome(protojson.parse_dict, bad, descriptor) == _outcome(
                _json_format, bad, descriptor
            ), bad


def test_a_publish_is_parsed_without_json_format(monkeypatch):
    """The plain path is the one taken: with json_format's parser gone, a publish of
    messages with attributes and an ordering key still parses."""

    def refuse(*_args: Any, **_kw: Any) -> None:
        raise AssertionError("json_format was used")

    monkeypatch.setattr(json_format, "ParseDict", refuse)
    monkeypatch.setattr(json_format, "MessageToDict", refuse)
    document = {
        "topic": "projects/p/topics/t",
        "messages": [
            {"data": "aGk=", "attributes": {"k": "v", "é": "ü"}, "orderingKey": "o"},
            {"data": "", "ordering_key": "p"},
        ],
    }
    request = pubsub.PublishRequest.pb()()
    protojson.parse_dict(document, request)
    assert request.messages[0].data == b"hi"
    assert dict(request.messages[0].attributes) == {"k": "v", "é": "ü"}
    assert request.messages[1].ordering_key == "p"
    pulled = pubsub.PullResponse.pb()()
    received = pulled.received_messages.add(ack_id="a")
    received.message.data = b"hi"
    received.message.publish_time.FromJsonString("2026-12-04T20:00:00.5Z")
    assert protojson.to_dict(pulled) == {
        "receivedMessages": [
            {"ackId": "a", "message": {"data": "aGk=", "publishTime": "2026-12-04T20:00:00.500Z"}}
        ]
    }


def _print_outcome(printer: Any, message: Message) -> Any:
    try:
        return orjson.dumps(printer(message))
    except Exception as exc:  # the same error is the point
        return type(exc).__name__, str(exc)


INVALID_TEXT = {
    "google.protobuf.Timestamp": lambda m: setattr(m, "seconds", -(10**12)),
    "google.protobuf.Duration": lambda m: setattr(m, "seconds", 10**12),
    "google.protobuf.FieldMask": lambda m: m.paths.append("aB"),
}


def test_values_json_cannot_print_raise_json_formats_error():
    """A timestamp out of range, a duration too long, a field mask path in capitals:
    ``json_format`` refuses to print them, and so does ``protojson``, in its words."""
    checked = set()
    for d in PLAIN:
        for fd in d.fields:
            kind = fd.message_type.full_name if fd.message_type is not None else ""
            if kind not in INVALID_TEXT or fd.is_repeated:
                continue
            message = GetMessageClass(d)()
            INVALID_TEXT[kind](getattr(message, fd.name))
            ours = _print_outcome(protojson.to_dict, message)
            assert ours == _print_outcome(json_format.MessageToDict, message)
            assert ours[0] == "SerializeToJsonError", ours
            checked.add(kind)
    assert checked == set(INVALID_TEXT)

"""Bounded reading of untrusted input, and bounded writing of what reports on it.

Everything the intake reads comes from whoever can upload to the sources bucket or publish
a deploy request: an archive's ``function.yaml``, object metadata, a request body. Each is
checked for size before it is parsed, and for nesting depth and (YAML) alias expansion by
a scan that does not recurse, so no input can exhaust the stack (a RecursionError) or the
memory (a YAML "billion laughs": aliases of aliases) of the function reading it.

What the pipeline writes about an input (status events, records) is bounded too: a
message is cut with a marker saying how much was left out, and details that would make an
event larger than a few KB are replaced by a note of their size, so every subscriber
receives every event (Pub/Sub's default client flow control and a person reading logs
both have limits).
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

MAX_DEPTH = 32  # levels of nesting in a manifest, metadata value or request
MAX_YAML_NODES = 10_000  # values of a YAML document once its aliases are expanded
MAX_MESSAGE_CHARS = 2_000  # of a status event's or record's message
MAX_DETAILS_BYTES = 4_096  # of a status event's details, as JSON
MAX_VALUE_CHARS = 512  # of one string inside details

_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class InputTooComplex(ValueError):
    """An input nested too deeply or expanding too far; str() says which and how far."""


def check_json_depth(text: str | bytes, what: str, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON text nested more than ``limit`` levels, without parsing it.

    Python's json module recurses once per level: 1,000 levels of ``[`` raise
    RecursionError from inside it. Strings are skipped whole, so brackets inside them do
    not count; malformed text is left for json.loads to describe.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    depth = 0
    for token in _JSON_TOKENS.finditer(text):
        char = token.group()
        if char in "[{":
            depth += 1
            if depth > limit:
                raise InputTooComplex(f"{what}: nested more than {limit} levels deep")
        elif char in "]}":
            depth -= 1


def loads_json(text: str | bytes, what: str, max_bytes: int, limit: int = MAX_DEPTH) -> Any:
    """``json.loads`` for untrusted text: its size, then its depth, are checked first."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > max_bytes:
        raise InputTooComplex(f"{what}: {size:,} bytes is more than the limit of {max_bytes:,}")
    check_json_depth(text, what, limit)
    return json.loads(text)


def check_yaml(raw: bytes, what: str) -> None:
    """Refuse YAML nested more than :data:`MAX_DEPTH` levels or expanding to more than
    :data:`MAX_YAML_NODES` values, from its event stream.

    PyYAML's parser is a state machine (it does not recurse), but its composer and
    constructor do, once per level; and an alias is a reference, so ten aliases of ten
    aliases of ... are a few lines that a validator walking the result visits billions of
    times. The events say both: the depth directly, and an alias's size is the size of
    what its anchor named.
    """
    sizes: dict[str, int] = {}
    frames: list[list[Any]] = []  # [anchor, values so far]
    total = 0
    for event in yaml.parse(raw, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            frames.append([event.anchor, 1])
            if len(frames) > MAX_DEPTH:
                raise InputTooComplex(f"{what}: nested more than {MAX_DEPTH} levels deep")
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            anchor, count = frames.pop()
            if anchor is not None:
                sizes[anchor] = count
        elif isinstance(event, yaml.ScalarEvent):
            count = 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            count = sizes.get(event.anchor, 1)
        else:
            continue
        if frames:
            frames[-1][1] += count
        else:
            total += count
        if total + sum(frame[1] for frame in frames) > MAX_YAML_NODES:
            raise InputTooComplex(
                f"{what}: its aliases expand to more than {MAX_YAML_NODES:,} values"
            )


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with a marker saying how much was left out."""
    if len(text) <= limit:
        return text
    marker = f" ... [{len(text) - limit:,} more characters left out]"
    return text[: max(limit - len(marker), 0)] + marker


def clip_details(details: dict[str, Any], limit: int = MAX_DETAILS_BYTES) -> dict[str, Any]:
    """``details`` within ``limit`` bytes of JSON: long strings cut; then, largest value
    first, a list loses its first items (a log tail keeps its last lines) and anything
    else is replaced by a note of its size, until the whole fits."""
    if _size(details) <= limit:
        return details
    clipped = {key: _clip_value(value) for key, value in details.items()}
    while _size(clipped) > limit:
        key = max(clipped, key=lambda k: _size(clipped[k]))
        value = clipped[key]
        if isinstance(value, list) and len(value) > 2:
            dropped = int(value[0][1:].split()[0]) if _is_drop_note(value[0]) else 0
            rest = value[2:] if dropped else value[1:]
            clipped[key] = [f"[{dropped + 1} earlier items left out]", *rest]
        elif isinstance(value, str) and value.startswith("[") and value.endswith("left out]"):
            break  # nothing left to shrink
        else:
            clipped[key] = f"[{_size(details[key]):,} bytes left out]"
    return clipped


def _is_drop_note(value: Any) -> bool:
    return isinstance(value, str) and value.endswith(" earlier items left out]")


def _clip_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return clip(value, MAX_VALUE_CHARS)
    if depth >= 4:
        return f"[{_size(value):,} bytes left out]"
    if isinstance(value, dict):
        return {str(k)[:MAX_VALUE_CHARS]: _clip_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_clip_value(v, depth + 1) for v in value]
    return value


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), default=str))

"""The pure part of the Workflows standard library: functions usable inside expressions.

No I/O and no sleeping here (``sys.*``, ``http.*``, connectors belong to the interpreter). Each
function checks its argument types itself and raises a WorkflowError tagged TypeError naming the
function and the argument, as Google does, because Python's own duck typing would otherwise
accept values Workflows rejects (``len(5)``, ``"a" + 1``, ``True`` as an integer).
References: https://cloud.google.com/workflows/docs/reference/stdlib/overview and the
per-function pages under https://cloud.google.com/workflows/docs/reference/stdlib/ .
"""

from __future__ import annotations

import base64 as _base64
import binascii
import codecs
import copy
import datetime as _dt
import hashlib
import hmac as _hmac
import json as _json
import math as _math
import re
import urllib.parse
import uuid as _uuid
import zoneinfo
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from localcloud.workflows.expr import WorkflowError, check_int, is_number, stringify, type_name

_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": is_number,
    "boolean": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list | tuple),
    "map": lambda v: isinstance(v, Mapping),
    "bytes": lambda v: isinstance(v, bytes | bytearray),
    "null": lambda v: v is None,
}


def _arg(fn: str, name: str, value: Any, *types: str) -> Any:
    """Check one argument against Workflows types ("number" = integer or double)."""
    if not any(_TYPES[t](value) for t in types):
        raise WorkflowError(
            f"{fn}: argument {name!r} must be {' or '.join(types)}, got {type_name(value)}",
            "TypeError",
        )
    return value


# ---- expression helpers -------------------------------------------------------------------


# Parameter names are Google's: a ``call`` step passes arguments by name (``args: {map: ...}``),
# so each function takes the names its page documents, Python builtins and camelCase included.


def default(val: Any, defaultVal: Any) -> Any:  # the page's names
    """``default(val, defaultVal)`` (expression-helpers page): defaultVal when val is null."""
    return defaultVal if val is None else val


def keys(mapping: Any) -> list[str]:
    """``keys(map)``: the map's keys as a list."""
    return list(_arg("keys", "map", mapping, "map").keys())


def length(value: Any) -> int:
    """``len``: characters of a string, elements of a list, keys of a map."""
    return len(_arg("len", "value", value, "string", "list", "map", "bytes"))


_INT_TEXT = re.compile(r"[+-]?\d+")
_DOUBLE_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def to_int(value: Any) -> int:
    """``int``: from a string or a double (truncated toward zero)."""
    _arg("int", "value", value, "integer", "number", "string")
    if isinstance(value, str):
        if not _INT_TEXT.fullmatch(value.strip()):
            raise WorkflowError(f"int: cannot convert {value!r} to an integer", "ValueError")
        return check_int(int(value))
    if isinstance(value, float) and not _math.isfinite(value):
        raise WorkflowError(f"int: cannot convert {value!r} to an integer", "ValueError")
    return check_int(int(value))


def to_double(value: Any) -> float:
    """``double``: from a string or an integer."""
    _arg("double", "value", value, "number", "string")
    if isinstance(value, str):
        if not _DOUBLE_TEXT.fullmatch(value.strip()):
            raise WorkflowError(f"double: cannot convert {value!r} to a double", "ValueError")
        return float(value)
    return float(value)


def to_string(value: Any) -> str:
    """``string``: from an integer, double or boolean (Workflows never converts implicitly)."""
    return stringify(_arg("string", "value", value, "string", "number", "boolean"))


def get_type(value: Any) -> str:
    """``get_type``: "boolean", "bytes", "double", "integer", "list", "map", "null", "string"."""
    return type_name(value)


def if_(condition: Any, ifTrue: Any, ifFalse: Any) -> Any:  # the page's names
    """``if(cond, a, b)``: a function, so both branches have already been evaluated.

    The expression-helpers page: "If condition evaluates to false or null, ifFalse is returned."
    """
    return ifTrue if _arg("if", "condition", condition, "boolean", "null") else ifFalse


# ---- text ---------------------------------------------------------------------------------


def _str(fn: str, name: str, value: Any) -> str:
    return _arg(fn, name, value, "string")


# What Python's ``re`` accepts but RE2 (the syntax every text.*_regex page names) refuses:
# backreferences and lookaround assertions. A pattern using them is "an invalid regular
# expression" to Google, a ValueError (e.g. .../stdlib/text/match_regex).
_NOT_RE2 = re.compile(r"\\(?:[1-9]|g<)|\(\?(?:[=!]|<[=!]|P=|\()")


def _regex(fn: str, pattern: Any) -> re.Pattern[str]:
    text = _str(fn, "regexp", pattern)
    unescaped = re.sub(r"\\\\", "", text)  # an escaped backslash starts nothing
    if _NOT_RE2.search(unescaped):
        raise WorkflowError(
            f"{fn}: invalid regular expression {text!r}: RE2 has no backreferences or lookarounds",
            "ValueError",
        )
    try:
        return re.compile(text)
    except re.error as exc:
        raise WorkflowError(f"{fn}: invalid regular expression: {exc}", "ValueError") from None


# Constructs after which one start can have matches of several lengths that Python's
# leftmost-first matching may not try longest first: alternation, lazy quantifiers and
# quantified groups. Without them the first match found is already the longest.
_AMBIGUOUS = re.compile(r"\||[*+?}]\?|\)[*+?{]")
# Constructs that look at the end of the text or at a word boundary: a match cut short with
# ``endpos`` would see a false end, so those patterns are tried with a lookahead instead.
_END_SENSITIVE = re.compile(r"\$|\\[zZbB]")
_LONGEST_BUDGET = 20_000  # candidate ends tried per call, so a huge text cannot stall the loop


def _unescaped(pattern: str) -> str:
    """The pattern with escaped characters and character classes blanked out."""
    text = re.sub(r"\\.", lambda m: m.group() if m.group()[1] in "zZbB" else "__", pattern)
    return re.sub(r"\[(?:\\.|[^\]])*\]?", "_", text)


def _matches(pattern: re.Pattern[str], source: str) -> Iterator[tuple[int, int]]:
    """Each (start, end) of a match, leftmost first; of the matches that start at one index
    the longest, as RE2 finds them for Workflows.

    https://cloud.google.com/workflows/docs/reference/stdlib/text/find_all_regex: "In the case
    of overlapping matches, only the leftmost match is considered. If the overlapping matches
    start at the same index, then the longest match is considered." Python's ``re`` takes the
    first alternative that matches (``Hello|HelloWorld`` finds "Hello"), so where the pattern
    allows several lengths the longer ends are tried, longest first. As RE2's global
    replace does, an empty match right where the previous match ended is skipped
    (``x*`` in "abxd" matches before a, before b, "x" and at the end: "-a-b-d-").
    """
    shape = _unescaped(pattern.pattern)
    ambiguous = _AMBIGUOUS.search(shape) is not None
    anchored = _END_SENSITIVE.search(shape) is not None
    budget = _LONGEST_BUDGET
    lookaheads: dict[int, re.Pattern[str]] = {}
    size, pos, last_end = len(source), 0, -1
    while pos <= size:
        found = pattern.search(source, pos)
        if found is None:
            return
        start, end = found.span()
        if start == end == last_end:  # RE2 skips an empty match where the last one ended
            pos = end + 1
            continue
        if ambiguous:
            for longer in range(size, end, -1):
                if budget <= 0:
                    break
                budget -= 1
                if anchored:
                    tail = size - longer
                    if tail not in lookaheads:
                        lookaheads[tail] = re.compile(
                            f"(?:{pattern.pattern})(?=(?s:.){{{tail}}}\\Z)", pattern.flags
                        )
                    hit = lookaheads[tail].match(source, start) is not None
                else:
                    hit = pattern.fullmatch(source, start, longer) is not None
                if hit:
                    end = longer
                    break
        yield start, end
        pos, last_end = (end if end > start else end + 1), end


def find_all(source: Any, substr: Any) -> list[int]:
    """``text.find_all``: the indexes of every non-overlapping occurrence, leftmost first.

    https://cloud.google.com/workflows/docs/reference/stdlib/text/find_all: "Returns a sorted
    list of indexes"; ``text.find_all("00000", "00")`` returns ``[0, 2]``.
    """
    source, substr = (
        _str("text.find_all", "source", source),
        _str("text.find_all", "substr", substr),
    )
    if not substr:
        raise WorkflowError("text.find_all: substr must not be empty", "ValueError")
    found, start = [], source.find(substr)
    while start >= 0:
        found.append(start)
        start = source.find(substr, start + len(substr))
    return found


def find_all_regex(source: Any, regexp: Any) -> list[dict[str, Any]]:
    """``text.find_all_regex``: every match as {"index", "match"}."""
    pattern = _regex("text.find_all_regex", regexp)
    source = _str("text.find_all_regex", "source", source)
    return [{"index": i, "match": source[i:j]} for i, j in _matches(pattern, source)]


def match_regex(source: Any, regexp: Any) -> bool:
    """``text.match_regex``: whether the pattern matches anywhere in the source."""
    pattern = _regex("text.match_regex", regexp)
    return pattern.search(_str("text.match_regex", "source", source)) is not None


def replace_all(source: Any, substr: Any, repl: Any) -> str:
    """``text.replace_all``: replace every occurrence of a substring."""
    fn = "text.replace_all"
    return _str(fn, "source", source).replace(_str(fn, "substr", substr), _str(fn, "repl", repl))


def replace_all_regex(source: Any, regexp: Any, repl: Any) -> str:
    """``text.replace_all_regex``: replace every match with ``repl`` taken literally.

    https://cloud.google.com/workflows/docs/reference/stdlib/text/replace_all_regex:
    "Backreferences are not supported. For example, you can't use the expression \\1 to refer
    to text previously matched by a capturing group."
    """
    fn = "text.replace_all_regex"
    pattern = _regex(fn, regexp)
    source, repl = _str(fn, "source", source), _str(fn, "repl", repl)
    parts, last = [], 0
    for start, end in _matches(pattern, source):  # the matches find_all_regex finds
        parts += [source[last:start], repl]
        last = end
    return "".join([*parts, source[last:]])


def split(source: Any, separator: Any) -> list[str]:
    """``text.split``: split on a separator string."""
    source, separator = (
        _str("text.split", "source", source),
        _str("text.split", "separator", separator),
    )
    if not separator:  # .../stdlib/text/split: "ValueError: If separator is an empty string"
        raise WorkflowError("text.split: separator must not be an empty string", "ValueError")
    return source.split(separator)


def substring(source: Any, start: Any, end: Any) -> str:
    """``text.substring``: characters [start, end), both clamped to the string."""
    fn = "text.substring"
    source = _str(fn, "source", source)
    start, end = _arg(fn, "start", start, "integer"), _arg(fn, "end", end, "integer")
    # "A negative index is considered an offset from the end of the string. If an index is
    # outside of the source string's range, it is clamped to the bounds of the range."
    size = len(source)
    start, end = (start + size if start < 0 else start), (end + size if end < 0 else end)
    start, end = max(0, min(start, size)), max(0, min(end, size))
    return source[start:end] if start < end else ""


def to_lower(source: Any) -> str:
    """``text.to_lower``."""
    return _str("text.to_lower", "source", source).lower()


def to_upper(source: Any) -> str:
    """``text.to_upper``."""
    return _str("text.to_upper", "source", source).upper()


def url_encode(source: Any) -> str:
    """``text.url_encode``: percent-encode all but letters, digits and ``.-_``.

    .../stdlib/text/url_encode: "Letters, digits, and the characters .-_ are not escaped", so
    ``~`` is (Python's ``quote`` would leave it).
    """
    text = urllib.parse.quote(_str("text.url_encode", "source", source), safe="")
    return text.replace("~", "%7E")


def url_encode_plus(source: Any) -> str:
    """``text.url_encode_plus``: like url_encode, but a space becomes ``+``."""
    text = urllib.parse.quote_plus(_str("text.url_encode_plus", "source", source), safe="")
    return text.replace("~", "%7E")


_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def url_decode(source: Any) -> str:
    """``text.url_decode``: ``+`` to space, ``%xx`` to the UTF-8 they encode.

    .../stdlib/text/url_decode: "Plus signs (+) are replaced with spaces"; ValueError "If source
    contains any % not followed by two hexadecimal characters".
    """
    text = _str("text.url_decode", "source", source)
    bad = _BAD_PERCENT.search(text)
    if bad:
        raise WorkflowError(
            f"text.url_decode: '%' at index {bad.start()} is not followed by two hex digits",
            "ValueError",
        )
    try:
        return urllib.parse.unquote_plus(text, errors="strict")
    except UnicodeDecodeError as exc:
        raise WorkflowError(f"text.url_decode: {exc}", "ValueError") from None


def _charset(fn: str, charset: Any) -> str:
    try:
        return codecs.lookup(_str(fn, "charset", charset)).name
    except LookupError:
        raise WorkflowError(f"{fn}: unknown charset {charset!r}", "ValueError") from None


def decode(data: Any, charset: Any = "UTF-8") -> str:
    """``text.decode``: bytes to a string."""
    data = _arg("text.decode", "data", data, "bytes")
    # .../stdlib/text/decode: "Each byte that cannot be correctly decoded using the specified
    # charset is represented in the output by the \uFFFD codepoint" -- not an error.
    return bytes(data).decode(_charset("text.decode", charset), errors="replace")


def encode(text: Any, charset: Any = "UTF-8") -> bytes:
    """``text.encode``: a string to bytes."""
    text = _str("text.encode", "text", text)
    try:
        return text.encode(_charset("text.encode", charset))
    except UnicodeEncodeError as exc:
        raise WorkflowError(f"text.encode: {exc}", "ValueError") from None


# ---- json, base64 ---------------------------------------------------------------------------


def json_decode(data: Any) -> Any:
    """``json.decode``: JSON bytes (or a string) to a value."""
    data = _arg("json.decode", "data", data, "bytes", "string")

    def _reject(constant: str) -> Any:
        raise ValueError(f"invalid JSON constant {constant}")

    try:
        # .../stdlib/json/decode: bytes are "first converted to a string, as if by calling
        # text.decode(data, 'UTF-8')" (so invalid UTF-8 becomes U+FFFD, not an error)
        text = decode(data) if isinstance(data, bytes | bytearray) else data
        return _json.loads(text, parse_constant=_reject)
    except ValueError as exc:
        raise WorkflowError(f"json.decode: {exc}", "ValueError") from None


def _check_encodable(value: Any) -> None:
    if isinstance(value, Mapping):
        for item in value.values():
            _check_encodable(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_encodable(item)
    elif not (value is None or isinstance(value, str | bool | int | float)):
        raise WorkflowError(f"json.encode: cannot encode {type_name(value)}", "ValueError")


def json_encode_to_string(data: Any, indent: Any = None) -> str:
    """``json.encode_to_string``: compact by default; ``indent`` true or {prefix, indent}."""
    _check_encodable(data)
    _arg("json.encode", "indent", indent, "null", "boolean", "map")
    if indent is None or indent is False:
        return _json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    options = {} if indent is True else indent
    prefix = _str("json.encode", "indent.prefix", options.get("prefix", ""))
    step = _str("json.encode", "indent.indent", options.get("indent", "    "))
    text = _json.dumps(data, ensure_ascii=False, indent=step, separators=(",", ": "))
    return text.replace("\n", "\n" + prefix)


def json_encode(data: Any, indent: Any = None) -> bytes:
    """``json.encode``: like encode_to_string, as UTF-8 bytes."""
    return json_encode_to_string(data, indent).encode("utf-8")


def base64_encode(data: Any, padding: Any = True) -> str:
    """``base64.encode``: bytes to Base64 text."""
    data = _arg("base64.encode", "data", data, "bytes")
    text = _base64.b64encode(bytes(data)).decode("ascii")
    return text if _arg("base64.encode", "padding", padding, "boolean") else text.rstrip("=")


def base64_decode(data: Any, padding: Any = True) -> bytes:
    """``base64.decode``: Base64 text to bytes; without padding, missing ``=`` are tolerated."""
    # .../stdlib/base64/decode: "The carriage return (\r) and newline (\n) characters in the
    # input are ignored."
    text = _str("base64.decode", "data", data).replace("\r", "").replace("\n", "")
    if not _arg("base64.decode", "padding", padding, "boolean"):
        text += "=" * (-len(text) % 4)
    try:
        return _base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise WorkflowError(f"base64.decode: {exc}", "ValueError") from None


# ---- map, list ------------------------------------------------------------------------------


def map_get(map: Any, keys: Any) -> Any:  # the page's names
    """``map.get``: a key or a list of keys (a nested path); null when missing.

    .../stdlib/map/get: "If the input is not a map or if the map does not contain the key,
    returns null"; TypeError only "If the key is not a string or a list of strings".
    """
    if isinstance(keys, str):
        path = [keys]
    elif isinstance(keys, list | tuple) and all(isinstance(k, str) for k in keys):
        path = list(keys)
    else:
        raise WorkflowError(
            f"map.get: argument 'keys' must be a string or a list of strings, got "
            f"{type_name(keys)}",
            "TypeError",
        )
    value = map
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def map_delete(map: Any, key: Any) -> dict[str, Any]:  # the page's names
    """``map.delete``: a copy of the map without the key (no error when it is absent)."""
    map, key = _arg("map.delete", "map", map, "map"), _str("map.delete", "key", key)
    return {k: v for k, v in map.items() if k != key}


def map_merge(first: Any, second: Any) -> dict[str, Any]:
    """``map.merge``: shallow merge, the second map's values win."""
    first, second = (
        _arg("map.merge", "first", first, "map"),
        _arg("map.merge", "second", second, "map"),
    )
    return {**first, **second}


def map_merge_nested(first: Any, second: Any) -> dict[str, Any]:
    """``map.merge_nested``: like merge, recursing where both values are maps."""
    fn = "map.merge_nested"
    result = copy.deepcopy(dict(_arg(fn, "first", first, "map")))
    for key, value in _arg(fn, "second", second, "map").items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = map_merge_nested(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def list_concat(objs: Any, val: Any) -> list[Any]:
    """``list.concat``: a new list with ``val`` appended (there is no list ``+``)."""
    return [*_arg("list.concat", "objs", objs, "list"), val]


def list_prepend(objs: Any, val: Any) -> list[Any]:
    """``list.prepend``: a new list with ``val`` first."""
    return [val, *_arg("list.prepend", "objs", objs, "list")]


# ---- math -----------------------------------------------------------------------------------


def math_abs(x: Any) -> int | float:
    """``math.abs``."""
    value = abs(_arg("math.abs", "x", x, "number"))
    return check_int(value) if isinstance(value, int) else value


def math_floor(x: Any) -> int:
    """``math.floor``: the largest integer not above x."""
    value = _arg("math.floor", "x", x, "number")
    if isinstance(value, float) and not _math.isfinite(value):
        raise WorkflowError("math.floor: x must be finite", "ValueError")
    return check_int(_math.floor(value))


def math_max(x: Any, y: Any) -> int | float:
    """``math.max``."""
    return max(_arg("math.max", "x", x, "number"), _arg("math.max", "y", y, "number"))


def math_min(x: Any, y: Any) -> int | float:
    """``math.min``."""
    return min(_arg("math.min", "x", x, "number"), _arg("math.min", "y", y, "number"))


# ---- time, uuid, retry ----------------------------------------------------------------------


def time_format(seconds: Any, timezone: Any = "") -> str:
    """``time.format``: ISO 8601 with microseconds; "Z" for UTC, else the zone's offset."""
    seconds = _arg("time.format", "seconds", seconds, "number")
    zone_name = _arg("time.format", "timezone", timezone, "string", "null") or "UTC"
    try:
        zone = zoneinfo.ZoneInfo(zone_name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise WorkflowError(f"time.format: unknown timezone {zone_name!r}", "ValueError") from None
    try:
        moment = _dt.datetime.fromtimestamp(seconds, tz=zone)
    except (OverflowError, OSError, ValueError) as exc:
        raise WorkflowError(f"time.format: {exc}", "ValueError") from None
    text = moment.isoformat(timespec="microseconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


# RFC 3339 section 5.6 date-time, the only form .../stdlib/time/parse accepts ("ValueError
# If time is not compatible with RFC 3339 section 5.6"): Python's fromisoformat also takes
# dates alone, basic ISO forms (20240712T125033Z) and a space instead of "T".
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def time_parse(value: Any) -> float:
    """``time.parse``: an RFC 3339 timestamp to seconds since the epoch (a double)."""
    text = _str("time.parse", "value", value)
    if not _RFC3339.fullmatch(text):
        raise WorkflowError(f"time.parse: not an RFC 3339 timestamp: {text!r}", "ValueError")
    head, _, fraction = text.partition(".")
    if fraction:  # "up to a microsecond precision": digits past six are dropped
        digits = re.match(r"\d+", fraction)
        assert digits is not None
        text = f"{head}.{digits.group()[:6].ljust(6, '0')}{fraction[digits.end() :]}"
    try:
        moment = _dt.datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        raise WorkflowError(
            f"time.parse: not an RFC 3339 timestamp: {value!r}", "ValueError"
        ) from None
    return moment.timestamp()


# ---- hash -----------------------------------------------------------------------------------

# .../stdlib/hash/compute_checksum: "Supported algorithms: MD5, SHA1, SHA224, SHA256, SHA384,
# SHA512."
_HASHES = {name: name.lower() for name in ("MD5", "SHA1", "SHA224", "SHA256", "SHA384", "SHA512")}


def _algorithm(fn: str, algorithm: Any) -> str:
    name = _str(fn, "algorithm", algorithm)
    if name not in _HASHES:
        raise WorkflowError(
            f"{fn}: unsupported hashing algorithm {name!r} (supported: {', '.join(_HASHES)})",
            "ValueError",
        )
    return _HASHES[name]


def compute_checksum(data: Any, algorithm: Any) -> bytes:
    """``hash.compute_checksum``: the digest of bytes, as bytes."""
    fn = "hash.compute_checksum"
    data = _arg(fn, "data", data, "bytes")
    return hashlib.new(_algorithm(fn, algorithm), bytes(data)).digest()


def compute_hmac(key: Any, data: Any, algorithm: Any) -> bytes:
    """``hash.compute_hmac``: the HMAC of bytes under a bytes key, as bytes."""
    fn = "hash.compute_hmac"
    key, data = _arg(fn, "key", key, "bytes"), _arg(fn, "data", data, "bytes")
    return _hmac.new(bytes(key), bytes(data), _algorithm(fn, algorithm)).digest()


def uuid_generate() -> str:
    """``uuid.generate``: a random (version 4) UUID string."""
    return str(_uuid.uuid4())


def retry_always(error: Any) -> bool:
    """``retry.always``: a retry predicate that retries every error."""
    return True


def retry_never(error: Any) -> bool:
    """``retry.never``: a retry predicate that retries nothing."""
    return False


def standard_functions() -> dict[str, Callable[..., Any]]:
    """Name -> callable for the pure functions; a fresh dict the caller may extend."""
    return {
        "default": default,
        "keys": keys,
        "len": length,
        "int": to_int,
        "double": to_double,
        "string": to_string,
        "get_type": get_type,
        "if": if_,
        "text.find_all": find_all,
        "text.find_all_regex": find_all_regex,
        "text.match_regex": match_regex,
        "text.replace_all": replace_all,
        "text.replace_all_regex": replace_all_regex,
        "text.split": split,
        "text.substring": substring,
        "text.to_lower": to_lower,
        "text.to_upper": to_upper,
        "text.url_encode": url_encode,
        "text.url_encode_plus": url_encode_plus,
        "text.url_decode": url_decode,
        "text.decode": decode,
        "text.encode": encode,
        "json.decode": json_decode,
        "json.encode": json_encode,
        "json.encode_to_string": json_encode_to_string,
        "base64.encode": base64_encode,
        "base64.decode": base64_decode,
        "map.get": map_get,
        "map.delete": map_delete,
        "map.merge": map_merge,
        "map.merge_nested": map_merge_nested,
        "list.concat": list_concat,
        "list.prepend": list_prepend,
        "math.abs": math_abs,
        "math.floor": math_floor,
        "math.max": math_max,
        "math.min": math_min,
        "time.format": time_format,
        "time.parse": time_parse,
        "uuid.generate": uuid_generate,
        "hash.compute_checksum": compute_checksum,
        "hash.compute_hmac": compute_hmac,
        "retry.always": retry_always,
        "retry.never": retry_never,
    }

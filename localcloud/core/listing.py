"""``filter`` (AIP-160) and ``order_by`` (AIP-132) for List methods, checked as Google does.

A List method that takes a ``filter`` documents which fields it filters on; anything else
(an unknown field, an operator the field does not take, a value of the wrong type, syntax
outside the grammar) is refused with INVALID_ARGUMENT naming what is wrong, never dropped:
a filter silently ignored returns everything, and a caller that trusts it acts on the
wrong resources. Each service describes its resource's fields once (:class:`Field`) and
gets a predicate and a sort from the request's text.

Grammar (https://google.aip.dev/160), written by hand so errors name the position::

    filter      = [ expression ] EOF
    expression  = sequence { "AND" sequence }
    sequence    = factor { factor }                  (juxtaposition is AND)
    factor      = term { "OR" term }                 (OR binds tighter than AND)
    term        = [ "NOT" | "-" ] simple
    simple      = restriction | "(" expression ")"
    restriction = member comparator arg
    member      = value { "." value }
    comparator  = "=" | "!=" | "<" | "<=" | ">" | ">=" | ":"
    arg         = value { "." value }                (so 1.5s reads as one value)
    value       = TEXT | STRING

What it leaves out, refused by name: free-text search (a bare value with no comparator),
functions (``f(x)``) and composite arguments (``a = (b OR c)``), and wildcards in strings.
Literals: timestamps are RFC 3339 (or a date, ``"2023-08-01"``, as Google's examples
write), durations are seconds with an ``s`` suffix (``"1.5s"``), enums by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from localcloud.core.errors import InvalidArgument
from localcloud.pubsub.filter import FilterError, _read_string  # Google's string literals

T = TypeVar("T")
Predicate = Callable[[Any], bool]

STRING, ENUM, TIMESTAMP, DURATION, MAP = "string", "enum", "timestamp", "duration", "map"
EQUALITY = ("=", "!=")
ORDERED = ("=", "!=", "<", "<=", ">", ">=")
_OPERATORS = {STRING: EQUALITY, ENUM: EQUALITY, TIMESTAMP: ORDERED, DURATION: ORDERED}
_COMPARATORS = ("<=", ">=", "!=", "<", ">", "=", ":")
_PUNCTUATION = "().,"
_NOT_TEXT = set(" \t\r\n\"'()<>=!:.,")
MAX_DEPTH = 32  # parentheses and NOTs nested deeper are refused, not a RecursionError
_DURATION = re.compile(r"(\d+)(?:\.(\d{1,9}))?s")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Field:
    """A field a List method filters or orders on.

    ``get`` reads it from a resource: None when unset; for ``MAP``, a mapping; with
    ``many``, the values of a repeated field (a comparison holds when one of them does).
    Timestamps and durations are read as integer nanoseconds, enums as their number.
    """

    kind: str
    get: Callable[[Any], Any]
    enum: Mapping[str, int] = field(default_factory=dict)
    many: bool = False


@dataclass(frozen=True)
class _Token:
    kind: str  # "text", "string", "eof", a comparator, or one of ( ) . ,
    value: str
    pos: int


@dataclass(frozen=True)
class _Restriction:
    path: tuple[_Token, ...]
    op: _Token
    value: str
    quoted: bool
    pos: int  # where the value starts


@dataclass(frozen=True)
class _Node:
    kind: str  # "and", "or", "not"
    operands: tuple[Any, ...]


def _error(problem: str, pos: int | None = None, hint: str = "") -> InvalidArgument:
    where = "" if pos is None else f" at position {pos}"
    return InvalidArgument(f"Invalid filter: {problem}{where}" + (f"; {hint}" if hint else ""))


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch in "\"'":
            try:
                value, end = _read_string(text, i)
            except FilterError as exc:
                raise _error(str(exc).removeprefix("Invalid filter: ")) from None
            tokens.append(_Token("string", value, i))
            i = end
            continue
        comparator = next((c for c in _COMPARATORS if text.startswith(c, i)), None)
        if comparator is not None:
            tokens.append(_Token(comparator, comparator, i))
            i += len(comparator)
            continue
        if ch in _PUNCTUATION:
            tokens.append(_Token(ch, ch, i))
            i += 1
            continue
        if ch == "!":
            raise _error("'!' is not an operator", i, "use != or NOT")
        after_comparator = bool(tokens) and tokens[-1].kind in _COMPARATORS
        if ch == "-" and not after_comparator:  # negation; after a comparator, a sign
            tokens.append(_Token("-", "-", i))
            i += 1
            continue
        end = i + 1
        while end < len(text) and text[end] not in _NOT_TEXT:
            end += 1
        tokens.append(_Token("text", text[i:end], i))
        i = end
    tokens.append(_Token("eof", "", len(text)))
    return tokens


class _Parser:
    """Recursive descent over the tokens; one method per grammar rule."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0

    def parse(self) -> Any:
        if self.peek().kind == "eof":
            return None
        node = self.expression()
        token = self.peek()
        if token.kind != "eof":
            raise self.unexpected(token, "AND, OR or the end of the filter")
        return node

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def next(self) -> _Token:
        token = self.tokens[self.index]
        self.index += token.kind != "eof"
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        return token.kind == "text" and token.value == word

    @staticmethod
    def unexpected(token: _Token, expected: str) -> InvalidArgument:
        found = "end of filter" if token.kind == "eof" else repr(token.value)
        hint = f"expected {expected}"
        if token.kind == "text" and token.value.upper() in ("AND", "OR", "NOT"):
            hint += " (AND, OR and NOT are written in capitals)"
        return _error(f"unexpected {found}", token.pos, hint)

    def expression(self) -> Any:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _error(f"nested deeper than {MAX_DEPTH} levels", self.peek().pos)
        operands = [self.sequence()]
        while self.keyword("AND"):
            self.next()
            operands.append(self.sequence())
        self.depth -= 1
        return operands[0] if len(operands) == 1 else _Node("and", tuple(operands))

    def sequence(self) -> Any:
        operands = [self.factor()]
        while self.peek().kind in ("text", "string", "(", "-") and not (
            self.keyword("AND") or self.keyword("OR")
        ):
            operands.append(self.factor())
        return operands[0] if len(operands) == 1 else _Node("and", tuple(operands))

    def factor(self) -> Any:
        operands = [self.term()]
        while self.keyword("OR"):
            self.next()
            operands.append(self.term())
        return operands[0] if len(operands) == 1 else _Node("or", tuple(operands))

    def term(self) -> Any:
        if self.keyword("NOT") or self.peek().kind == "-":
            self.next()
            if self.keyword("NOT") or self.peek().kind == "-":
                raise self.unexpected(self.peek(), "a restriction or '(' after a negation")
            return _Node("not", (self.simple(),))
        return self.simple()

    def simple(self) -> Any:
        if self.peek().kind == "(":
            self.next()
            node = self.expression()
            token = self.next()
            if token.kind != ")":
                raise self.unexpected(token, "')', AND or OR")
            return node
        return self.restriction()

    def value(self, expected: str) -> _Token:
        token = self.next()
        if token.kind not in ("text", "string") or (
            token.kind == "text" and token.value in ("AND", "OR", "NOT")
        ):
            raise self.unexpected(token, expected)
        return token

    def restriction(self) -> _Restriction:
        path = [self.value("a field name, NOT, '-' or '('")]
        while self.peek().kind == ".":
            self.next()
            path.append(self.value("a field name after '.'"))
        op = self.peek()
        if op.kind == "(":
            raise _error(f"functions are not supported ({path[-1].value}(...))", op.pos)
        if op.kind not in _COMPARATORS:
            name = ".".join(t.value for t in path)
            if name.upper() in ("AND", "OR", "NOT"):
                hint = "AND, OR and NOT are written in capitals"
            else:
                hint = 'free-text search is not supported: write FIELD = "VALUE"'
            raise _error(f"{name!r} has no comparison", path[0].pos, hint)
        self.next()
        if self.peek().kind == "(":
            raise _error("composite arguments are not supported", self.peek().pos)
        first = self.value(f"a value after {op.value!r}")
        parts, quoted = [first.value], first.kind == "string"
        while self.peek().kind == "." and not quoted:
            self.next()
            parts.append(self.value("a value after '.'").value)
        return _Restriction(tuple(path), op, ".".join(parts), quoted, first.pos)


def parse_timestamp(text: str, pos: int, name: str) -> int:
    """RFC 3339, or a date (midnight UTC), as nanoseconds since the epoch."""
    try:
        if _DATE.fullmatch(text):
            moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            if moment.tzinfo is None or "T" not in text.upper():
                raise ValueError
    except ValueError:
        raise _error(
            f'{name} needs an RFC 3339 timestamp such as "2023-08-01T12:00:00Z" or a date '
            f'such as "2023-08-01", not {text!r}',
            pos,
        ) from None
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def parse_duration(text: str, pos: int, name: str) -> int:
    """Seconds with an ``s`` suffix (``"20s"``, ``"1.2s"``), as nanoseconds."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise _error(
            f'{name} needs a duration in seconds such as "20s" or "1.5s", not {text!r}', pos
        )
    return int(match.group(1)) * 10**9 + int((match.group(2) or "").ljust(9, "0"))


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


class _Compiler:
    def __init__(self, fields: Mapping[str, Field], what: str) -> None:
        self.fields = fields
        self.what = what

    def compile(self, node: Any) -> Predicate:
        if isinstance(node, _Restriction):
            return self.restriction(node)
        parts = [self.compile(operand) for operand in node.operands]
        if node.kind == "not":
            return lambda r: not parts[0](r)
        if node.kind == "and":
            return lambda r: all(p(r) for p in parts)
        return lambda r: any(p(r) for p in parts)

    def restriction(self, node: _Restriction) -> Predicate:
        head, op = node.path[0], node.op.value
        spec = self.fields.get(head.value)
        if spec is None:
            raise _error(
                f"unknown field {head.value!r}",
                head.pos,
                f"{self.what} filters on {', '.join(self.fields)}",
            )
        if spec.kind == MAP:
            return self.map_restriction(node, spec)
        if len(node.path) > 1:
            raise _error(f"{head.value} has no field {node.path[1].value!r}", node.path[1].pos)
        allowed = _OPERATORS[spec.kind]
        if op not in allowed:
            raise _error(
                f"operator {op!r} is not supported on {head.value}",
                node.op.pos,
                f"use {' '.join(allowed)}",
            )
        target = self.literal(spec, node, head.value)
        compare = _COMPARE[op]
        if spec.many:
            if op == "!=":
                return lambda r: target not in spec.get(r)
            return lambda r: any(compare(v, target) for v in spec.get(r))

        def test(resource: Any) -> bool:
            value = spec.get(resource)
            if value is None:  # unset (an execution's end time while it runs)
                return op == "!="
            return compare(value, target)

        return test

    def literal(self, spec: Field, node: _Restriction, name: str) -> Any:
        text, pos = node.value, node.pos
        if spec.kind == TIMESTAMP:
            return parse_timestamp(text, pos, name)
        if spec.kind == DURATION:
            return parse_duration(text, pos, name)
        if spec.kind == ENUM:
            if text not in spec.enum:
                raise _error(
                    f"{text!r} is not a value of {name}", pos, f"use one of {', '.join(spec.enum)}"
                )
            return spec.enum[text]
        if "*" in text:
            raise _error(f"wildcards are not supported in the value of {name}", pos)
        return text

    def map_restriction(self, node: _Restriction, spec: Field) -> Predicate:
        head, op = node.path[0].value, node.op.value
        if len(node.path) == 1:
            if op != ":":
                raise _error(
                    f'{head} is a map: compare one key ({head}.KEY = "VALUE") or test for '
                    f"one ({head}:KEY)",
                    node.op.pos,
                )
            key = node.value
            return lambda r: key in spec.get(r)
        if len(node.path) > 2:
            raise _error(f"{head}.{node.path[1].value} has no fields", node.path[2].pos)
        key = node.path[1].value
        if op == ":":
            if node.value != "*" or node.quoted:
                raise _error(f"write {head}.{key}:* to test for a key", node.pos)
            return lambda r: key in spec.get(r)
        if op not in EQUALITY:
            raise _error(
                f"operator {op!r} is not supported on {head}.{key}", node.op.pos, "use = or !="
            )
        if "*" in node.value:
            raise _error(f"wildcards are not supported in the value of {head}.{key}", node.pos)
        value = node.value
        if op == "=":
            return lambda r: spec.get(r).get(key) == value
        return lambda r: spec.get(r).get(key) != value


def compile_filter(text: str, fields: Mapping[str, Field], what: str) -> Predicate:
    """A predicate for ``text``; INVALID_ARGUMENT naming the problem if ``what`` (the List
    method, for messages) cannot filter that way. Blank text keeps everything."""
    node = _Parser(text).parse()
    if node is None:
        return lambda r: True
    return _Compiler(fields, what).compile(node)


def sort(items: Iterable[T], order_by: str, fields: Mapping[str, Field], what: str) -> list[T]:
    """``items`` (already in the method's default order) in ``order_by``'s order: a comma
    separated list of ``FIELD [asc|desc]`` (AIP-132); the default order breaks ties."""
    ordered = list(items)
    keys: list[tuple[Field, bool]] = []
    for raw in order_by.split(",") if order_by.strip() else []:
        words = raw.split()
        if not words or len(words) > 2:
            raise InvalidArgument(
                f"Invalid order_by {order_by!r}: {raw.strip()!r} is not FIELD [asc|desc]"
            )
        name = words[0]
        spec = fields.get(name)
        if spec is None or spec.kind == MAP or spec.many:
            raise InvalidArgument(
                f"Invalid order_by {order_by!r}: {what} cannot order by {name!r}; it orders by "
                + ", ".join(n for n, f in fields.items() if f.kind != MAP and not f.many)
            )
        direction = words[1].lower() if len(words) == 2 else "asc"
        if direction not in ("asc", "desc"):
            raise InvalidArgument(
                f"Invalid order_by {order_by!r}: {words[1]!r} after {name} is not asc or desc"
            )
        keys.append((spec, direction == "desc"))
    for spec, descending in reversed(keys):  # stable sorts, least significant key first
        ordered.sort(key=_sort_key(spec), reverse=descending)
    return ordered


def _sort_key(spec: Field) -> Callable[[Any], tuple[int, Any]]:
    """Unset values first in ascending order (so last in descending)."""

    def key(resource: Any) -> tuple[int, Any]:
        value = spec.get(resource)
        return (0, 0) if value is None else (1, value)

    return key


def enum_values(enum: Any, skip: Sequence[str] = ()) -> dict[str, int]:
    """The names a filter may use for a proto-plus enum, and their numbers."""
    return {m.name: m.value for m in enum if m.name not in skip}

"""The expression language of Google Cloud Workflows: the text inside ``${...}``.

A hand-written tokenizer and Pratt parser build an immutable tree; ``evaluate`` walks it with
Workflows' typing rules rather than Python's, because a workflow that runs here must fail where it
would fail on Google (no implicit string conversion, booleans only for ``and``/``or``/``not``,
64-bit integers, ``/`` always giving a double). References:
https://cloud.google.com/workflows/docs/reference/syntax/expressions and
https://cloud.google.com/workflows/docs/reference/syntax/datatypes (operator precedence table).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1


class WorkflowError(Exception):
    """A Workflows runtime error: a map {"message": str, "tags": [str, ...]} plus optional extras.

    The map is what a workflow's ``except`` block sees as its ``as`` variable, so the tags follow
    Google's names (TypeError, KeyError, IndexError, ValueError, ZeroDivisionError, ...).
    """

    def __init__(self, message: str, *tags: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.tags = list(tags)
        self.extra = extra

    @property
    def value(self) -> Any:
        """The error map a workflow's ``except`` sees."""
        return {"message": self.message, "tags": list(self.tags), **self.extra}


class ExpressionSyntaxError(ValueError):
    """A malformed expression, found at deploy time; ``position`` is a 0-based offset."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at position {position}")
        self.position = position


# ----------------------------------------------------------------------------------------------
# Tree


@dataclass(frozen=True)
class Node:
    """Base of the expression tree; ``pos`` is where the node starts in the expression text."""

    pos: int


@dataclass(frozen=True)
class Literal(Node):
    value: Any


@dataclass(frozen=True)
class Var(Node):
    name: str


@dataclass(frozen=True)
class ListLit(Node):
    items: tuple[Node, ...]


@dataclass(frozen=True)
class MapLit(Node):
    entries: tuple[tuple[Node, Node], ...]


@dataclass(frozen=True)
class Attr(Node):
    obj: Node
    name: str


@dataclass(frozen=True)
class Index(Node):
    obj: Node
    index: Node


@dataclass(frozen=True)
class Call(Node):
    name: str
    args: tuple[Node, ...]


@dataclass(frozen=True)
class Unary(Node):
    op: str
    operand: Node


@dataclass(frozen=True)
class Binary(Node):
    op: str
    left: Node
    right: Node


# ----------------------------------------------------------------------------------------------
# Tokenizer

# Keywords may be lower- or upper-case but not mixed (datatypes page, "Logical operators").
_KEYWORDS = {"and": "and", "AND": "and", "or": "or", "OR": "or", "not": "not", "NOT": "not"}
_KEYWORDS["in"] = "in"
_CONSTANTS: dict[str, bool | None] = {
    "true": True,
    "True": True,
    "TRUE": True,
    "false": False,
    "False": False,
}
_CONSTANTS.update({"FALSE": False, "null": None})
_OPERATORS: tuple[str, ...] = (
    "//",
    "==",
    "!=",
    "<=",
    ">=",
    "<",
    ">",
    "+",
    "-",
    "*",
    "/",
    "%",
    "(",
    ")",
    "[",
    "]",
)
_OPERATORS += ("{", "}", ",", ":", ".")
_NUMBER = re.compile(r"\d+(\.\d+)?([eE][+-]?\d+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "/": "/", "\\": "\\"}
_ESCAPES.update({'"': '"', "'": "'"})


@dataclass(frozen=True)
class _Token:
    kind: str  # "int", "double", "string", "name", "keyword", "const", "op", "eof"
    value: Any
    pos: int
    raw: str = ""  # the word as written, for names, keywords and constants


def _read_string(text: str, start: int) -> tuple[str, int]:
    quote, i = text[start], start + 1
    out: list[str] = []
    while i < len(text):
        ch = text[i]
        if ch == quote:
            return "".join(out), i + 1
        if ch == "\\":
            nxt = text[i + 1 : i + 2]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                i += 2
                continue
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2 : i + 6]):
                out.append(chr(int(text[i + 2 : i + 6], 16)))
                i += 6
                continue
            raise ExpressionSyntaxError(f"invalid escape sequence \\{nxt}", i)
        out.append(ch)
        i += 1
    raise ExpressionSyntaxError("unterminated string literal", start)


def tokenize(text: str) -> list[_Token]:
    """Split an expression into tokens; numbers are unsigned (``-`` is always an operator)."""
    tokens, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch.isspace():  # expressions may span lines (expressions page, "multi-line")
            i += 1
        elif ch in "\"'":
            value, end = _read_string(text, i)
            tokens.append(_Token("string", value, i))
            i = end
        elif ch.isdigit():
            match = _NUMBER.match(text, i)
            assert match is not None
            raw = match.group()
            if match.group(1) or match.group(2):
                tokens.append(_Token("double", float(raw), i))
            else:
                tokens.append(_Token("int", int(raw), i))
            i = match.end()
        elif match := _NAME.match(text, i):
            word = match.group()
            if word in _KEYWORDS:
                tokens.append(_Token("keyword", _KEYWORDS[word], i, word))
            elif word in _CONSTANTS:
                tokens.append(_Token("const", _CONSTANTS[word], i, word))
            else:
                tokens.append(_Token("name", word, i, word))
            i = match.end()
        else:
            op = next((op for op in _OPERATORS if text.startswith(op, i)), None)
            if op is None:
                raise ExpressionSyntaxError(f"unexpected character {ch!r}", i)
            tokens.append(_Token("op", op, i))
            i += len(op)
    tokens.append(_Token("eof", None, len(text)))
    return tokens


# ----------------------------------------------------------------------------------------------
# Parser: binding powers follow the datatypes page's "Order of operations" table, in which
# ``not`` binds tighter than unary minus and both tighter than ``*``; comparisons and ``in``
# share one level; ``and`` binds tighter than ``or``.

_BINARY_BP = {"or": 10, "and": 20, "+": 40, "-": 40, "*": 50, "/": 50, "//": 50, "%": 50}
_BINARY_BP.update(dict.fromkeys(("==", "!=", "<", "<=", ">", ">=", "in"), 30))
_UNARY_MINUS_BP = 60
_NOT_BP = 70


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def next(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, op: str) -> _Token:
        tok = self.next()
        if tok.kind != "op" or tok.value != op:
            raise ExpressionSyntaxError(f"expected {op!r}, found {_describe(tok)}", tok.pos)
        return tok

    def at(self, op: str) -> bool:
        tok = self.peek()
        return tok.kind == "op" and tok.value == op

    def parse(self) -> Node:
        if self.peek().kind == "eof":
            raise ExpressionSyntaxError("empty expression", 0)
        node = self.expression(0)
        tok = self.peek()
        if tok.kind != "eof":
            raise ExpressionSyntaxError(f"unexpected {_describe(tok)}", tok.pos)
        return node

    def expression(self, min_bp: int) -> Node:
        left = self.prefix()
        while True:
            tok = self.peek()
            if tok.kind in ("op", "keyword") and tok.value in (".", "[", "("):
                left = self.postfix(left)
                continue
            bp = _BINARY_BP.get(tok.value) if tok.kind in ("op", "keyword") else None
            if bp is None or bp <= min_bp:
                return left
            self.next()
            right = self.expression(bp)  # left-associative: the right side binds tighter
            left = Binary(tok.pos, tok.value, left, right)

    def prefix(self) -> Node:
        tok = self.next()
        if tok.kind in ("int", "double", "string", "const"):
            if tok.kind == "int" and tok.value > INT_MAX:
                raise ExpressionSyntaxError("integer literal out of 64-bit range", tok.pos)
            return Literal(tok.pos, tok.value)
        if tok.kind == "name":
            return Var(tok.pos, tok.value)
        if tok.kind == "keyword" and tok.value == "not":
            return Unary(tok.pos, "not", self.expression(_NOT_BP))
        if tok.kind == "op":
            if tok.value == "-":
                nxt = self.peek()
                if nxt.kind == "int" and nxt.value == -INT_MIN:  # the one literal only negatable
                    self.next()
                    return Literal(tok.pos, INT_MIN)
                operand = self.expression(_UNARY_MINUS_BP)
                return Unary(tok.pos, "-", operand)
            if tok.value == "(":
                inner = self.expression(0)
                self.expect(")")
                return inner
            if tok.value == "[":
                return ListLit(tok.pos, tuple(self.sequence("]")))
            if tok.value == "{":
                return self.map_literal(tok.pos)
        raise ExpressionSyntaxError(f"unexpected {_describe(tok)}", tok.pos)

    def sequence(self, close: str) -> list[Node]:
        items: list[Node] = []
        while not self.at(close):
            items.append(self.expression(0))
            if not self.at(close):
                self.expect(",")
        self.next()
        return items

    def map_literal(self, pos: int) -> MapLit:
        entries = []
        while not self.at("}"):
            key = self.expression(0)
            self.expect(":")
            entries.append((key, self.expression(0)))
            if not self.at("}"):
                self.expect(",")
        self.next()
        return MapLit(pos, tuple(entries))

    def postfix(self, left: Node) -> Node:
        tok = self.next()
        if tok.value == ".":
            name = self.next()
            if name.kind not in ("name", "keyword", "const"):
                raise ExpressionSyntaxError(
                    f"expected a field name, found {_describe(name)}", name.pos
                )
            return Attr(left.pos, left, _spelling(name))
        if tok.value == "[":
            index = self.expression(0)
            self.expect("]")
            return Index(left.pos, left, index)
        dotted = _dotted_name(left)  # "(": only a (dotted) name can be called
        if dotted is None:
            raise ExpressionSyntaxError("only named functions can be called", tok.pos)
        return Call(left.pos, dotted, tuple(self.sequence(")")))


def _spelling(tok: _Token) -> str:
    """A field name after ``.`` may be a word that is otherwise a keyword (``m.in``)."""
    return tok.raw


def _dotted_name(node: Node) -> str | None:
    if isinstance(node, Var):
        return node.name
    if isinstance(node, Attr):
        base = _dotted_name(node.obj)
        return None if base is None else f"{base}.{node.name}"
    return None


def _describe(tok: _Token) -> str:
    if tok.kind == "eof":
        return "end of expression"
    return f"{tok.value!r}" if tok.kind != "op" else f"'{tok.value}'"


def parse_expression(text: str) -> Node:
    """Parse the text inside ``${...}``; raises ExpressionSyntaxError with the offset."""
    try:
        return _Parser(text).parse()
    except RecursionError:
        raise ExpressionSyntaxError("expression nested too deeply", 0) from None


_parse_cached = functools.lru_cache(maxsize=4096)(parse_expression)  # trees are immutable


# ----------------------------------------------------------------------------------------------
# Values


def type_name(value: Any) -> str:
    """The Workflows type name of a value, as ``get_type`` reports it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bytes | bytearray):
        return "bytes"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "map"
    return type(value).__name__


def is_number(value: Any) -> bool:
    """int or float but not bool: Python's bool is an int, Workflows' boolean is not a number."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_int(value: int) -> int:
    """Workflows integers are signed 64-bit; leaving the range is a ValueError, not a bignum."""
    if not INT_MIN <= value <= INT_MAX:
        raise WorkflowError("integer overflow", "ValueError")
    return value


def equal(a: Any, b: Any) -> bool:
    """``==``: numbers compare by value across int/double; other types only with their own."""
    if is_number(a) and is_number(b):
        return a == b
    if type_name(a) != type_name(b):
        return False
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping):
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _type_error(op: str, a: Any, b: Any) -> WorkflowError:
    return WorkflowError(
        f"unsupported operand types for {op}: {type_name(a)} and {type_name(b)}", "TypeError"
    )


def stringify(value: Any) -> str:
    """The text of a string, integer, double or boolean, as ``string()`` and ``+`` produce it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else repr(value)


def _arith(op: str, a: Any, b: Any) -> Any:
    # The datatypes page's "+ operator" table: a string on either side turns an integer, double
    # or boolean on the other into a string; boolean with a number is an error.
    if op == "+" and (isinstance(a, str) or isinstance(b, str)):
        if all(isinstance(v, str) or is_number(v) or isinstance(v, bool) for v in (a, b)):
            return stringify(a) + stringify(b)
        raise _type_error(op, a, b)
    if not (is_number(a) and is_number(b)):
        raise _type_error(op, a, b)
    both_int = isinstance(a, int) and isinstance(b, int)
    if op in ("/", "//", "%") and b == 0:
        raise WorkflowError("division by zero", "ZeroDivisionError")
    if op == "+":
        result = a + b
    elif op == "-":
        result = a - b
    elif op == "*":
        result = a * b
    elif op == "/":
        return a / b  # "/": float division, even for two integers
    elif op == "//":
        result = a // b
    else:
        result = a % b
    return check_int(result) if both_int else float(result)


def _compare(op: str, a: Any, b: Any) -> bool:
    if op == "==":
        return equal(a, b)
    if op == "!=":
        return not equal(a, b)
    orderable = (is_number(a) and is_number(b)) or (
        isinstance(a, str | bytes) and type_name(a) == type_name(b)
    )
    if not orderable:
        raise _type_error(op, a, b)
    if op == "<":
        return bool(a < b)
    if op == "<=":
        return bool(a <= b)
    if op == ">":
        return bool(a > b)
    return bool(a >= b)


def _contains(needle: Any, haystack: Any) -> bool:
    """``in``: membership for lists, key existence for maps (expressions page, "in")."""
    if isinstance(haystack, list | tuple):
        return any(equal(needle, item) for item in haystack)
    if isinstance(haystack, Mapping):
        return isinstance(needle, str) and needle in haystack
    raise _type_error("in", needle, haystack)


def _require_bool(op: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise WorkflowError(f"{op} needs a boolean operand, got {type_name(value)}", "TypeError")
    return value


def get_field(container: Any, key: Any) -> Any:
    """``m.key`` / ``m[key]`` / ``l[i]`` with Workflows' KeyError/IndexError/TypeError split."""
    if isinstance(container, Mapping):
        if not isinstance(key, str):
            raise WorkflowError(f"map keys are strings, got {type_name(key)}", "TypeError")
        if key not in container:
            raise WorkflowError(f"key not found: {key}", "KeyError")
        return container[key]
    if isinstance(container, list | tuple):
        if not isinstance(key, int) or isinstance(key, bool):
            raise WorkflowError(f"list index must be an integer, got {type_name(key)}", "TypeError")
        if not 0 <= key < len(container):
            raise WorkflowError(f"list index out of range: {key}", "IndexError")
        return container[key]
    raise WorkflowError(
        f"cannot access {key!r} on a value of type {type_name(container)}", "TypeError"
    )


# ----------------------------------------------------------------------------------------------
# Evaluation


def evaluate(
    node: Node, scope: Mapping[str, Any], functions: Mapping[str, Callable[..., Any]]
) -> Any:
    """Evaluate a parsed expression; every failure is a WorkflowError a workflow can catch."""
    try:
        return _eval(node, scope, functions)
    except RecursionError:
        raise WorkflowError("maximum recursion depth exceeded", "RecursionError") from None


def _eval(node: Node, scope: Mapping[str, Any], functions: Mapping[str, Callable[..., Any]]) -> Any:
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, Var):
        try:
            return scope[node.name]
        except KeyError:
            raise WorkflowError(f"variable not found: {node.name}", "KeyError") from None
    if isinstance(node, Attr):
        return get_field(_eval(node.obj, scope, functions), node.name)
    if isinstance(node, Index):
        container = _eval(node.obj, scope, functions)
        return get_field(container, _eval(node.index, scope, functions))
    if isinstance(node, ListLit):
        return [_eval(item, scope, functions) for item in node.items]
    if isinstance(node, MapLit):
        result = {}
        for key_node, value_node in node.entries:
            key = _eval(key_node, scope, functions)
            if not isinstance(key, str):
                raise WorkflowError(f"map keys must be strings, got {type_name(key)}", "TypeError")
            result[key] = _eval(value_node, scope, functions)
        return result
    if isinstance(node, Unary):
        value = _eval(node.operand, scope, functions)
        if node.op == "not":
            return not _require_bool("not", value)
        if not is_number(value):
            raise WorkflowError(f"unary - needs a number, got {type_name(value)}", "TypeError")
        return check_int(-value) if isinstance(value, int) else -value
    if isinstance(node, Binary):
        left = _eval(node.left, scope, functions)
        if node.op in ("and", "or"):  # short-circuit, but both sides must be booleans
            if _require_bool(node.op, left) == (node.op == "or"):
                return left
            return _require_bool(node.op, _eval(node.right, scope, functions))
        right = _eval(node.right, scope, functions)
        if node.op == "in":
            return _contains(left, right)
        if node.op in ("==", "!=", "<", "<=", ">", ">="):
            return _compare(node.op, left, right)
        return _arith(node.op, left, right)
    if isinstance(node, Call):
        return _call(node, scope, functions)
    raise TypeError(f"not an expression node: {node!r}")


def _call(node: Call, scope: Mapping[str, Any], functions: Mapping[str, Callable[..., Any]]) -> Any:
    fn = functions.get(node.name)
    if fn is None:
        raise WorkflowError(f"function not found: {node.name}", "SystemError")
    args = [_eval(arg, scope, functions) for arg in node.args]  # eager: also for if()/default()
    try:
        return fn(*args)
    except (WorkflowError, RecursionError):
        raise
    except TypeError as exc:  # wrong number of arguments and the like
        raise WorkflowError(f"{node.name}: {exc}", "TypeError") from None


# ----------------------------------------------------------------------------------------------
# Analysis for deploy-time checks


def _walk(node: Node) -> Iterator[Node]:
    yield node
    children: tuple[Node, ...] = ()
    if isinstance(node, Attr | Unary):
        children = (node.obj,) if isinstance(node, Attr) else (node.operand,)
    elif isinstance(node, Index):
        children = (node.obj, node.index)
    elif isinstance(node, Binary):
        children = (node.left, node.right)
    elif isinstance(node, ListLit | Call):
        children = node.items if isinstance(node, ListLit) else node.args
    elif isinstance(node, MapLit):
        children = tuple(part for entry in node.entries for part in entry)
    for child in children:
        yield from _walk(child)


def expression_variables(node: Node) -> set[str]:
    """Top-level variable names read by the expression (not function names)."""
    return {n.name for n in _walk(node) if isinstance(n, Var)}


def function_names(node: Node) -> set[str]:
    """Dotted names of the functions the expression calls."""
    return {n.name for n in _walk(node) if isinstance(n, Call)}


# ----------------------------------------------------------------------------------------------
# Templates: values from a workflow definition


def expression_text(value: Any) -> str | None:
    """The inner text if ``value`` is a whole-string expression ``${...}``, else None.

    Workflows evaluates a string only when it starts with ``${`` and ends with ``}``; a string
    that merely contains ``${...}`` is a plain string (there is no interpolation).
    """
    if isinstance(value, str) and value.startswith("${") and value.endswith("}"):
        return value[2:-1]
    return None


def render(
    value: Any, scope: Mapping[str, Any], functions: Mapping[str, Callable[..., Any]]
) -> Any:
    """Evaluate a YAML/JSON value: whole-string expressions, recursively in lists and maps.

    Map keys may be expressions too (maps page: ``{"${dynamicKey}": "myValue"}``); an evaluated
    key must be a string.
    """
    text = expression_text(value)
    if text is not None:
        return evaluate(_parse_cached(text), scope, functions)
    if isinstance(value, list):
        return [render(item, scope, functions) for item in value]
    if isinstance(value, Mapping):
        result = {}
        for key, item in value.items():
            new_key = render(key, scope, functions)
            if not isinstance(new_key, str):
                raise WorkflowError(
                    f"map keys must be strings, got {type_name(new_key)}", "TypeError"
                )
            result[new_key] = render(item, scope, functions)
        return result
    return value


def template_expressions(value: Any) -> list[str]:
    """The inner texts of every whole-string expression in a value, keys included."""
    text = expression_text(value)
    if text is not None:
        return [text]
    found: list[str] = []
    if isinstance(value, list):
        for item in value:
            found += template_expressions(item)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            found += template_expressions(key) + template_expressions(item)
    return found


def parse_template(value: Any) -> list[ExpressionSyntaxError]:
    """Parse every expression in a value for deploy-time validation; returns the errors found."""
    errors = []
    for text in template_expressions(value):
        try:
            _parse_cached(text)
        except ExpressionSyntaxError as exc:
            errors.append(exc)
    return errors

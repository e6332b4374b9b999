"""Pub/Sub subscription filters: parse Google's filter language and match message attributes.

Google validates a subscription's ``filter`` when the subscription is created and then delivers
only messages whose attributes match it. The emulator has to do both, so this module turns the
text into a tree of small frozen dataclasses once and lets delivery call ``matches`` per message.

Grammar (https://cloud.google.com/pubsub/docs/subscription-message-filter), written by hand so
errors can name the exact position and what was expected::

    filter    = [ expr ] EOF
    expr      = term { "AND" term } | term { "OR" term }   (mixing needs parentheses)
    term      = ( "NOT" | "-" ) term | primary             (NOT binds tightest)
    primary   = "(" expr ")" | condition
    condition = "attributes" ":" key
              | "attributes" "." key ( "=" | "!=" ) STRING
              | "hasPrefix" "(" "attributes" "." key "," STRING ")"
    key       = WORD | STRING                              (WORD: ASCII letters, digits, _ and -)
"""

from __future__ import annotations

import string
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

MAX_FILTER_BYTES = 256  # "The maximum length of a filter is 256 bytes."
# "If a key contains characters other than hyphens, underscores, or alphanumeric characters,
# use a string literal."
_WORD_CHARS = frozenset(string.ascii_letters + string.digits + "_-")
_CONDITION = "a condition (attributes.KEY, attributes:KEY, hasPrefix(...)), NOT, '-' or '('"
_SIMPLE_ESCAPES = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    "\\": "\\", "'": "'", '"': '"', "?": "?", "`": "`",
}  # fmt: skip
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}  # escape letter -> number of hex digits


class FilterError(ValueError):
    """A filter that Pub/Sub would reject with INVALID_ARGUMENT; ``position`` is a 0-based index."""

    def __init__(self, problem: str, position: int | None = None, hint: str = "") -> None:
        where = "" if position is None else f" at position {position}"
        super().__init__(f"Invalid filter: {problem}{where}" + (f"; {hint}" if hint else ""))
        self.position = position


class Filter(ABC):
    """A parsed filter; subscriptions keep one and ask it about every published message."""

    @abstractmethod
    def matches(self, attributes: Mapping[str, str]) -> bool:
        """Whether a message with these attributes is delivered to the subscription."""


@dataclass(frozen=True)
class MatchAll(Filter):
    """An empty filter: Pub/Sub filters out no messages."""

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return True


@dataclass(frozen=True)
class HasAttribute(Filter):
    """``attributes:KEY``: the attribute is present, whatever its value."""

    key: str

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return self.key in attributes


@dataclass(frozen=True)
class AttributeEquals(Filter):
    """``attributes.KEY = "VALUE"``: present and exactly equal (case-sensitive)."""

    key: str
    value: str

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return attributes.get(self.key) == self.value


@dataclass(frozen=True)
class HasPrefix(Filter):
    """``hasPrefix(attributes.KEY, "PREFIX")``: present and its value starts with the prefix."""

    key: str
    prefix: str

    def matches(self, attributes: Mapping[str, str]) -> bool:
        value = attributes.get(self.key)
        return value is not None and value.startswith(self.prefix)


@dataclass(frozen=True)
class Not(Filter):
    """``NOT expr``, ``-expr``, and ``attributes.KEY != "VALUE"`` (the negation of ``=``)."""

    operand: Filter

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return not self.operand.matches(attributes)


@dataclass(frozen=True)
class And(Filter):
    """``a AND b AND ...``; flattened because one level may not mix AND with OR."""

    operands: tuple[Filter, ...]

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return all(operand.matches(attributes) for operand in self.operands)


@dataclass(frozen=True)
class Or(Filter):
    """``a OR b OR ...``."""

    operands: tuple[Filter, ...]

    def matches(self, attributes: Mapping[str, str]) -> bool:
        return any(operand.matches(attributes) for operand in self.operands)


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "string", "eof", or the punctuation itself: ( ) , . : = != -
    text: str  # the source text, for error messages
    value: str  # decoded value (string literals have their quotes and escapes removed)
    pos: int


def parse_filter(text: str) -> Filter:
    """Parse a subscription filter; blank text means "deliver everything", as in Pub/Sub."""
    size = len(text.encode("utf-8"))
    if size > MAX_FILTER_BYTES:
        raise FilterError(f"filter is {size} bytes; the maximum length is {MAX_FILTER_BYTES} bytes")
    return _Parser(_tokenize(text)).parse()


def _tokenize(text: str) -> list[_Token]:
    """Split into tokens; right after '.' or ':' a '-' starts a key, elsewhere it negates."""
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        after_key_marker = bool(tokens) and tokens[-1].kind in (".", ":")
        if ch.isspace():
            i += 1
            continue
        if ch in "\"'":
            value, end = _read_string(text, i)
            tokens.append(_Token("string", text[i:end], value, i))
        elif ch in _WORD_CHARS and (ch != "-" or after_key_marker):  # else '-' is negation
            end = i
            while end < len(text) and text[end] in _WORD_CHARS:
                end += 1
            tokens.append(_Token("word", text[i:end], text[i:end], i))
        elif text.startswith("!=", i):
            end = i + 2
            tokens.append(_Token("!=", "!=", "!=", i))
        elif ch in "().,:=-":
            end = i + 1
            tokens.append(_Token(ch, ch, ch, i))
        else:
            hint = "keys with other characters must be quoted" if after_key_marker else ""
            raise FilterError(f"unexpected character {ch!r}", i, hint)
        i = end
    tokens.append(_Token("eof", "", "", len(text)))
    return tokens


def _read_string(text: str, start: int) -> tuple[str, int]:
    """Decode the literal at ``start``: C-style escapes plus \\xHH, \\uHHHH, \\UHHHHHHHH, \\ooo."""
    quote, out, i = text[start], [], start + 1
    while i < len(text) and text[i] != quote:
        if text[i] != "\\":
            out.append(text[i])
            i += 1
            continue
        esc = text[i + 1 : i + 2]
        if esc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[esc])
            i += 2
            continue
        if esc in _HEX_ESCAPES:
            digits, base = text[i + 2 : i + 2 + _HEX_ESCAPES[esc]], 16
            ok = len(digits) == _HEX_ESCAPES[esc] and all(c in string.hexdigits for c in digits)
        else:
            digits, base = text[i + 1 : i + 4], 8
            ok = len(digits) == 3 and digits[0] in "0123" and all(c in "01234567" for c in digits)
        code = int(digits, base) if ok else -1
        if not 0 <= code <= 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise FilterError(f"invalid escape sequence {text[i : i + 2]!r}", i)
        out.append(chr(code))
        i += 1 + len(digits) + (base == 16)
    if i >= len(text):
        raise FilterError("unterminated string literal", start, f"add the closing {quote}")
    return "".join(out), i + 1


class _Parser:
    """Recursive descent over the token list; each method consumes one grammar rule."""

    def __init__(self, tokens: list[_Token]) -> None:
        self._tokens = tokens
        self._index = 0

    def parse(self) -> Filter:
        if self._peek().kind == "eof":
            return MatchAll()
        node = self._expr()
        self._expect("eof", "AND, OR or the end of the filter")
        return node

    def _peek(self) -> _Token:
        return self._tokens[self._index]

    def _next(self) -> _Token:
        token = self._tokens[self._index]
        self._index += token.kind != "eof"
        return token

    def _expect(self, kind: str, expected: str, value: str | None = None) -> _Token:
        token = self._next()
        if token.kind != kind or (value is not None and token.value != value):
            raise self._unexpected(token, expected)
        return token

    @staticmethod
    def _unexpected(token: _Token, expected: str) -> FilterError:
        found = "end of filter" if token.kind == "eof" else f"token {token.text!r}"
        hint = f"expected {expected}"
        if token.kind == "word" and token.value.upper() in ("AND", "OR", "NOT"):
            hint += " (the operators AND, OR and NOT must be uppercase)"
        return FilterError(f"unexpected {found}", token.pos, hint)

    def _expr(self) -> Filter:
        operands, operator = [self._term()], ""
        while (token := self._peek()).kind == "word" and token.value in ("AND", "OR"):
            if operator and token.value != operator:
                # "To combine the AND and OR operators, use parentheses and complete expressions."
                raise FilterError(
                    f"{operator} and {token.value} cannot be mixed without parentheses",
                    token.pos,
                    "wrap one side in parentheses, e.g. a AND (b OR c)",
                )
            operator = self._next().value
            operands.append(self._term())
        if not operator:
            return operands[0]
        return And(tuple(operands)) if operator == "AND" else Or(tuple(operands))

    def _term(self) -> Filter:
        negations = 0  # a loop, not recursion, so long "- - - ..." chains cannot overflow
        while (token := self._peek()).kind == "-" or (token.kind, token.value) == ("word", "NOT"):
            self._next()
            negations += 1
        node = self._primary()
        for _ in range(negations):
            node = Not(node)
        return node

    def _primary(self) -> Filter:
        token = self._peek()
        if token.kind == "(":
            self._next()
            node = self._expr()
            self._expect(")", "')', AND or OR")
            return node
        if token.kind == "word" and self._tokens[self._index + 1].kind == "(":
            return self._has_prefix()
        self._expect("word", _CONDITION, value="attributes")
        if self._peek().kind == ":":
            self._next()
            return HasAttribute(self._key())
        self._expect(".", "'.' or ':' after 'attributes'")
        key = self._key()
        operator = self._next()
        if operator.kind not in ("=", "!="):
            raise self._unexpected(operator, "'=' or '!=' after attributes.KEY")
        # "The value must be a string literal." -- never another key or a bare word.
        value = self._expect("string", f"a quoted string value after '{operator.text}'").value
        equals = AttributeEquals(key, value)
        # `attributes.name != "com"` is documented as the opposite of `=`, so a missing key matches.
        return equals if operator.kind == "=" else Not(equals)

    def _has_prefix(self) -> Filter:
        name = self._next()
        if name.value != "hasPrefix":
            # "hasPrefix is the only supported function in a filter."
            raise FilterError(
                f"unknown function {name.text!r}", name.pos, "only hasPrefix is supported"
            )
        self._expect("(", "'('")
        self._expect("word", "attributes.KEY as the first hasPrefix argument", value="attributes")
        self._expect(".", "'.' after 'attributes' in hasPrefix")
        key = self._key()
        self._expect(",", "',' between the hasPrefix arguments")
        prefix = self._expect("string", "a quoted prefix as the second hasPrefix argument").value
        self._expect(")", "')' to close hasPrefix")
        return HasPrefix(key, prefix)

    def _key(self) -> str:
        if self._peek().kind == "string":
            return self._next().value
        return self._expect("word", "an attribute key (a name or a quoted string)").value

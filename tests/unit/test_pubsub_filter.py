"""Table-driven tests for Pub/Sub subscription filters.

Quoted lines come from Google's "Filter messages from a subscription" page
(https://cloud.google.com/pubsub/docs/subscription-message-filter). Where the page is terse, the
behaviour follows Google's own fake server, pstest (google-cloud-go pubsub/pstest/filtering.go).
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType

import pytest

from localcloud.pubsub.filter import (
    MAX_FILTER_BYTES,
    And,
    AttributeEquals,
    FilterError,
    HasAttribute,
    HasPrefix,
    MatchAll,
    Not,
    Or,
    parse_filter,
)

TAG = "iana.org/language_tag"

MATCHES = [
    # An empty filter delivers everything: "If empty, then no messages are filtered out."
    ("", {}, True),
    ("   \t\n", {"a": "b"}, True),
    # "attributes:name -- Messages with the name attribute"
    ("attributes:name", {"name": "com"}, True),
    ("attributes:name", {"name": ""}, True),
    ("attributes:name", {}, False),
    ("attributes:name", {"Name": "com"}, False),  # "The key and value are case-sensitive"
    # "NOT attributes:name -- Messages without the name attribute"
    ("NOT attributes:name", {}, True),
    ("NOT attributes:name", {"name": "com"}, False),
    # "attributes.name = "com" -- Messages with the name attribute and the value of com"
    ('attributes.name = "com"', {"name": "com"}, True),
    ('attributes.name = "com"', {"name": "COM"}, False),
    ('attributes.name = "com"', {"name": "com "}, False),
    ('attributes.name = "com"', {}, False),
    ('attributes.name = ""', {"name": ""}, True),
    ('attributes.name = ""', {}, False),
    # "attributes.name != "com" -- Messages without the name attribute and the value of com":
    # the negation of `=`, so a message WITHOUT the attribute matches. pstest agrees: it
    # implements != as `!hasExpectedValue(key, value)` and its test expects attribute-less
    # messages to be delivered.
    ('attributes.name != "com"', {"name": "net"}, True),
    ('attributes.name != "com"', {"name": "com"}, False),
    ('attributes.name != "com"', {}, True),
    # "hasPrefix(attributes.name, "co") -- Messages with the name attribute and a value that
    # starts with co"
    ('hasPrefix(attributes.name, "co")', {"name": "com"}, True),
    ('hasPrefix(attributes.name, "co")', {"name": "co"}, True),
    ('hasPrefix(attributes.name, "co")', {"name": "c"}, False),
    ('hasPrefix(attributes.name, "co")', {"name": "Com"}, False),
    ('hasPrefix(attributes.name, "co")', {}, False),
    ('hasPrefix(attributes.name, "")', {"name": "x"}, True),
    ('hasPrefix(attributes.name, "")', {}, False),
    # "NOT hasPrefix(attributes.name, "co")": the negation, so a missing attribute matches.
    ('NOT hasPrefix(attributes.name, "co")', {}, True),
    ('NOT hasPrefix(attributes.name, "co")', {"name": "org"}, True),
    ('NOT hasPrefix(attributes.name, "co")', {"name": "com"}, False),
    # Doc example: "attributes:"iana.org/language_tag" AND NOT attributes.name = "com""
    (f'attributes:"{TAG}" AND NOT attributes.name = "com"', {TAG: "en", "name": "net"}, True),
    (f'attributes:"{TAG}" AND NOT attributes.name = "com"', {TAG: "en"}, True),
    (f'attributes:"{TAG}" AND NOT attributes.name = "com"', {TAG: "en", "name": "com"}, False),
    (f'attributes:"{TAG}" AND NOT attributes.name = "com"', {"name": "net"}, False),
    # Doc example: "Valid: AND and OR operators with parentheses"
    (
        f'attributes:"{TAG}" AND (attributes.name = "net" OR attributes.name = "org")',
        {TAG: "en", "name": "org"},
        True,
    ),
    (
        f'attributes:"{TAG}" AND (attributes.name = "net" OR attributes.name = "org")',
        {TAG: "en", "name": "com"},
        False,
    ),
    # "You can also use the unary minus operator instead of the NOT operator."
    (f'attributes.name = "com" AND -attributes:"{TAG}"', {"name": "com"}, True),
    (f'attributes.name = "com" AND -attributes:"{TAG}"', {"name": "com", TAG: "en"}, False),
    ("-attributes:a", {}, True),
    ("- attributes:a", {"a": "1"}, False),
    ("--attributes:a", {"a": "1"}, True),
    ("NOT NOT attributes:a", {"a": "1"}, True),
    ("NOT -attributes:a", {}, False),
    ("NOT(attributes:a)", {}, True),
    # "The NOT operator has the highest precedence": NOT a AND b == (NOT a) AND b.
    ("NOT attributes:a AND attributes:b", {"b": "1"}, True),
    ("NOT attributes:a AND attributes:b", {"a": "1", "b": "1"}, False),
    ("NOT attributes:a AND attributes:b", {}, False),
    ('NOT attributes.a = "x"', {}, True),
    ('NOT attributes.a = "x"', {"a": "x"}, False),
    # Chains of one operator need no parentheses.
    (
        'attributes.a = "1" AND attributes.b = "2" AND attributes.c = "3"',
        {"a": "1", "b": "2", "c": "3"},
        True,
    ),
    (
        'attributes.a = "1" AND attributes.b = "2" AND attributes.c = "3"',
        {"a": "1", "b": "2"},
        False,
    ),
    ('attributes.a = "1" OR attributes.b = "2" OR attributes.c = "3"', {"c": "3"}, True),
    ('attributes.a = "1" OR attributes.b = "2" OR attributes.c = "3"', {"a": "2", "b": "1"}, False),
    # Parentheses group complete expressions.
    ('(attributes.a = "1" AND attributes.b = "2") OR attributes:c', {"c": ""}, True),
    ('(attributes.a = "1" AND attributes.b = "2") OR attributes:c', {"a": "1", "b": "2"}, True),
    ('(attributes.a = "1" AND attributes.b = "2") OR attributes:c', {"a": "1"}, False),
    ("(attributes:a OR attributes:b) AND (attributes:c OR attributes:d)", {"b": "", "c": ""}, True),
    (
        "(attributes:a OR attributes:b) AND (attributes:c OR attributes:d)",
        {"a": "", "b": ""},
        False,
    ),
    ("((attributes:a))", {"a": ""}, True),
    # pstest cases: NOT over a group, and a negated group OR'd with a comparison.
    ('NOT (attributes:name OR attributes.lang = "jp")', {}, True),
    ('NOT (attributes:name OR attributes.lang = "jp")', {"lang": "jp"}, False),
    ('(NOT attributes:name) OR attributes.name = "co"', {"name": "co"}, True),
    ('(NOT attributes:name) OR attributes.name = "co"', {"name": "com"}, False),
    # Bare keys: "If a key contains characters other than hyphens, underscores, or alphanumeric
    # characters, use a string literal."
    ('attributes.my-key_1 = "v"', {"my-key_1": "v"}, True),
    ('attributes.123 = "v"', {"123": "v"}, True),
    ("attributes:-leading-hyphen", {"-leading-hyphen": ""}, True),
    ('attributes.AND = "v"', {"AND": "v"}, True),  # after '.', a keyword is just a key
    ('attributes.attributes = "v"', {"attributes": "v"}, True),
    ('attributes."iana.org/language_tag" = "en"', {TAG: "en"}, True),  # doc example
    ('attributes."my key" = "x"', {"my key": "x"}, True),
    ("attributes:'my key'", {"my key": "x"}, True),
    ('hasPrefix( attributes."a.b" , "e" )', {"a.b": "en"}, True),
    # Escapes: "You can also use Unicode, hexadecimal, and octal escape sequences within a string
    # literal." Doc example: attributes:"\u307F\u3093\u306A".
    ('attributes:"\\u307F\\u3093\\u306A"', {"\u307f\u3093\u306a": "x"}, True),
    ('attributes.q = "say \\"hi\\""', {"q": 'say "hi"'}, True),
    ("attributes.q = 'say \"hi\"'", {"q": 'say "hi"'}, True),
    ("attributes.q = 'it\\'s'", {"q": "it's"}, True),
    ('attributes.p = "a\\\\b"', {"p": "a\\b"}, True),
    ('attributes.p = "\\x41\\101\\u00e9\\U0001F600"', {"p": "AA\u00e9\U0001f600"}, True),
    ('attributes.p = "tab\\there\\nline"', {"p": "tab\there\nline"}, True),
    ('attributes.city = "Z\u00fcrich"', {"city": "Z\u00fcrich"}, True),
    # Google's own samples write `attributes.author="unknown"` with no spaces.
    ('attributes.author="unknown"', {"author": "unknown"}, True),
    ('attributes.a!="x"AND(attributes:b)', {"b": ""}, True),
    ("attributes:a\nAND\tattributes:b", {"a": "", "b": ""}, True),
]


@pytest.mark.parametrize(("text", "attributes", "expected"), MATCHES)
def test_matches(text: str, attributes: dict[str, str], expected: bool) -> None:
    assert parse_filter(text).matches(attributes) is expected


BAD = [
    # "Invalid: The left-hand side of the filter is a value"
    ('"com" = attributes.name', "unexpected token '\"com\"' at position 0; expected a condition"),
    # "Invalid: Filter compares two keys"
    ("attributes.name = attributes.website", "expected a quoted string value after '='"),
    # "The value must be a string literal."
    ("attributes.name = com", "unexpected token 'com' at position 18"),
    ("attributes.n = 5", "expected a quoted string value after '='"),
    ('attributes.n != -"x"', "expected a quoted string value after '!='"),
    # "Invalid: AND and OR operators without parentheses"
    (
        f'attributes:"{TAG}" AND attributes.name = "net" OR attributes.name = "org"',
        "AND and OR cannot be mixed without parentheses at position 63; wrap one side",
    ),
    ("attributes:a OR attributes:b AND attributes:c", "OR and AND cannot be mixed"),
    ("NOT attributes:a AND attributes:b OR attributes:c", "AND and OR cannot be mixed"),
    # "Invalid: AND and OR operators combine incomplete expressions"
    ('attributes.name = "com" AND ("net" OR "org")', "unexpected token '\"net\"' at position 29"),
    # "Invalid: Filter escapes characters without a string literal"
    ("attributes:\\u307F\\u3093\\u306A", "unexpected character '\\\\' at position 11; keys with"),
    ("attributes:\u307f\u3093\u306a", "at position 11; keys with other characters must be quoted"),
    ("attributes.a.b = 'x'", "unexpected token '.' at position 12; expected '=' or '!='"),
    # "The operators must be in uppercase letters."
    ("attributes:a and attributes:b", "unexpected token 'and' at position 13; expected AND, OR"),
    ("attributes:a Or attributes:b", "must be uppercase"),
    ("not attributes:a", "unexpected token 'not' at position 0"),
    ("not attributes:a", "(the operators AND, OR and NOT must be uppercase)"),
    # "hasPrefix is the only supported function in a filter."
    ('startsWith(attributes.a, "x")', "unknown function 'startsWith' at position 0"),
    ('hasprefix(attributes.a, "x")', "only hasPrefix is supported"),
    ('attributes(a, "x")', "unknown function 'attributes'"),
    ("hasPrefix(attributes.a)", "at position 22; expected ',' between the hasPrefix arguments"),
    ("hasPrefix(attributes.a, x)", "expected a quoted prefix as the second hasPrefix argument"),
    ('hasPrefix("x", attributes.a)', "expected attributes.KEY as the first hasPrefix argument"),
    ('hasPrefix(attributes:a, "x")', "expected '.' after 'attributes' in hasPrefix"),
    ('hasPrefix(attributes.a, "x"', "unexpected end of filter at position 27; expected ')'"),
    ('hasPrefix(attributes.a, "x", "y")', "expected ')' to close hasPrefix"),
    # Incomplete comparisons and members.
    ("attributes.name", "unexpected end of filter at position 15; expected '=' or '!='"),
    ("attributes", "unexpected end of filter at position 10; expected '.' or ':'"),
    ("attributes:", "expected an attribute key"),
    ('attributes. = "x"', "unexpected token '=' at position 12; expected an attribute key"),
    ('attribute.name = "x"', "unexpected token 'attribute' at position 0"),
    ('attributes:a = "x"', "unexpected token '=' at position 13; expected AND, OR or the end"),
    ('attributes.name == "x"', "unexpected token '=' at position 17"),
    ('attributes.name > "x"', "unexpected character '>' at position 16"),
    ('attributes.name ! "x"', "unexpected character '!' at position 16"),
    ("attributes.name = )", "unexpected token ')' at position 18"),
    # Structure.
    ("(attributes:a", "unexpected end of filter at position 13; expected ')', AND or OR"),
    ("attributes:a)", "unexpected token ')' at position 12"),
    ("()", "unexpected token ')' at position 1; expected a condition"),
    ("attributes:a attributes:b", "expected AND, OR or the end of the filter"),
    ("NOT", "unexpected end of filter at position 3"),
    ("-", "unexpected end of filter at position 1"),
    ("attributes:a AND", "unexpected end of filter at position 16"),
    ("AND attributes:a", "unexpected token 'AND' at position 0"),
    ("attributes:a AND OR attributes:b", "unexpected token 'OR' at position 17"),
    # String literals.
    ('attributes.a = "x', 'unterminated string literal at position 15; add the closing "'),
    ("attributes:'a", "unterminated string literal at position 11"),
    ('attributes.a = "x\\"', "unterminated string literal"),
    ('attributes.a = "\\q"', "invalid escape sequence '\\\\q' at position 16"),
    ('attributes.a = "\\x4"', "invalid escape sequence '\\\\x'"),
    ('attributes.a = "\\u12"', "invalid escape sequence '\\\\u'"),
    ('attributes.a = "\\uD800"', "invalid escape sequence"),  # a lone surrogate
    ('attributes.a = "\\U00110000"', "invalid escape sequence"),  # beyond Unicode
    ('attributes.a = "\\400"', "invalid escape sequence"),  # octal escapes stop at \377
    ('attributes.a = "\\12"', "invalid escape sequence"),  # octal escapes take three digits
    # Deep nesting inside the length limit is a clean FilterError, never a RecursionError.
    ("(" * MAX_FILTER_BYTES, f"unexpected end of filter at position {MAX_FILTER_BYTES}"),
    ("-" * MAX_FILTER_BYTES, "unexpected end of filter"),
]


@pytest.mark.parametrize(("text", "message"), BAD)
def test_rejects(text: str, message: str) -> None:
    with pytest.raises(FilterError) as excinfo:
        parse_filter(text)
    assert str(excinfo.value).startswith("Invalid filter: ")
    assert message in str(excinfo.value)


def test_error_message_shape() -> None:
    with pytest.raises(FilterError) as excinfo:
        parse_filter('attributes.name = "com")')
    assert str(excinfo.value) == (
        "Invalid filter: unexpected token ')' at position 23; "
        "expected AND, OR or the end of the filter"
    )
    assert excinfo.value.position == 23  # positions are 0-based character offsets
    assert isinstance(excinfo.value, ValueError)


# "The maximum length of a filter is 256 bytes." Bytes, not characters: "é" is two in UTF-8.
@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ('attributes.a = "' + "x" * 239 + '"', True),  # exactly 256 bytes
        ('attributes.a = "' + "x" * 240 + '"', False),  # 257 bytes
        ('attributes.a = "' + "\u00e9" * 119 + '"', True),  # 255 bytes, 136 characters
        ('attributes.a = "' + "\u00e9" * 120 + '"', False),  # 257 bytes, 137 characters
        (" " * 257, False),  # whitespace counts too
    ],
)
def test_length_limit(text: str, ok: bool) -> None:
    if ok:
        assert parse_filter(text).matches({"a": text[16:-1]})
    else:
        with pytest.raises(FilterError, match="the maximum length is 256 bytes"):
            parse_filter(text)


def test_deepest_nesting_within_limit_still_matches() -> None:
    depth = (MAX_FILTER_BYTES - len("attributes:a")) // 2
    text = "(" * depth + "attributes:a" + ")" * depth
    assert parse_filter(text).matches({"a": ""})
    assert parse_filter("-" * 244 + "attributes:a").matches(
        {"a": ""}
    )  # even count: negations cancel


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("", MatchAll()),
        ("attributes:k", HasAttribute("k")),
        ('attributes.k = "v"', AttributeEquals("k", "v")),
        ('attributes.k != "v"', Not(AttributeEquals("k", "v"))),
        ('hasPrefix(attributes.k, "p")', HasPrefix("k", "p")),
        ("-attributes:k", Not(HasAttribute("k"))),
        (
            "attributes:a AND attributes:b AND attributes:c",
            And((HasAttribute("a"), HasAttribute("b"), HasAttribute("c"))),
        ),
        (
            "attributes:a OR (attributes:b AND NOT attributes:c)",
            Or((HasAttribute("a"), And((HasAttribute("b"), Not(HasAttribute("c")))))),
        ),
    ],
)
def test_tree(text: str, tree: object) -> None:
    assert parse_filter(text) == tree


def test_nodes_are_frozen_and_accept_any_mapping() -> None:
    node = parse_filter('attributes.k = "v"')
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.key = "other"  # type: ignore[attr-defined]
    assert node.matches(MappingProxyType({"k": "v"}))
    assert hash(node) == hash(AttributeEquals("k", "v"))

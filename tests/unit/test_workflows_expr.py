"""Table-driven tests for the Workflows expression language and its pure standard library.

Quoted rules come from Google's pages:
- expressions: https://cloud.google.com/workflows/docs/reference/syntax/expressions
- data types, operator precedence and the "+ operator" conversion table:
  https://cloud.google.com/workflows/docs/reference/syntax/datatypes
- maps (dynamic keys): https://cloud.google.com/workflows/docs/reference/syntax/maps
- expression helpers: https://cloud.google.com/workflows/docs/reference/stdlib/expression-helpers
- standard library: https://cloud.google.com/workflows/docs/reference/stdlib/overview and the
  per-function pages below it (text/substring, time/format, json/encode, ...)
- syntax cheat sheet: https://cloud.google.com/workflows/docs/reference/syntax/syntax-cheat-sheet
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from localcloud.workflows.expr import (
    ExpressionSyntaxError,
    WorkflowError,
    evaluate,
    expression_variables,
    function_names,
    parse_expression,
    parse_template,
    render,
)
from localcloud.workflows.stdlib import standard_functions

FUNCTIONS = standard_functions()
SCOPE: dict[str, Any] = {
    "n": 7,
    "x": 2.5,
    "s": "hello",
    "t": True,
    "f": False,
    "nothing": None,
    "items": ["zero", "one", "two"],
    "grid": [[10, 11, 12], [20, 21, 22]],
    "person": {"name": "Lila", "address": {"country": "PL"}, "special!key": 1},
    "blob": b"\x00\x01",
}


def run(text: str, scope: dict[str, Any] | None = None, functions: Any = None) -> Any:
    return evaluate(
        parse_expression(text),
        SCOPE if scope is None else scope,
        FUNCTIONS if functions is None else functions,
    )


def same(actual: Any, expected: Any) -> bool:
    """Equal and of the same Python types all the way down (1 != 1.0 != True here)."""
    if type(actual) is not type(expected):
        return False
    if isinstance(expected, list):
        return len(actual) == len(expected) and all(map(same, actual, expected))
    if isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(
            same(actual[k], expected[k]) for k in expected
        )
    return actual == expected


# ---- literals, precedence, associativity -------------------------------------------------------

VALUES = [
    # literals; booleans are "true/false, True/False, TRUE/FALSE" (datatypes page)
    ("42", 42),
    ("4.1", 4.1),
    ("1e3", 1000.0),
    ('"hello"', "hello"),
    ("'single'", "single"),
    (r'"a\"b\\c\n\t\u00e9"', 'a"b\\c\n\té'),
    ("true", True),
    ("True", True),
    ("TRUE", True),
    ("false", False),
    ("FALSE", False),
    ("null", None),
    ("-9223372036854775808", -(2**63)),
    ("9223372036854775807", 2**63 - 1),
    ("[]", []),
    ("[1, [2, 3], {}]", [1, [2, 3], {}]),
    ('{"a": 1, "b": [true, null]}', {"a": 1, "b": [True, None]}),
    ('{"k" + "ey": n}', {"key": 7}),
    # "Parentheses () have the highest precedence ... or has the lowest"
    ("1 + 2 * 3", 7),
    ("(1 + 2) * 3", 9),
    ("2 * 3 % 4", 2),  # same level, left to right: (2*3)%4
    ("10 - 4 - 3", 3),  # left-associative
    ("100 / 10 / 5", 2.0),
    ("17 // 5 * 2", 6),
    ("-2 * 3", -6),
    ("- n + 10", 3),
    ("--3", 3),
    ("1 + 2 == 3", True),
    ("1 < 2 == true", True),  # comparisons share one level, left to right: (1 < 2) == true
    ("true or false and false", True),  # and binds tighter than or
    ("(true or false) and false", False),
    ("not false and false", False),  # (not false) and false
    ("not (1 == 2)", True),
    ("1 + 1 in [2]", True),  # + binds tighter than in
    ('n > 5 and s == "hello"', True),
    # access binds tightest: ". Access object property", "[] Access list element"
    ("items[1]", "one"),
    ("grid[1][2]", 22),
    ("person.address.country", "PL"),
    ('person["special!key"]', 1),
    ('person["address"]["country"]', "PL"),
    ("items[n - 6]", "one"),
    ("-grid[0][0]", -10),
    ("len(items) - 1", 2),
    # multi-line expressions are allowed (expressions page)
    ('"SELECT * from customers\\n" +\n  "WHERE id=7"', "SELECT * from customers\nWHERE id=7"),
]


@pytest.mark.parametrize(("text", "expected"), VALUES)
def test_values(text: str, expected: Any) -> None:
    assert same(run(text), expected), run(text)


# ---- operator typing ---------------------------------------------------------------------------

ARITHMETIC = [
    ("7 + 2", 9),
    ("7 + 2.0", 9.0),
    ("7 - 2.5", 4.5),
    ("3 * 4", 12),
    ("3 * 0.5", 1.5),
    ("6 / 3", 2.0),  # "/ : float division" -- always a double
    ("7 / 2", 3.5),
    ("7 // 2", 3),  # "// : floor division"
    ("-7 // 2", -4),
    ("7.5 // 2", 3.0),
    ("7 % 3", 1),  # "% : remainder division"
    ("7.5 % 2", 1.5),
    # the datatypes page's "+ operator" table: STRING with INTEGER/DOUBLE/BOOL gives STRING
    ('"a" + "b"', "ab"),
    ('"n=" + 7', "n=7"),
    ('7 + "!"', "7!"),
    ('"x=" + 2.5', "x=2.5"),
    ('"ok: " + true', "ok: true"),
    ('false + "!"', "false!"),
    # unary minus and not
    ("-x", -2.5),
    ("not t", False),
    ("not not t", True),
    # equality across types is simply false; int and double compare by value
    ("1 == 1.0", True),
    ('1 == "1"', False),
    ("null == null", True),
    ("nothing == null", True),
    ("[1, 2] == [1, 2.0]", True),
    ('{"a": 1} != {"a": 2}', True),
    ("true == 1", False),
    ("1 < 1.5", True),
    ('"abc" < "abd"', True),
    ('"b" >= "a"', True),
    # in: list membership and map key existence ("Check existence of a key in a list/map")
    ('"one" in items', True),
    ('"three" in items', False),
    ('"name" in person', True),
    ('"Lila" in person', False),
    ("2 in [1, 2.0]", True),
    # and/or short-circuit: the right side is not evaluated (no KeyError here)
    ("false and undefined_var", False),
    ("true or undefined_var", True),
]


@pytest.mark.parametrize(("text", "expected"), ARITHMETIC)
def test_operator_results(text: str, expected: Any) -> None:
    assert same(run(text), expected), run(text)


ERRORS = [
    # "+ operator" table: BOOL with INTEGER/DOUBLE/BOOL is ERROR; lists/maps/null are not listed
    ("true + 1", "TypeError"),
    ("1 + false", "TypeError"),
    ("true + true", "TypeError"),
    ("[1] + [2]", "TypeError"),  # lists are joined with list.concat, not +
    ('"a" + null', "TypeError"),
    ('"a" + [1]', "TypeError"),
    ("{} + {}", "TypeError"),
    ('"a" - "b"', "TypeError"),
    ('"ab" * 2', "TypeError"),
    ("null * 2", "TypeError"),
    ('-"a"', "TypeError"),
    ("-true", "TypeError"),
    # "Logical operators can be used only on boolean values"
    ("not 1", "TypeError"),
    ("1 and true", "TypeError"),
    ("true and 1", "TypeError"),
    ("false or null", "TypeError"),
    ("nothing or true", "TypeError"),
    # not binds tighter than == (precedence table), so this is (not 1) == 2
    ("not 1 == 2", "TypeError"),
    # ordering needs two numbers or two strings
    ('1 < "2"', "TypeError"),
    ("true < false", "TypeError"),
    ("null < 1", "TypeError"),
    ("[1] < [2]", "TypeError"),
    ('"a" in "abc"', "TypeError"),
    ("1 in 1", "TypeError"),
    # division by zero
    ("1 / 0", "ZeroDivisionError"),
    ("1 // 0", "ZeroDivisionError"),
    ("1 % 0", "ZeroDivisionError"),
    ("1.5 / 0.0", "ZeroDivisionError"),
    # "Integer (64 bit, signed)": leaving the range is an error, not a bignum
    ("9223372036854775807 + 1", "ValueError"),
    ("-9223372036854775808 - 1", "ValueError"),
    ("4611686018427387904 * 2", "ValueError"),
    ("-(-9223372036854775808)", "ValueError"),
    ("-9223372036854775808 // -1", "ValueError"),
    # access errors
    ("undefined_var", "KeyError"),
    ("person.age", "KeyError"),
    ('person["age"]', "KeyError"),
    ("items[3]", "IndexError"),
    ("items[-1]", "IndexError"),
    ('items["0"]', "TypeError"),
    ("items[1.0]", "TypeError"),
    ("items[true]", "TypeError"),
    ("person[0]", "TypeError"),
    ("s.length", "TypeError"),
    ("s[0]", "TypeError"),
    ("n.field", "TypeError"),
    ("nothing.field", "TypeError"),
    ("{1: 2}", "TypeError"),  # map keys are strings
    # functions
    ("no_such.function(1)", "SystemError"),
    ("len()", "TypeError"),
    ("len(1, 2)", "TypeError"),
]


@pytest.mark.parametrize(("text", "tag"), ERRORS)
def test_operator_errors(text: str, tag: str) -> None:
    with pytest.raises(WorkflowError) as info:
        run(text)
    assert info.value.value["tags"] == [tag]
    assert isinstance(info.value.value["message"], str) and info.value.value["message"]


def test_error_value_is_the_map_except_sees() -> None:
    error = WorkflowError("boom", "ValueError", "Custom", code=7)
    assert error.value == {"message": "boom", "tags": ["ValueError", "Custom"], "code": 7}
    assert str(error) == "boom"


def test_function_calls_go_through_the_functions_map() -> None:
    calls: list[tuple[Any, ...]] = []

    def spy(*args: Any) -> str:
        calls.append(args)
        return "result"

    functions = {"my.deep.fn": spy, "plain": lambda: 3}
    assert run("my.deep.fn(1, n, [s])", functions=functions) == "result"
    assert calls == [(1, 7, ["hello"])]
    assert run("plain() + 1", functions=functions) == 4
    node = parse_expression('my.deep.fn(a.b, plain()) + c["k"]')
    assert function_names(node) == {"my.deep.fn", "plain"}
    assert expression_variables(node) == {"a", "c"}


def test_if_evaluates_both_branches() -> None:
    # if() is a function: both arguments are evaluated before the call (expression helpers)
    assert run('if(n > 5, "big", "small")') == "big"
    assert run('if(null, "yes", "no")') == "no"  # "false or null, ifFalse is returned"
    with pytest.raises(WorkflowError) as info:
        run('if(true, "ok", person.missing)')
    assert info.value.value["tags"] == ["KeyError"]
    with pytest.raises(WorkflowError) as info:
        run('if(1, "a", "b")')
    assert info.value.value["tags"] == ["TypeError"]


def test_scope_can_be_any_mapping_and_values_are_not_copied_on_read() -> None:
    data = {"k": [1, 2]}
    assert run("m", scope={"m": data}) is data


# ---- syntax errors -----------------------------------------------------------------------------

SYNTAX_ERRORS = [
    ("", "empty expression", 0),
    ("   ", "empty expression", 0),
    ("(1 + 2", "expected ')'", 6),
    ("1 +", "unexpected end of expression", 3),
    ("1 + * 2", "unexpected '*'", 4),
    ("a ? b", "unexpected character '?'", 2),
    ("1 2", "unexpected 2", 2),
    ('"unterminated', "unterminated string literal", 0),
    (r'"bad \q"', "invalid escape", 5),
    ("[1, 2", "expected ','", 5),
    ('{"a" 1}', "expected ':'", 5),
    ("f(1,", "unexpected end of expression", 4),
    ("a.", "expected a field name", 2),
    ("(1)(2)", "only named functions", 3),
    ("9223372036854775808", "out of 64-bit range", 0),
    ("a = 1", "unexpected character '='", 2),
    ("a && b", "unexpected character '&'", 2),
    ("And", "", None),  # mixed case is not a keyword: it parses as a variable name
]


@pytest.mark.parametrize(("text", "message", "position"), SYNTAX_ERRORS)
def test_syntax_errors(text: str, message: str, position: int | None) -> None:
    if position is None:
        assert expression_variables(parse_expression(text)) == {text}
        return
    with pytest.raises(ExpressionSyntaxError) as info:
        parse_expression(text)
    assert message in str(info.value)
    assert info.value.position == position
    assert f"at position {position}" in str(info.value)


def test_syntax_error_is_a_value_error() -> None:
    assert issubclass(ExpressionSyntaxError, ValueError)


# ---- render ------------------------------------------------------------------------------------

RENDER = [
    # a string that is exactly ${...} evaluates to the expression's value, any type
    ("${n + 1}", 8),
    ("${items}", ["zero", "one", "two"]),
    ("${nothing}", None),
    ('${"}"}', "}"),
    # "All expressions must begin with a $ and be enclosed in curly brackets": anything else is
    # a plain string -- there is no interpolation inside longer strings
    ("hello ${s}", "hello ${s}"),
    ("${s} world", "${s} world"),
    ("$s", "$s"),
    ("{s}", "{s}"),
    ("plain", "plain"),
    (5, 5),
    (None, None),
    (True, True),
    # lists and maps render recursively; map keys may be expressions (maps page, dynamic keys)
    (["${n}", "x", ["${s}"]], [7, "x", ["hello"]]),
    ({"a": "${n * 2}", "b": {"c": "${t}"}}, {"a": 14, "b": {"c": True}}),
    ({"${s}": "v", '${s + "Apple"}': 1}, {"hello": "v", "helloApple": 1}),
]


@pytest.mark.parametrize(("template", "expected"), RENDER)
def test_render(template: Any, expected: Any) -> None:
    assert same(render(template, SCOPE, FUNCTIONS), expected)


def test_render_errors() -> None:
    with pytest.raises(WorkflowError) as info:
        render({"${n}": 1}, SCOPE, FUNCTIONS)
    assert info.value.value["tags"] == ["TypeError"]
    with pytest.raises(ExpressionSyntaxError):
        render("${1 +}", SCOPE, FUNCTIONS)


def test_parse_template_collects_every_syntax_error() -> None:
    template = {"ok": "${n}", "bad": ["${(1}", {"${}": "${1 2}"}], "text": "not ${(}"}
    errors = parse_template(template)
    assert len(errors) == 3
    assert all(isinstance(e, ExpressionSyntaxError) for e in errors)
    assert parse_template({"a": ["${x}", "y"]}) == []


# ---- standard library --------------------------------------------------------------------------

STDLIB = [
    # expression helpers / cheat sheet conversions
    ('double("2.7")', 2.7),
    ("double(2)", 2.0),
    ("int(2.7)", 2),
    ("int(-2.7)", -2),
    ('int("42")', 42),
    ("string(1.7)", "1.7"),
    ("string(7)", "7"),
    ("string(true)", "true"),
    ("len(s)", 5),
    ("len(items)", 3),
    ('len({"a": 1, "b": 2})', 2),
    ('keys({"a": 1, "b": 2})', ["a", "b"]),
    ('default(null, "fallback")', "fallback"),
    ('default("value", "fallback")', "value"),
    ('default(map.get(person, "age"), 0)', 0),
    ("get_type(1)", "integer"),
    ("get_type(1.0)", "double"),
    ('get_type("")', "string"),
    ("get_type(true)", "boolean"),
    ("get_type(null)", "null"),
    ("get_type([])", "list"),
    ("get_type({})", "map"),
    ("get_type(blob)", "bytes"),
    # text.*
    ('text.substring("hello", 2, 4)', "ll"),  # text/substring example 1
    ('text.substring("hello", -10, 10)', "hello"),  # example 2: clamped
    ('text.substring("hello", -3, -1)', "ll"),  # negative = offset from the end
    ('text.split("a,b,,c", ",")', ["a", "b", "", "c"]),
    ('text.to_upper("Hello")', "HELLO"),
    ('text.to_lower("Hello")', "hello"),
    ('text.replace_all("a-b-c", "-", "+")', "a+b+c"),
    # text/replace_all_regex: "Backreferences are not supported" -- repl is literal text
    (r'text.replace_all_regex("2024-01-10", "(\\d+)-(\\d+)", "\\2/\\1")', r"\2/\1-10"),
    # text/find_all: "a sorted list of indexes"
    ('text.find_all("Hello World, Hello", "Hello")', [0, 13]),
    (
        r'text.find_all_regex("a1 b22", "[0-9]+")',
        [{"index": 1, "match": "1"}, {"index": 4, "match": "22"}],
    ),
    (r'text.match_regex("abc123", "^[a-z]+\\d+$")', True),
    ('text.match_regex("abc", "\\\\d")', False),
    ('text.url_encode("a b/c?d=é")', "a%20b%2Fc%3Fd%3D%C3%A9"),
    ('text.url_encode_plus("a b&c")', "a+b%26c"),
    ('text.url_decode("a%20b%2Fc")', "a b/c"),
    ('text.decode(text.encode("zażółć"))', "zażółć"),
    ('text.encode("hi")', b"hi"),
    # json and base64: "base64.encode(json.encode(message))" (json/encode example)
    ('json.encode({"hello": "world"})', b'{"hello":"world"}'),
    ('json.encode_to_string({"a": [1, 2.5, null, true]})', '{"a":[1,2.5,null,true]}'),
    ('json.encode_to_string({"a": 1}, true)', '{\n    "a": 1\n}'),  # indent: four spaces
    ('json.encode_to_string([1], {"prefix": ">", "indent": " "})', "[\n> 1\n>]"),
    ('json.decode("{\\"a\\": [1, 2.5]}")', {"a": [1, 2.5]}),
    ('json.decode(text.encode("[true, null]"))', [True, None]),
    ('base64.encode(json.encode({"hello": "world"}))', "eyJoZWxsbyI6IndvcmxkIn0="),
    ('text.decode(base64.decode("aGVsbG8="))', "hello"),
    ('base64.encode(text.encode("hi"), false)', "aGk"),
    ('text.decode(base64.decode("aGk", false))', "hi"),
    # map.*
    ('map.get(person, "name")', "Lila"),
    ('map.get(person, ["address", "country"])', "PL"),
    ('map.get(person, ["address", "city"])', None),
    ('map.delete({"a": 1, "b": 2}, "a")', {"b": 2}),
    ('map.delete({"a": 1}, "zzz")', {"a": 1}),
    ('map.merge({"a": 1, "b": {"x": 1}}, {"b": {"y": 2}})', {"a": 1, "b": {"y": 2}}),
    ('map.merge_nested({"a": 1, "b": {"x": 1}}, {"b": {"y": 2}})', {"a": 1, "b": {"x": 1, "y": 2}}),
    # list.* -- cheat sheet: "my_list: ${list.concat(my_list, 3)}"
    ("list.concat([0, 1, 2], 3)", [0, 1, 2, 3]),
    ("list.prepend([1, 2], 0)", [0, 1, 2]),
    ("list.concat([], [1])", [[1]]),
    # math.*
    ("math.abs(-3)", 3),
    ("math.abs(-2.5)", 2.5),
    ("math.floor(2.7)", 2),
    ("math.floor(-2.5)", -3),
    ("math.max(1, 2.5)", 2.5),
    ("math.min(1, 2)", 1),
    # time.* -- time/format examples
    ("time.format(1720788633)", "2024-07-12T12:50:33.000000Z"),
    ('time.format(1720788633, "GMT")', "2024-07-12T12:50:33.000000Z"),
    ('time.format(1720788633, "Europe/Paris")', "2024-07-12T14:50:33.000000+02:00"),
    ("time.format(0.5)", "1970-01-01T00:00:00.500000Z"),
    ('time.parse("2024-07-12T12:50:33Z")', 1720788633.0),
    ('time.parse("2024-07-12T14:50:33.5+02:00")', 1720788633.5),
    # retry predicates take the error map
    ('retry.always({"message": "x", "tags": []})', True),
    ('retry.never({"message": "x", "tags": []})', False),
]


@pytest.mark.parametrize(("text", "expected"), STDLIB)
def test_stdlib(text: str, expected: Any) -> None:
    assert same(run(text), expected), run(text)


STDLIB_ERRORS = [
    ("len(5)", "TypeError", "len"),
    ("len(null)", "TypeError", "len"),
    ('keys("a")', "TypeError", "keys"),
    ("int(true)", "TypeError", "int"),
    ('int("2.7")', "ValueError", "int"),
    ('int("abc")', "ValueError", "int"),
    ('double("x")', "ValueError", "double"),
    ("double(true)", "TypeError", "double"),
    ("string(null)", "TypeError", "string"),
    ("string([1])", "TypeError", "string"),
    ('text.substring("hello", 1.0, 2)', "TypeError", "start"),  # text/substring: TypeError
    ("text.substring(5, 1, 2)", "TypeError", "source"),
    ('text.split("a", 1)', "TypeError", "separator"),
    ('text.match_regex("a", "(")', "ValueError", "text.match_regex"),
    ('text.decode("not bytes")', "TypeError", "text.decode"),
    ('json.decode("{")', "ValueError", "json.decode"),
    ("json.encode(blob)", "ValueError", "json.encode"),  # "bytes" cannot be JSON-encoded
    ('base64.decode("***")', "ValueError", "base64.decode"),
    ('base64.encode("text")', "TypeError", "base64.encode"),
    ("map.get({}, 1)", "TypeError", "map.get"),  # map/get: "If the key is not a string or a list"
    ('list.concat("a", 1)', "TypeError", "list.concat"),
    ('math.abs("1")', "TypeError", "math.abs"),
    ("math.max(true, 1)", "TypeError", "math.max"),
    ('time.format(1, "Mars/Olympus")', "ValueError", "time.format"),
    ('time.parse("yesterday")', "ValueError", "time.parse"),
]


@pytest.mark.parametrize(("text", "tag", "mention"), STDLIB_ERRORS)
def test_stdlib_errors(text: str, tag: str, mention: str) -> None:
    with pytest.raises(WorkflowError) as info:
        run(text)
    assert info.value.value["tags"] == [tag]
    assert mention in info.value.value["message"]


def test_uuid_generate() -> None:
    value = run("uuid.generate()")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", value)
    assert run("uuid.generate()") != value


def test_stdlib_functions_do_not_mutate_their_arguments() -> None:
    scope = {"m": {"a": {"x": 1}}, "l": [1]}
    run('map.merge_nested(m, {"a": {"y": 2}})', scope=scope)
    run('map.delete(m, "a")', scope=scope)
    run("list.concat(l, 2)", scope=scope)
    assert scope == {"m": {"a": {"x": 1}}, "l": [1]}


def test_standard_functions_is_a_fresh_dict() -> None:
    first = standard_functions()
    first["extra"] = len
    assert "extra" not in standard_functions()

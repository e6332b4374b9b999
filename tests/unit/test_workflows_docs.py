"""Workflows semantics case by case from Google's own pages: each case names the page it is from.

The syntax reference (https://cloud.google.com/workflows/docs/reference/syntax/...), every
standard-library page (https://cloud.google.com/workflows/docs/reference/stdlib/...) and the
official samples (GoogleCloudPlatform/workflows-samples, src/*.workflows.yaml): the examples
each page documents, with the result it documents, and the errors it says a function raises,
with the tag Google raises. Whole workflows run on the interpreter; expressions on ``evaluate``.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from localcloud.workflows import definition
from localcloud.workflows.expr import WorkflowError, evaluate, parse_expression
from localcloud.workflows.interpreter import Interpreter
from localcloud.workflows.runtime import Runtime

SYNTAX = "https://cloud.google.com/workflows/docs/reference/syntax/"
STDLIB = "https://cloud.google.com/workflows/docs/reference/stdlib/"
SAMPLES = "https://github.com/GoogleCloudPlatform/workflows-samples/blob/main/src/"
FUNCTIONS = Runtime(None, None, None).functions({})  # type: ignore[arg-type]


def run(source: str, argument: Any = None) -> Any:
    """Deploy-check and run a workflow; its result, or ("error", the error map)."""
    parsed = definition.parse(source, set(FUNCTIONS))
    interpreter = Interpreter(parsed, FUNCTIONS, {}, lambda *a: None)
    try:
        return asyncio.run(interpreter.run(argument))
    except WorkflowError as exc:
        return ("error", exc.value)


def expr(text: str) -> Any:
    return evaluate(parse_expression(text), {}, FUNCTIONS)


def same(actual: Any, expected: Any) -> bool:
    """Equal, and of the same types all the way down (1 != 1.0 != True here)."""
    if type(actual) is not type(expected):
        return False
    if isinstance(expected, list):
        return len(actual) == len(expected) and all(map(same, actual, expected))
    if isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(
            same(actual[k], expected[k]) for k in expected
        )
    return bool(actual == expected)


# ---- variables: passing by value ----------------------------------------------------------------
# SYNTAX + "variables" ("Passing by value"): "When you assign one variable to another, you create
# a separate, independent copy of the variable's value instead of a reference."


def test_assigning_a_map_makes_an_independent_copy() -> None:
    result = run("""
- init:
    assign:
      - original: {"name": "a", "tags": ["x"]}
      - copy: ${original}
      - copy.name: "b"
      - copy.tags[0]: "y"
- done:
    return: ['${original}', '${copy}']
""")
    assert result == [{"name": "a", "tags": ["x"]}, {"name": "b", "tags": ["y"]}]


def test_changing_the_original_after_the_copy_leaves_the_copy_alone() -> None:
    result = run("""
- init:
    assign:
      - original: [1, [2, 3]]
      - copy: ${original}
      - original[1][0]: 20
- done:
    return: ['${original}', '${copy}']
""")
    assert result == [[1, [20, 3]], [1, [2, 3]]]


def test_a_part_of_a_map_and_a_list_holding_a_variable_are_copies_too() -> None:
    result = run("""
- init:
    assign:
      - original: {"inner": {"n": 1}}
      - part: ${original.inner}
      - holder: ['${original}']
      - part.n: 2
      - holder[0].inner.n: 3
- done:
    return: ['${original}', '${part}', '${holder}']
""")
    assert result == [{"inner": {"n": 1}}, {"n": 2}, [{"inner": {"n": 3}}]]


def test_a_call_result_is_a_copy_of_what_the_function_returned() -> None:
    # map.get returns the nested map itself; the variable holding the result is a copy
    result = run("""
- init:
    assign:
      - original: {"inner": {"n": 1}}
- get:
    call: map.get
    args:
      map: ${original}
      keys: "inner"
    result: inner
- change:
    assign:
      - inner.n: 2
- done:
    return: ${original}
""")
    assert result == {"inner": {"n": 1}}


def test_a_subworkflow_gets_copies_of_its_arguments_and_of_its_defaults() -> None:
    # SYNTAX + "subworkflows": params, with defaults; changing them stays inside the call
    result = run("""
main:
  steps:
    - init:
        assign:
          - original: {"n": 1}
    - first:
        call: bump
        args:
          value: ${original}
        result: bumped
    - second:
        call: bump
        result: from_default_1
    - third:
        call: bump
        result: from_default_2
    - done:
        return: ['${original}', '${bumped}', '${from_default_1}', '${from_default_2}']
bump:
  params: [value: {"n": 10}]
  steps:
    - change:
        assign:
          - value.n: ${value.n + 1}
    - back:
        return: ${value}
""")
    assert result == [{"n": 1}, {"n": 2}, {"n": 11}, {"n": 11}]


def test_a_loop_variable_is_a_copy_of_the_element() -> None:
    # SYNTAX + "iteration": the loop variable holds the value of the current element
    result = run("""
- init:
    assign:
      - items: [{"n": 1}, {"n": 2}]
- loop:
    for:
      value: item
      in: ${items}
      steps:
        - change:
            assign:
              - item.n: 0
- done:
    return: ${items}
""")
    assert result == [{"n": 1}, {"n": 2}]


def test_a_raised_map_is_a_copy() -> None:
    # SYNTAX + "raising-errors": a map can be raised; the handler's copy is its own
    result = run("""
- init:
    assign:
      - problem: {"code": 1, "message": "boom"}
- attempt:
    try:
      raise: ${problem}
    except:
      as: e
      steps:
        - change:
            assign:
              - e.code: 2
        - done:
            return: ['${problem}', '${e}']
""")
    assert result == [{"code": 1, "message": "boom"}, {"code": 2, "message": "boom"}]


# ---- maps written in YAML -----------------------------------------------------------------------
# SAMPLES + "iterate_map.workflows.yaml": a map written with keys 1, 2, 3; ``keys(map)`` gives
# the keys the loop reads ``map[key]`` with, and the sum is 60 (its JSON twin writes "1": 10).


def test_unquoted_yaml_keys_are_the_strings_written() -> None:
    result = run("""
- init:
    assign:
      - scores:
          1: 5
          2: 7
          3: 9
      - total: 0
- add:
    for:
      value: key
      in: ${keys(scores)}
      steps:
        - sum:
            assign:
              - total: ${total + scores[key]}
- done:
    return: ['${total}', '${keys(scores)}', '${scores["2"]}']
""")
    assert result == [21, ["1", "2", "3"], 7]


def test_boolean_and_double_yaml_keys_are_strings_too() -> None:
    # SYNTAX + "maps": keys are strings; an unquoted true or 1.5 is the text written
    result = run("""
- init:
    assign:
      - flags:
          true: "yes"
          1.5: "one and a half"
- done:
    return: ${keys(flags)}
""")
    assert result == ["true", "1.5"]


def test_a_list_or_map_as_a_yaml_key_is_refused_at_deploy() -> None:
    with pytest.raises(definition.DefinitionError, match="map key must be a string"):
        definition.parse("""
- init:
    assign:
      - m:
          ? [1, 2]
          : x
""")


# ---- the standard library, page by page ---------------------------------------------------------
# (page, expression, documented result)

EXAMPLES = [
    # text/split examples 1 to 4
    ("text/split", 'text.split("baaab", "aa")', ["b", "ab"]),
    ("text/split", 'text.split("abc", "a")', ["", "bc"]),
    ("text/split", 'text.split("abc", "c")', ["ab", ""]),
    ("text/split", 'text.split("abbc", "b")', ["a", "", "c"]),
    ("text/split", 'text.split("abc", "x")', ["abc"]),  # "not found ... only the source string"
    # text/substring examples 1 and 2
    ("text/substring", 'text.substring("hello", 2, 4)', "ll"),
    ("text/substring", 'text.substring("hello", -10, 10)', "hello"),
    # text/find_all: "text.find_all("00000", "00") returns [0, 2]" and "[2, 3, 9]"
    ("text/find_all", 'text.find_all("00000", "00")', [0, 2]),
    ("text/find_all", 'text.find_all("Hello World", "l")', [2, 3, 9]),
    ("text/find_all", 'text.find_all("Hello", "z")', []),
    (
        "text/find_all_regex",
        'text.find_all_regex("HelloWorld", "Hello|World")',
        [{"index": 0, "match": "Hello"}, {"index": 5, "match": "World"}],
    ),
    ("text/match_regex", 'text.match_regex("HelloWorld", "Hello|Goodbye")', True),
    ("text/match_regex", 'text.match_regex("HelloWorld", "Goodbye")', False),
    ("text/replace_all", 'text.replace_all("Hello World", "Hello", "Goodbye")', "Goodbye World"),
    # text/replace_all: "If the expression is empty, it matches at the beginning of the string
    # and after each code point, yielding up to k+1 replacements"
    ("text/replace_all", 'text.replace_all("abc", "", "-")', "-a-b-c-"),
    (
        "text/replace_all_regex",
        'text.replace_all_regex("one two", "one|two", "three")',
        "three three",
    ),
    ("text/replace_all_regex", 'text.replace_all_regex("abc", "", "-")', "-a-b-c-"),
    # text/replace_all_regex: "Backreferences are not supported" (repl is literal)
    ("text/replace_all_regex", r'text.replace_all_regex("ab", "(a)", "[\\1]")', r"[\1]b"),
    ("text/to_lower", 'text.to_lower("Hello World")', "hello world"),
    ("text/to_upper", 'text.to_upper("Hello World")', "HELLO WORLD"),
    ("text/url_encode", 'text.url_encode("a/b/c?item=d+e f")', "a%2Fb%2Fc%3Fitem%3Dd%2Be%20f"),
    # text/url_encode: "Letters, digits, and the characters .-_ are not escaped" (so ~ is)
    ("text/url_encode", 'text.url_encode("a.b-c_d~e")', "a.b-c_d%7Ee"),
    (
        "text/url_encode_plus",
        'text.url_encode_plus("a/b/c?item=d+e f")',
        "a%2Fb%2Fc%3Fitem%3Dd%2Be+f",
    ),
    ("text/url_decode", 'text.url_decode("a%2Fb%2Fc%3Fitem%3Dd%2Be")', "a/b/c?item=d+e"),
    ("text/url_decode", 'text.url_decode("d+e%20f")', "d e f"),  # "Plus signs (+) ... spaces"
    ("text/decode", 'text.decode(base64.decode("SGVsbG8gV29ybGQ="), "UTF-8")', "Hello World"),
    ("text/decode", 'text.decode(text.encode("zażółć", "ISO-8859-2"), "iso-8859-2")', "zażółć"),
    # text/decode: a byte that cannot be decoded "is represented in the output by \uFFFD"
    ("text/decode", 'text.decode(base64.decode("/2E="))', "\ufffda"),
    ("text/encode", 'base64.encode(text.encode("Hello World", "UTF-8"))', "SGVsbG8gV29ybGQ="),
    ("json/decode", 'json.decode("[1, 2.5, \\"x\\", null]")', [1, 2.5, "x", None]),
    # json/decode: bytes are decoded "as if by calling text.decode(data, 'UTF-8')"
    ("json/decode", 'json.decode(base64.decode("Iv8i"))', "\ufffd"),
    ("json/encode", 'base64.encode(json.encode({"hello": "world"}))', "eyJoZWxsbyI6IndvcmxkIn0="),
    ("json/encode_to_string", 'json.encode_to_string({"key1": "hello"})', '{"key1":"hello"}'),
    ("base64/encode", 'base64.encode(text.encode("hi"), false)', "aGk"),
    # base64/decode: "The carriage return (\r) and newline (\n) characters ... are ignored"
    ("base64/decode", 'text.decode(base64.decode("SGVs\\r\\nbG8="))', "Hello"),
    ("base64/decode", 'text.decode(base64.decode("aGk", false))', "hi"),
    ("map/get", 'map.get({"key1": "hello", "key2": "world"}, "key2")', "world"),
    ("map/get", 'map.get({"a": {"b": 1}}, ["a", "b"])', 1),
    ("map/get", 'map.get({"a": {"b": 1}}, ["a", "c"])', None),
    ("map/get", 'map.get({"a": 5}, ["a", "b"])', None),  # "any of the nested objects are not maps"
    ("map/get", 'map.get("not a map", "a")', None),  # "If the input is not a map ... returns null"
    ("map/get", 'map.get(null, "a")', None),
    ("map/delete", 'map.delete({"key1": "hello", "key2": "world"}, "key2")', {"key1": "hello"}),
    ("map/delete", 'map.delete({"key1": "value1"}, "key3")', {"key1": "value1"}),
    (
        "map/merge",
        'map.merge({"key1": "hello", "key2": "world"}, {"key3": "good", "key4": "morning"})',
        {"key1": "hello", "key2": "world", "key3": "good", "key4": "morning"},
    ),
    (
        "map/merge",
        'map.merge({"key1": "hello", "key2": "world"}, {"key1": "good", "key2": "morning"})',
        {"key1": "good", "key2": "morning"},
    ),
    (
        "map/merge_nested",
        'map.merge_nested({"key1": {"key2": "value2"}}, {"key1": {"key3": "value3"}})',
        {"key1": {"key2": "value2", "key3": "value3"}},
    ),
    (
        "list/concat",
        'list.concat(["zero", "one", "two"], "three")',
        ["zero", "one", "two", "three"],
    ),
    (
        "list/prepend",
        'list.prepend(["zero", "one", "two"], "three")',
        ["three", "zero", "one", "two"],
    ),
    ("math/abs", "math.abs(-123)", 123),
    ("time/format", 'time.format(1720788633, "GMT")', "2024-07-12T12:50:33.000000Z"),
    ("time/format", 'time.format(1720788633, "Europe/Paris")', "2024-07-12T14:50:33.000000+02:00"),
    ("time/format", 'time.format(1720788633, "")', "2024-07-12T12:50:33.000000Z"),  # "" is UTC
    ("time/parse", 'time.parse("2024-07-12T12:50:33Z")', 1720788633.0),
    ("time/parse", 'time.parse("2024-07-12t14:50:33.25+02:00")', 1720788633.25),
    # hash/compute_checksum and hash/compute_hmac: the Base64 each example says it returns
    (
        "hash/compute_checksum",
        'base64.encode(hash.compute_checksum(text.encode("Hello World", "UTF-8"), "SHA256"))',
        "pZGm1Av0IEBKARczz7exkNYsZb8LzaMrV7J32a2fFG4=",
    ),
    (
        "hash/compute_hmac",
        'base64.encode(hash.compute_hmac(text.encode("key"), text.encode("Hello World"), "SHA256"))',
        "QidPcoCDkuWLV9co1+PA5RY+rwfRZdwDEF9iq74afRE=",
    ),
    # expression-helpers: conversion, data type and conditional functions
    ("expression-helpers", 'double("2.7")', 2.7),
    ("expression-helpers", "int(2.7)", 2),
    ("expression-helpers", "string(1.7)", "1.7"),
    ("expression-helpers", 'keys({"a": 1})', ["a"]),
    ("expression-helpers", 'len({"a": 1, "b": 2})', 2),
    (
        "expression-helpers",
        'default(map.get({}, "Key1"), "Couldn\'t find key!")',
        "Couldn't find key!",
    ),
]


@pytest.mark.parametrize(("page", "text", "expected"), EXAMPLES)
def test_documented_examples(page: str, text: str, expected: Any) -> None:
    assert same(expr(text), expected), f"{STDLIB}{page}: {text} gave {expr(text)!r}"


def test_hash_supports_every_documented_algorithm() -> None:
    # hash/compute_checksum: "Supported algorithms: MD5, SHA1, SHA224, SHA256, SHA384, SHA512."
    sizes = {"MD5": 16, "SHA1": 20, "SHA224": 28, "SHA256": 32, "SHA384": 48, "SHA512": 64}
    for name, size in sizes.items():
        digest = expr(f'hash.compute_checksum(text.encode("x"), "{name}")')
        assert isinstance(digest, bytes) and len(digest) == size
    assert base64.b64encode(expr('hash.compute_checksum(text.encode(""), "MD5")')) == (
        b"1B2M2Y8AsgTpgAmY7PhCfg=="
    )


# (page, expression, the tag Google documents, a word the message names)
ERRORS = [
    # text/split: "TypeError If either source or separator is not a string"; "ValueError If
    # separator is an empty string"
    ("text/split", 'text.split("abc", "")', "ValueError", "separator"),
    ("text/split", 'text.split(1, ",")', "TypeError", "source"),
    ("text/split", 'text.split("a,b", null)', "TypeError", "separator"),
    ("text/substring", 'text.substring("hello", 1, "2")', "TypeError", "end"),
    ("text/find_all", 'text.find_all("abc", 1)', "TypeError", "substr"),
    ("text/find_all_regex", 'text.find_all_regex("abc", "(")', "ValueError", "regular expression"),
    ("text/find_all_regex", 'text.find_all_regex(1, "a")', "TypeError", "source"),
    # match_regex "Uses RE2 syntax": no backreferences, no lookarounds -- "an invalid regular
    # expression" is a ValueError
    ("text/match_regex", r'text.match_regex("aa", "(a)\\1")', "ValueError", "RE2"),
    ("text/match_regex", 'text.match_regex("ab", "a(?=b)")', "ValueError", "RE2"),
    ("text/match_regex", 'text.match_regex("ab", "(?<!x)b")', "ValueError", "RE2"),
    ("text/match_regex", 'text.match_regex("ab", 1)', "TypeError", "regexp"),
    ("text/replace_all", 'text.replace_all("a", "a", 1)', "TypeError", "repl"),
    ("text/replace_all_regex", 'text.replace_all_regex("a", "[", "b")', "ValueError", "regular"),
    ("text/to_lower", "text.to_lower(1)", "TypeError", "source"),
    ("text/to_upper", "text.to_upper(null)", "TypeError", "source"),
    ("text/url_encode", "text.url_encode(1)", "TypeError", "source"),
    ("text/url_encode_plus", "text.url_encode_plus(true)", "TypeError", "source"),
    # text/url_decode: "ValueError If source contains any % not followed by two hexadecimal
    # characters"
    ("text/url_decode", 'text.url_decode("100%")', "ValueError", "%"),
    ("text/url_decode", 'text.url_decode("a%zzb")', "ValueError", "%"),
    ("text/url_decode", 'text.url_decode("a%2")', "ValueError", "%"),
    ("text/url_decode", "text.url_decode(1)", "TypeError", "source"),
    ("text/decode", 'text.decode(text.encode("a"), "NO-SUCH-CHARSET")', "ValueError", "charset"),
    # text/encode: "if the text contains codepoints that are not representable"
    ("text/encode", 'text.encode("é", "US-ASCII")', "ValueError", "text.encode"),
    ("text/encode", 'text.encode("a", "NO-SUCH-CHARSET")', "ValueError", "charset"),
    ("json/decode", 'json.decode("{\\"a\\": }")', "ValueError", "json.decode"),
    ("json/decode", 'json.decode("NaN")', "ValueError", "json.decode"),
    # json/encode: "Examples of such types include callable and bytes"
    ("json/encode", 'json.encode({"a": text.encode("x")})', "ValueError", "bytes"),
    ("json/encode_to_string", 'json.encode_to_string([text.encode("x")])', "ValueError", "bytes"),
    # base64/decode: "characters outside of the Base64 alphabet", or "padding == true and the
    # input is not aligned to a multiple of 4 bytes"
    ("base64/decode", 'base64.decode("a*b=")', "ValueError", "base64.decode"),
    ("base64/decode", 'base64.decode("aGk")', "ValueError", "base64.decode"),
    ("map/get", 'map.get({"a": 1}, 1)', "TypeError", "keys"),
    ("map/get", 'map.get({"a": 1}, ["a", 1])', "TypeError", "keys"),
    # map/delete: "If map is not a map (dictionary) or the key is not a string"
    ("map/delete", 'map.delete([], "a")', "TypeError", "map"),
    ("map/delete", 'map.delete({"a": 1}, 1)', "TypeError", "key"),
    ("map/merge", "map.merge({}, [])", "TypeError", "second"),
    ("map/merge_nested", 'map.merge_nested("a", {})', "TypeError", "first"),
    ("list/concat", 'list.concat({"a": 1}, 2)', "TypeError", "objs"),
    ("list/prepend", "list.prepend(null, 2)", "TypeError", "objs"),
    # math/abs: "TypeError If x is not an integer or floating-point number"; "ValueError If x is
    # MinInt64"
    ("math/abs", 'math.abs("1")', "TypeError", "math.abs"),
    ("math/abs", "math.abs(-9223372036854775808)", "ValueError", "overflow"),
    # time/parse: "TypeError If time is not a string"; "ValueError If time is not compatible
    # with RFC 3339 section 5.6" (a date alone, a space for "T", the basic ISO form, no offset)
    ("time/parse", "time.parse(1720788633)", "TypeError", "time.parse"),
    ("time/parse", 'time.parse("2024-07-12")', "ValueError", "RFC 3339"),
    ("time/parse", 'time.parse("2024-07-12 12:50:33Z")', "ValueError", "RFC 3339"),
    ("time/parse", 'time.parse("20240712T125033Z")', "ValueError", "RFC 3339"),
    ("time/parse", 'time.parse("2024-07-12T12:50:33")', "ValueError", "RFC 3339"),
    ("time/parse", 'time.parse("2024-13-12T12:50:33Z")', "ValueError", "RFC 3339"),
    # hash/*: "TypeError If data is not in bytes, or if algorithm is not a string"; "ValueError
    # If the provided hashing algorithm is not supported"
    ("hash/compute_checksum", 'hash.compute_checksum("text", "SHA256")', "TypeError", "data"),
    (
        "hash/compute_checksum",
        'hash.compute_checksum(text.encode("x"), 256)',
        "TypeError",
        "algorithm",
    ),
    (
        "hash/compute_checksum",
        'hash.compute_checksum(text.encode("x"), "SHA3")',
        "ValueError",
        "SHA3",
    ),
    (
        "hash/compute_hmac",
        'hash.compute_hmac("key", text.encode("x"), "SHA256")',
        "TypeError",
        "key",
    ),
    (
        "hash/compute_hmac",
        'hash.compute_hmac(text.encode("k"), text.encode("x"), "CRC32")',
        "ValueError",
        "CRC32",
    ),
]


@pytest.mark.parametrize(("page", "text", "tag", "mention"), ERRORS)
def test_documented_errors(page: str, text: str, tag: str, mention: str) -> None:
    with pytest.raises(WorkflowError) as info:
        expr(text)
    assert info.value.value["tags"] == [tag], f"{STDLIB}{page}: {text}"
    assert mention in info.value.value["message"]


def test_a_documented_error_is_caught_by_its_tag_in_a_workflow() -> None:
    # SYNTAX + "catching-errors": the except block sees the error map with its tags
    result = run("""
- attempt:
    try:
      assign:
        - parts: ${text.split("a,b", "")}
    except:
      as: e
      steps:
        - tagged:
            return: ${e.tags}
""")
    assert result == ["ValueError"]


def test_a_call_step_passes_arguments_by_the_names_each_page_documents() -> None:
    # SYNTAX + "calls": "call: FUNCTION_NAME / args: ARG_NAME: ARG_VALUE"; the names are the
    # ones in each function's Arguments table (map/get: map, keys; text/split: source,
    # separator; expression-helpers: default(val, defaultVal))
    result = run("""
- lookup:
    call: map.get
    args:
      map: {"a": {"b": 1}}
      keys: ["a", "b"]
    result: found
- cut:
    call: text.split
    args:
      source: "x,y"
      separator: ","
    result: parts
- fallback:
    call: default
    args:
      val: null
      defaultVal: "none"
    result: chosen
- done:
    return: ['${found}', '${parts}', '${chosen}']
""")
    assert result == [1, ["x", "y"], "none"]


def test_a_call_step_with_an_argument_the_function_does_not_take_is_a_type_error() -> None:
    result = run("""
- lookup:
    call: map.get
    args:
      mapping: {"a": 1}
      keys: "a"
""")
    assert result[0] == "error" and result[1]["tags"] == ["TypeError"]
    assert "map.get" in result[1]["message"] and "mapping" in result[1]["message"]
    assert "map_get" not in result[1]["message"]

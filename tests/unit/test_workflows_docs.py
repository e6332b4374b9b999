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
import json
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


def test_a_call_step_with_an_argument_the_function_does_not_take_is_refused_at_deploy() -> None:
    # Each function's Arguments table is its signature: a name it does not take (or a
    # required one left out, like text.substring's start and end) is found at deploy.
    with pytest.raises(definition.DefinitionError) as info:
        definition.parse(
            """
- lookup:
    call: map.get
    args:
      mapping: {"a": 1}
      keys: "a"
""",
            set(FUNCTIONS),
        )
    assert "map.get" in str(info.value) and "mapping" in str(info.value)
    assert "map_get" not in str(info.value)


# ==== second pass: the syntax pages, case by case ===============================================


def refused(source: str) -> str:
    """The deploy error of a definition Google refuses (its problems, one a line)."""
    with pytest.raises(definition.DefinitionError) as info:
        definition.parse(source, set(FUNCTIONS))
    return str(info.value)


# ---- conditions ---------------------------------------------------------------------------------
# SYNTAX + "conditions"; SAMPLES + "step_switch_embedded", "step_iterate", "array"


def test_a_switch_case_runs_its_embedded_steps() -> None:
    result = run("""
- step1:
    assign:
      - a: 1
- step2:
    switch:
      - condition: ${a==1}
        steps:
          - stepA:
              assign:
                - a: ${a+7}
          - stepB:
              return: ${"increase a to:"+string(a)}
- step3:
    return: ${"default a="+string(a)}
""")
    assert result == "increase a to:8"


def test_a_switch_without_a_match_takes_its_own_next() -> None:
    # "If there is neither a match nor a default condition, the workflow continues" -- with
    # the step's own next when it has one (the step_iterate sample's loop)
    result = run("""
- define:
    assign:
      - array: ["foo", "ba", "r"]
      - result: ""
      - i: 0
- check_condition:
    switch:
      - condition: ${len(array) > i}
        next: iterate
    next: exit_loop
- iterate:
    assign:
      - result: ${result + array[i]}
      - i: ${i+1}
    next: check_condition
- exit_loop:
    return:
      concat_result: ${result}
""")
    assert result == {"concat_result": "foobar"}


def test_a_switch_takes_the_first_true_condition_and_a_condition_must_be_boolean() -> None:
    assert (
        run("""
- pick:
    switch:
      - condition: ${1 > 2}
        return: "first"
      - condition: true
        return: "default"
      - condition: true
        return: "second default"
""")
        == "default"
    )
    # "Each expression must evaluate to true or false"
    error = run("""
- pick:
    switch:
      - condition: ${1}
        return: "one"
""")
    assert error[0] == "error" and error[1]["tags"] == ["TypeError"]


def test_a_switch_has_at_most_50_conditions() -> None:
    # "Each switch block can include a maximum of 50 conditions."
    cases = "".join(f"      - condition: ${{x == {i}}}\n        return: {i}\n" for i in range(51))
    assert "at most 50" in refused(f"- pick:\n    switch:\n{cases}")
    definition.parse(
        "- pick:\n    switch:\n" + "".join(cases.splitlines(keepends=True)[:100]), set(FUNCTIONS)
    )


# ---- iteration ----------------------------------------------------------------------------------
# SYNTAX + "iteration"; SAMPLES + "iterate_for_range", "loop_scope", "list_reverse"


def test_a_range_includes_both_ends() -> None:
    result = run("""
- assignStep:
    assign:
      - sum: 0
- loopStep:
    for:
      value: v
      range: [1, 9]
      steps:
        - sumStep:
            assign:
              - sum: ${sum + v}
- returnStep:
    return: ${sum}
""")
    assert result == 45  # "sum is 45"


def test_variables_created_in_a_loop_do_not_outlive_it() -> None:
    source = """
- init:
    assign:
      - workflowScope: foo
- outerLoop:
    for:
      value: outerLoopValue
      in: [1, 2, 3, 4]
      steps:
        - outerLoopAssign:
            assign:
              - outerLoopScope: ${workflowScope}
        - innerLoop:
            for:
              value: innerLoopValue
              in: [5, 6, 7, 8]
              steps:
                - innerLoopAssign:
                    assign:
                      - workflowScope: ${innerLoopValue}
                      - innerLoopScope: ${outerLoopScope}
- final:
    return:
      - ${workflowScope}
"""
    assert run(source) == [8]  # "allowed"
    for name in ("outerLoopScope", "innerLoopScope", "outerLoopValue"):  # "not allowed"
        result = run(source.replace("      - ${workflowScope}\n", f"      - ${{{name}}}\n"))
        assert result[0] == "error" and result[1]["tags"] == ["KeyError"], name


def test_the_index_break_and_continue_of_a_for_loop() -> None:
    result = run("""
- init:
    assign:
      - seen: []
- loop:
    for:
      value: v
      index: i
      in: ["a", "b", "c", "d"]
      steps:
        - skip_b:
            switch:
              - condition: ${v == "b"}
                next: continue
              - condition: ${v == "d"}
                next: break
        - keep:
            assign:
              - seen: ${list.concat(seen, string(i) + v)}
- done:
    return: ${seen}
""")
    assert result == ["0a", "2c"]


def test_list_reverse_sample() -> None:
    result = run("""
main:
  steps:
    - call_reverse_list:
        call: reverse_list
        args:
          source: [1, 2, 3]
        result: output
    - return_message:
        return: ${output}
reverse_list:
  params: [source]
  steps:
    - init:
        assign:
          - dst: []
    - reverse:
        for:
          value: entry
          in: ${source}
          steps:
            - prepend_value:
                assign:
                  - dst: ${list.prepend(dst, entry)}
    - return_destination:
        return: ${dst}
""")
    assert result == [3, 2, 1]


def test_break_and_continue_outside_a_loop_are_refused_at_deploy() -> None:
    assert "only allowed inside a for loop" in refused("- a:\n    next: break\n")
    assert "only allowed inside a for loop" in refused(
        "- a:\n    switch:\n      - condition: true\n        next: continue\n"
    )


def test_a_for_loop_takes_in_or_a_range_of_two_numbers() -> None:
    both = "- a:\n    for:\n      value: v\n      in: [1]\n      range: [1, 2]\n      steps: []\n"
    assert "either in or range" in refused(both)
    assert "two numbers" in refused(
        "- a:\n    for:\n      value: v\n      range: [1, 2, 3]\n      steps: []\n"
    )
    result = run("""
- init:
    assign:
      - bounds: ["a", 3]
- a:
    for:
      value: v
      range: ${bounds}
      steps:
        - s:
            assign:
              - x: ${v}
""")
    assert result[0] == "error" and result[1]["tags"] == ["TypeError"]
    assert "range" in result[1]["message"]


def test_the_steps_of_a_loop_body_are_checked_at_deploy_too() -> None:
    # a malformed expression or a jump to nowhere inside a for, a try or an except block is
    # refused like one at the top level
    assert "bad expression" in refused("""
- a:
    for:
      value: v
      in: [1]
      steps:
        - s:
            assign:
              - x: ${v +}
""")
    assert "is not a step" in refused("""
- a:
    try:
      steps:
        - s:
            next: nowhere
    except:
      as: e
      steps:
        - t:
            return: 1
""")


# ---- parallel steps -----------------------------------------------------------------------------
# SYNTAX + "parallel-steps"; SAMPLES + "parallel_error_handling", "parallel_shared_variables"


def test_by_default_every_branch_runs_and_the_errors_come_together() -> None:
    # "The default policy, continueAll, results in no further action, and all other branches
    # will attempt to run."
    result = run("""
- init:
    assign:
      - done: []
- both:
    try:
      steps:
        - par:
            parallel:
              shared: [done]
              branches:
                - fails:
                    steps:
                      - boom:
                          raise: "branch error"
                - slow:
                    steps:
                      - wait:
                          call: sys.now
                          result: t
                      - mark:
                          assign:
                            - done: ${list.concat(done, "slow")}
    except:
      as: e
      steps:
        - out:
            return: ['${done}', '${e.tags}', '${e.branches}']
""")
    assert result == [["slow"], ["UnhandledBranchError"], ["branch error"]]


def test_parallel_error_handling_sample() -> None:
    result = run("""
- catchErrors:
    try:
      steps:
        - failOdd:
            parallel:
              for:
                value: num
                range: [0, 5]
                steps:
                  - checkEven:
                      switch:
                        - condition: ${num % 2 != 0}
                          raise: "how odd!"
    except:
      as: e
      steps:
        - returnError:
            return: ${e}
""")
    assert result["tags"] == ["UnhandledBranchError"]
    assert result["branches"] == ["how odd!"] * 3  # 1, 3 and 5


def test_only_the_continue_all_policy_is_supported() -> None:
    # "Note that continueAll is the only policy currently supported."
    source = """
- par:
    parallel:
      exception_policy: {policy}
      branches:
        - a:
            steps:
              - s:
                  assign:
                    - x: 1
"""
    assert "not supported" in refused(source.format(policy="unhandled"))
    assert run(source.format(policy="continueAll")) is None


def test_a_branch_writes_a_parent_variable_only_if_it_is_shared() -> None:
    # parallel_shared_variables sample: "- input: 5 # deployment error, defined in the parent
    # scope but not marked shared"; a branch's own variables stay in the branch
    source = """
- assignStep:
    assign:
      - input: ["apples", "oranges"]
      - my_result: {{}}
- parallelStep:
    parallel:
      shared: [my_result]
      branches:
        - getStock:
            steps:
              - assignResult1:
                  assign:
                    - my_result["getStock"]: ${{input[0]}}
                    - temp: 1
                    {extra}
        - orderStock:
            steps:
              - assignResult2:
                  assign:
                    - my_result.orderStock: ${{input[1]}}
                    - temp: 2
- done:
    return: ${{my_result}}
"""
    assert run(source.format(extra="")) == {"getStock": "apples", "orderStock": "oranges"}
    problem = refused(source.format(extra="- input: 5"))
    assert "'input'" in problem and "shared" in problem


def test_parallel_steps_nest_at_most_two_deep() -> None:
    def nested(depth: int) -> str:
        steps: list[Any] = [{"leaf": {"assign": [{"x": 1}]}}]
        for _ in range(depth):
            steps = [{"par": {"parallel": {"branches": [{"b": {"steps": steps}}]}}}]
        return json.dumps([*steps, {"done": {"return": "ok"}}])

    assert run(nested(2)) == "ok"
    result = run(nested(3))
    assert result[0] == "error" and result[1]["tags"] == ["UnhandledBranchError"]
    inner = result[1]["branches"][0]
    assert "ParallelNestingError" in str(inner)


def test_a_parallel_step_has_at_most_ten_branches() -> None:
    branches = "".join(
        f"        - b{i}:\n            steps:\n              - s:\n                  assign:\n"
        f"                    - x: {i}\n"
        for i in range(11)
    )
    assert "at most 10" in refused(f"- par:\n    parallel:\n      branches:\n{branches}")


def test_the_concurrency_limit_is_a_positive_integer() -> None:
    # "Must be a positive integer, and can be either a literal value or an expression."
    source = """
- init:
    assign:
      - limit: {limit}
      - total: 0
- par:
    parallel:
      shared: [total]
      concurrency_limit: {spec}
      for:
        value: v
        in: [1, 2, 3, 4]
        steps:
          - add:
              assign:
                - total: ${{total + v}}
- done:
    return: ${{total}}
"""
    assert run(source.format(limit=1, spec=2)) == 10
    assert run(source.format(limit=2, spec="${limit}")) == 10
    assert "positive integer" in refused(source.format(limit=1, spec=0))
    result = run(source.format(limit=0, spec="${limit}"))
    assert result[0] == "error" and result[1]["tags"] == ["ValueError"]


# ---- errors, raise and retry --------------------------------------------------------------------
# SYNTAX + "raising-errors", "catching-errors", "retrying", "error-types";
# SAMPLES + "error_catch", "error_retry_http_other"


def test_a_raised_string_is_the_error_itself() -> None:
    result = run("""
- attempt:
    try:
      raise: "Something went wrong."
    except:
      as: e
      steps:
        - back:
            return: ${e}
""")
    assert result == "Something went wrong."
    assert run('- a:\n    raise: "Something went wrong."\n') == ("error", "Something went wrong.")


def test_error_catch_sample_dispatches_on_the_error_map() -> None:
    source = """
- read_item:
    try:
      raise:
        code: {code}
        message: "HTTP server responded with error code {code}"
        tags: ["HttpError"]
    except:
      as: e
      steps:
        - known_errors:
            switch:
              - condition: ${{not("HttpError" in e.tags)}}
                next: connection_problem
              - condition: ${{e.code == 404}}
                next: url_not_found
              - condition: ${{e.code == 403}}
                next: auth_problem
        - unhandled_exception:
            raise: ${{e}}
- url_found:
    return: "found"
- connection_problem:
    return: "Connection problem; check URL"
- url_not_found:
    return: "Sorry, URL wasn't found"
- auth_problem:
    return: "Authentication error"
"""
    assert run(source.format(code=404)) == "Sorry, URL wasn't found"
    assert run(source.format(code=403)) == "Authentication error"
    unhandled = run(source.format(code=500))
    assert unhandled[0] == "error" and unhandled[1]["code"] == 500


def test_a_custom_predicate_retries_what_it_returns_true_for() -> None:
    # error_retry_http_other sample: a raised map with code 202 is retried, max_retries times
    source = """
main:
  steps:
    - init:
        assign:
          - attempts: 0
    - read_item:
        try:
          steps:
            - count:
                assign:
                  - attempts: ${{attempts + 1}}
            - checkNotOK:
                raise:
                  code: {code}
        retry:
          predicate: ${{custom_predicate}}
          max_retries: 2
          backoff:
            initial_delay: 0.01
            max_delay: 0.02
            multiplier: 2
        except:
          as: e
          steps:
            - out:
                return: ${{attempts}}
custom_predicate:
  params: [e]
  steps:
    - what_to_repeat:
        switch:
          - condition: ${{e.code == 202}}
            return: true
    - otherwise:
        return: false
"""
    assert run(source.format(code=202)) == 3  # the first attempt and two retries
    assert run(source.format(code=500)) == 1


def test_a_retry_names_a_known_policy_or_predicate_and_takes_numbers() -> None:
    try_step = "- a:\n    try:\n      raise: x\n    retry: {retry}\n"
    assert "unknown retry policy" in refused(try_step.format(retry="${http.no_such_policy}"))
    assert "retry predicate" in refused(
        try_step.format(retry="\n      predicate: ${no_such_predicate}\n      max_retries: 1")
    )
    result = run(
        try_step.format(retry='\n      predicate: ${retry.always}\n      max_retries: "x"')
    )
    assert result[0] == "error" and result[1]["tags"] == ["TypeError"]
    assert "max_retries" in result[1]["message"]


# ---- subworkflows and jumps ---------------------------------------------------------------------
# SYNTAX + "subworkflows", "jumps"; SAMPLES + "subworkflow"


def test_subworkflow_sample() -> None:
    result = run("""
main:
  steps:
    - first:
        call: hello
        args:
          input: "Kristof"
        result: some_output
    - second:
        return: ${some_output}
hello:
  params: [input]
  steps:
    - first:
        return: ${"Hello "+input}
""")
    assert result == "Hello Kristof"


def test_recursion_deeper_than_the_call_stack_limit_is_a_recursion_error() -> None:
    # .../syntax/error-types: RecursionError, "the maximum call stack depth is exceeded"
    # (https://cloud.google.com/workflows/quotas: 20)
    source = """
main:
  steps:
    - start:
        call: down
        args:
          n: {n}
        result: r
    - done:
        return: ${{r}}
down:
  params: [n]
  steps:
    - more:
        switch:
          - condition: ${{n == 0}}
            return: 0
    - again:
        call: down
        args:
          n: ${{n - 1}}
        result: r
    - back:
        return: ${{r + 1}}
"""
    assert run(source.format(n=18)) == 18  # main and 19 nested calls
    result = run(source.format(n=100))
    assert result[0] == "error" and result[1]["tags"] == ["RecursionError"]


def test_next_end_stops_the_workflow_without_a_value() -> None:
    result = run("""
- first:
    assign:
      - x: 1
    next: end
- never:
    return: "not reached"
""")
    assert result is None


# ---- the standard library: regular expressions, arguments at deploy, base functions -------------

LONGEST = [
    # text/find_all_regex: "If the overlapping matches start at the same index, then the
    # longest match is considered."
    (
        'text.find_all_regex("HelloWorld", "Hello|HelloWorld")',
        [{"index": 0, "match": "HelloWorld"}],
    ),
    (
        'text.find_all_regex("foo footer", "foo|footer")',
        [{"index": 0, "match": "foo"}, {"index": 4, "match": "footer"}],
    ),
    ('text.find_all_regex("aabb", "(a*)(ab)?b")', [{"index": 0, "match": "aabb"}]),
    (
        'text.find_all_regex("ab ab", "a|ab$")',
        [{"index": 0, "match": "a"}, {"index": 3, "match": "ab"}],
    ),
    ('text.replace_all_regex("HelloWorld", "Hello|HelloWorld", "x")', "x"),
    # RE2's global replace skips an empty match where the previous match ended
    ('text.replace_all_regex("abxd", "x*", "-")', "-a-b-d-"),
]


@pytest.mark.parametrize(("text", "expected"), LONGEST)
def test_regex_matches_are_leftmost_longest(text: str, expected: Any) -> None:
    assert same(expr(text), expected), expr(text)


def test_a_function_called_with_the_wrong_number_of_arguments_is_refused_at_deploy() -> None:
    # text/substring: source, start and end are all required
    assert "text.substring" in refused('- a:\n    return: ${text.substring("hello", 1)}\n')
    assert "text.substring" in refused(
        '- a:\n    call: text.substring\n    args:\n      source: "hello"\n      start: 1\n'
    )
    assert "len" in refused("- a:\n    assign:\n      - n: ${len([1], [2])}\n")
    # optional arguments may be left out (text/decode: charset)
    definition.parse('- a:\n    return: ${text.decode(text.encode("x"))}\n', set(FUNCTIONS))


BASE = [
    ("int", 'int("1.5")', "ValueError"),  # "a string that is an integer"
    ("double", 'double("x")', "ValueError"),
    ("string", 'string({"a": 1})', "TypeError"),
    ("string", "string([1])", "TypeError"),
    ("len", "len(1)", "TypeError"),
    ("keys", "keys([1])", "TypeError"),
]


@pytest.mark.parametrize(("name", "text", "tag"), BASE)
def test_base_functions_refuse_what_their_page_does_not_take(
    name: str, text: str, tag: str
) -> None:
    # STDLIB + "expression-helpers"
    with pytest.raises(WorkflowError) as info:
        expr(text)
    assert info.value.value["tags"] == [tag] and name in info.value.value["message"]


def test_get_type_of_each_value_and_default_of_null() -> None:
    # STDLIB + "expression-helpers": get_type and default(val, defaultVal)
    assert expr(
        '[get_type(null), get_type(true), get_type(1), get_type(1.5), get_type("s"), '
        'get_type([]), get_type({}), get_type(text.encode("b"))]'
    ) == ["null", "boolean", "integer", "double", "string", "list", "map", "bytes"]
    assert expr('default(null, "x")') == "x" and expr("default(0, 1)") == 0


def test_sys_sleep_takes_a_number_of_seconds_up_to_a_year() -> None:
    # https://cloud.google.com/workflows/docs/sleeping: "suspends execution for the given
    # number of seconds to a maximum of 31536000 (one year)"
    runtime = Runtime(None, None, None)  # type: ignore[arg-type]

    def sleep(seconds: str) -> Any:
        source = f"- wait:\n    call: sys.sleep\n    args:\n      seconds: {seconds}\n"
        parsed = definition.parse(source, set(FUNCTIONS))
        interpreter = Interpreter(parsed, FUNCTIONS, runtime.blocking("sa"), lambda *a: None)
        try:
            return asyncio.run(asyncio.wait_for(interpreter.run(None), 5))
        except WorkflowError as exc:
            return ("error", exc.value)

    assert sleep("0.01") is None
    for seconds, tag in (("31536001", "ValueError"), ("-1", "ValueError"), ('"1"', "TypeError")):
        result = sleep(seconds)
        assert result[0] == "error" and result[1]["tags"] == [tag], seconds

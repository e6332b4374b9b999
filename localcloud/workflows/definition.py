"""Workflow definitions: YAML/JSON source parsed into a tree, checked whole at deploy time.

Every problem in a definition (unknown step keys, bad ``next`` targets, calls to undefined
subworkflows, malformed expressions) is collected and reported together, each with its
subworkflow and step name, the way Workflows refuses a bad deploy.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from localcloud.workflows.expr import ExpressionSyntaxError, parse_expression

STEP_KEYS = {
    "assign",
    "call",
    "args",
    "result",
    "switch",
    "next",
    "for",
    "parallel",
    "try",
    "retry",
    "except",
    "raise",
    "return",
    "steps",
}
SPECIAL_NEXT = {"end", "break", "continue"}
_EXPR = re.compile(r"^\$\{(.*)\}$", re.S)


class DefinitionError(ValueError):
    """All the problems of a definition, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Step:
    name: str
    body: dict[str, Any]
    children: list[Step] = field(default_factory=list)  # nested `steps`


@dataclass
class Subworkflow:
    name: str
    params: list[tuple[str, Any, bool]]  # (name, default, has default)
    steps: list[Step]


@dataclass
class Definition:
    subworkflows: dict[str, Subworkflow]

    @property
    def main(self) -> Subworkflow:
        return self.subworkflows["main"]


class _Loader(yaml.SafeLoader):
    """YAML whose map keys are the text written, always a string.

    Workflows maps have string keys only. Google's own ``iterate_map`` sample
    (GoogleCloudPlatform/workflows-samples src/iterate_map.workflows.yaml, and its JSON twin
    with ``"1": 10``) writes ``1: 10`` and then reads ``map[key]`` with the strings that
    ``keys(map)`` returns, summing to 60: an unquoted ``1`` (or ``true``, ``1.5``) as a key is
    the string "1". PyYAML would make it the integer 1, which no expression can then reach.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)  # "<<" merge keys, as SafeLoader does
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key: Any = key_node.value  # as written (quoted or not), escapes resolved
            else:
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, str):
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        "a map key must be a string, not a list or map",
                        key_node.start_mark,
                    )
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


def load_source(source: str) -> Any:
    text = source.strip()
    try:
        if text.startswith(("{", "[")):
            return json.loads(text)
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: still safe
    except (ValueError, yaml.YAMLError) as exc:
        raise DefinitionError([f"the definition is not valid YAML or JSON: {exc}"]) from None


def parse(source: str, known_functions: set[str] | None = None) -> Definition:
    doc = load_source(source)
    problems: list[str] = []
    subs: dict[str, Subworkflow] = {}
    if isinstance(doc, list):
        doc = {"main": {"steps": doc}}
    if not isinstance(doc, dict):
        raise DefinitionError(["the definition must be a list of steps or a map of subworkflows"])
    if "main" not in doc:
        problems.append("the definition has no 'main' workflow")
    for name, spec in doc.items():
        if not isinstance(spec, dict) or "steps" not in spec:
            problems.append(f"subworkflow {name!r}: must be a map with 'steps'")
            continue
        unknown = set(spec) - {"params", "steps"}
        if unknown:
            problems.append(f"subworkflow {name!r}: unknown keys {sorted(unknown)}")
        params = []
        for p in spec.get("params") or []:
            if isinstance(p, str):
                params.append((p, None, False))
            elif isinstance(p, dict) and len(p) == 1:
                ((pname, default),) = p.items()
                params.append((pname, default, True))
            else:
                problems.append(f"subworkflow {name!r}: bad param {p!r}")
        steps = _steps(spec["steps"], f"{name}", problems)
        subs[name] = Subworkflow(name, params, steps)
    definition = Definition(subs)
    for sub in subs.values():
        _check(sub, sub.steps, definition, problems, known_functions or set())
    if problems:
        raise DefinitionError(problems)
    return definition


def _steps(raw: Any, where: str, problems: list[str]) -> list[Step]:
    if not isinstance(raw, list):
        problems.append(f"{where}: 'steps' must be a list")
        return []
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or len(item) != 1:
            problems.append(
                f"{where}: step #{i + 1} must be a map with exactly one key, the step name"
            )
            continue
        ((name, body),) = item.items()
        if not isinstance(body, dict):
            problems.append(f"{where}.{name}: the step body must be a map")
            continue
        unknown = set(body) - STEP_KEYS
        if unknown:
            problems.append(f"{where}.{name}: unknown step keys {sorted(unknown)}")
        step = Step(str(name), body)
        if "steps" in body:
            step.children = _steps(body["steps"], f"{where}.{name}", problems)
        out.append(step)
    return out


def _expressions(value: Any) -> list[str]:
    found = []
    if isinstance(value, str):
        match = _EXPR.match(value)
        if match:
            found.append(match.group(1))
    elif isinstance(value, list):
        for item in value:
            found += _expressions(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            found += _expressions(key) + _expressions(item)
    return found


def _check(
    sub: Subworkflow,
    steps: list[Step],
    definition: Definition,
    problems: list[str],
    known: set[str],
) -> None:
    for step in steps:
        where = f"{sub.name}.{step.name}"
        body = step.body
        for text in _expressions({k: v for k, v in body.items() if k not in ("steps",)}):
            try:
                parse_expression(text)
            except ExpressionSyntaxError as exc:
                problems.append(f"{where}: bad expression ${{{text}}}: {exc}")
        target = body.get("next")
        if target is not None and target not in SPECIAL_NEXT and not _reachable(target, sub):
            problems.append(f"{where}: next target {target!r} is not a step of {sub.name!r}")
        call = body.get("call")
        if (
            isinstance(call, str)
            and "." not in call
            and call not in definition.subworkflows
            and call not in known
        ):
            problems.append(f"{where}: call to undefined subworkflow or function {call!r}")
        if "switch" in body:
            if not isinstance(body["switch"], list):
                problems.append(f"{where}: switch must be a list of conditions")
            else:
                for j, case in enumerate(body["switch"]):
                    if not isinstance(case, dict) or "condition" not in case:
                        problems.append(f"{where}: switch case #{j + 1} needs a condition")
                        continue
                    nxt = case.get("next")
                    if nxt is not None and nxt not in SPECIAL_NEXT and not _reachable(nxt, sub):
                        problems.append(
                            f"{where}: switch case #{j + 1} next target {nxt!r} is not a step"
                        )
        if "for" in body:
            spec = body["for"]
            if (
                not isinstance(spec, dict)
                or "value" not in spec
                or "steps" not in spec
                or not ({"in", "range"} & set(spec))
            ):
                problems.append(f"{where}: for needs value, steps and in or range")
        if "try" in body and not isinstance(body["try"], dict):
            problems.append(f"{where}: try must be a map (a step body)")
        if "except" in body and (
            not isinstance(body["except"], dict) or "steps" not in body["except"]
        ):
            problems.append(f"{where}: except needs 'as' and 'steps'")
        _check(sub, step.children, definition, problems, known)


def _reachable(target: str, sub: Subworkflow) -> bool:
    """Whether ``target`` names a step anywhere in ``sub`` (loops, branches and try
    bodies included: their steps are raw lists under a ``steps`` key)."""

    def names(value: Any) -> set[str]:
        found: set[str] = set()
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "steps" and isinstance(item, list):
                    for entry in item:
                        if isinstance(entry, dict) and len(entry) == 1:
                            ((name, body),) = entry.items()
                            found.add(str(name))
                            found |= names(body)
                else:
                    found |= names(item)
        elif isinstance(value, list):
            for item in value:
                found |= names(item)
        return found

    if not hasattr(sub, "_names"):
        sub._names = names({"steps": [{s.name: s.body} for s in sub.steps]})  # type: ignore[attr-defined]
    return target in sub._names  # type: ignore[attr-defined]

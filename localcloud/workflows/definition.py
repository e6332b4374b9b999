"""Workflow definitions: YAML/JSON source parsed into a tree, checked whole at deploy time.

Every problem in a definition (unknown step keys, bad ``next`` targets, calls to undefined
subworkflows, malformed expressions) is collected and reported together, each with its
subworkflow and step name, the way Workflows refuses a bad deploy.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from localcloud.workflows.expr import Call, ExpressionSyntaxError, parse_expression
from localcloud.workflows.expr import _walk as _walk_nodes

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


# Limits the syntax pages state for a definition, refused at deploy as Google does:
MAX_CONDITIONS = 50  # .../syntax/conditions: "Each switch block can include a maximum of 50"
MAX_BRANCHES = 10  # https://cloud.google.com/workflows/quotas: branches per parallel step
# .../syntax/parallel-steps: "Note that continueAll is the only policy currently supported."
EXCEPTION_POLICIES = {"continueAll"}
PARALLEL_KEYS = {"exception_policy", "shared", "concurrency_limit", "branches", "for"}
FOR_KEYS = {"value", "index", "in", "range", "steps"}


@dataclass
class _Walk:
    """Where ``_check`` is: the subworkflow, whether inside a ``for`` (where ``break`` and
    ``continue`` mean something), and the variables of the enclosing scope defined so far
    (params and earlier assignments: what a parallel branch may only write if shared)."""

    sub: Subworkflow
    definition: Definition
    problems: list[str]
    known: set[str]
    loop: str = ""  # "for" or "parallel" inside a loop body
    defined: set[str] = field(default_factory=set)


def _check_list(raw: Any, where: str, walk: _Walk) -> None:
    """Check a nested step list (a loop body, a branch, a try or except block)."""
    for step in _steps(raw, where, walk.problems):
        _check_step(step, walk)


def _check(
    sub: Subworkflow,
    steps: list[Step],
    definition: Definition,
    problems: list[str],
    known: set[str],
) -> None:
    walk = _Walk(sub, definition, problems, known, defined={p[0] for p in sub.params})
    for step in steps:
        _check_step(step, walk)


def _check_next(target: Any, where: str, walk: _Walk) -> None:
    if target is None:
        return
    if not isinstance(target, str):
        walk.problems.append(f"{where}: next must be a step name, not {target!r}")
    elif target in ("break", "continue"):
        # .../syntax/iteration: "next: break" / "next: continue" end an iteration of a for
        # loop; outside one there is nothing to break out of, and the iterations of a
        # parallel for run at once: one cannot stop the others (continue ends its own).
        if not walk.loop or (target == "break" and walk.loop == "parallel"):
            where_ok = "a for loop" if target == "break" else "a for loop or a parallel for"
            walk.problems.append(f"{where}: next: {target} is only allowed inside {where_ok}")
    elif target not in SPECIAL_NEXT and not _reachable(target, walk.sub):
        walk.problems.append(f"{where}: next target {target!r} is not a step of {walk.sub.name!r}")


def _check_step(step: Step, walk: _Walk) -> None:
    where = f"{walk.sub.name}.{step.name}"
    _check_body(step.body, where, walk)
    for child in step.children:
        _check_step(child, walk)
    walk.defined |= _assigned(step.body, nested=False)


def _check_body(body: dict[str, Any], where: str, walk: _Walk) -> None:
    problems = walk.problems
    nested = ("steps", "for", "parallel", "try", "except", "switch")
    for text in _expressions({k: v for k, v in body.items() if k not in nested}):
        try:
            parse_expression(text)
        except ExpressionSyntaxError as exc:
            problems.append(f"{where}: bad expression ${{{text}}}: {exc}")
        else:
            _check_calls(text, where, walk)
    _check_next(body.get("next"), where, walk)
    call = body.get("call")
    if isinstance(call, str):
        _check_call_step(call, body.get("args"), where, walk)
    if "switch" in body:
        _check_switch(body["switch"], where, walk)
    if "for" in body:
        _check_for(body["for"], where, walk)
    if "parallel" in body:
        _check_parallel(body["parallel"], where, walk)
    if "try" in body:
        inner = body["try"]
        if not isinstance(inner, dict):
            problems.append(f"{where}: try must be a map (a step body)")
        elif "steps" in inner:
            _check_list(inner["steps"], where, walk)
        else:
            _check_body(inner, where, walk)
    if "retry" in body:
        _check_retry(body["retry"], where, walk)
    if "except" in body:
        handler = body["except"]
        if not isinstance(handler, dict) or "steps" not in handler:
            problems.append(f"{where}: except needs 'as' and 'steps'")
        else:  # the handler's variable is local to it
            inner_walk = dataclasses.replace(
                walk, defined=set(walk.defined) | {str(handler.get("as", "e"))}
            )
            _check_list(handler["steps"], where, inner_walk)


def _check_switch(cases: Any, where: str, walk: _Walk) -> None:
    problems = walk.problems
    if not isinstance(cases, list):
        problems.append(f"{where}: switch must be a list of conditions")
        return
    if len(cases) > MAX_CONDITIONS:
        problems.append(
            f"{where}: switch has {len(cases)} conditions, at most {MAX_CONDITIONS} are allowed"
        )
    for j, case in enumerate(cases):
        if not isinstance(case, dict) or "condition" not in case:
            problems.append(f"{where}: switch case #{j + 1} needs a condition")
            continue
        unknown = set(case) - STEP_KEYS - {"condition"}
        if unknown:
            problems.append(f"{where}: switch case #{j + 1}: unknown keys {sorted(unknown)}")
        _check_next(case.get("next"), f"{where} (switch case #{j + 1})", walk)
        inner = {k: v for k, v in case.items() if k not in ("condition", "next")}
        inner["condition"] = case["condition"]
        _check_body(inner, f"{where} (switch case #{j + 1})", walk)
        if "steps" in case:
            _check_list(case["steps"], where, walk)


def _check_for(spec: Any, where: str, walk: _Walk, *, parallel: bool = False) -> None:
    problems = walk.problems
    if (
        not isinstance(spec, dict)
        or "value" not in spec
        or "steps" not in spec
        or not ({"in", "range"} & set(spec))
    ):
        problems.append(f"{where}: for needs value, steps and in or range")
        return
    unknown = set(spec) - FOR_KEYS
    if unknown:
        problems.append(f"{where}: for has unknown keys {sorted(unknown)}")
    if "in" in spec and "range" in spec:
        problems.append(f"{where}: for takes either in or range, not both")
    bounds = spec.get("range")
    if isinstance(bounds, list) and (
        len(bounds) != 2
        or any(
            not (_EXPR.match(b) if isinstance(b, str) else isinstance(b, int | float))
            or isinstance(b, bool)
            for b in bounds
        )
    ):
        problems.append(f"{where}: for range must be a list of two numbers [start, end]")
    for text in _expressions({k: v for k, v in spec.items() if k != "steps"}):
        try:
            parse_expression(text)
        except ExpressionSyntaxError as exc:
            problems.append(f"{where}: bad expression ${{{text}}}: {exc}")
    # .../syntax/iteration: variables created in the loop "only exist within that loop"
    loop_vars = {str(spec["value"])} | ({str(spec["index"])} if "index" in spec else set())
    inner = dataclasses.replace(
        walk, loop="parallel" if parallel else "for", defined=set(walk.defined) | loop_vars
    )
    _check_list(spec["steps"], where, inner)


def _check_parallel(spec: Any, where: str, walk: _Walk) -> None:
    """The parallel-steps page's rules: its keys, continueAll as the only policy, a positive
    concurrency limit, and no assignment in a branch to a parent variable not ``shared``."""
    problems = walk.problems
    if not isinstance(spec, dict) or len({"branches", "for"} & set(spec)) != 1:
        problems.append(f"{where}: parallel needs either branches or for")
        return
    unknown = set(spec) - PARALLEL_KEYS
    if unknown:
        problems.append(f"{where}: parallel has unknown keys {sorted(unknown)}")
    policy = spec.get("exception_policy", "continueAll")
    if policy not in EXCEPTION_POLICIES:
        problems.append(
            f"{where}: exception_policy {policy!r} is not supported (only continueAll is)"
        )
    limit = spec.get("concurrency_limit")
    literal = limit is not None and not (isinstance(limit, str) and _EXPR.match(limit))
    if literal and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        problems.append(f"{where}: concurrency_limit must be a positive integer, not {limit!r}")
    shared = spec.get("shared") or []
    if not isinstance(shared, list) or not all(isinstance(n, str) for n in shared):
        problems.append(f"{where}: shared must be a list of variable names")
        shared = []
    bodies: list[tuple[str, Any]] = []
    if "branches" in spec:
        branches = spec["branches"]
        if not isinstance(branches, list) or not branches:
            problems.append(f"{where}: branches must be a non-empty list")
            return
        if len(branches) > MAX_BRANCHES:
            problems.append(
                f"{where}: parallel has {len(branches)} branches, at most {MAX_BRANCHES} are allowed"
            )
        for branch in branches:
            if not isinstance(branch, dict) or len(branch) != 1:
                problems.append(f"{where}: each branch must be a map with one key, its name")
                continue
            ((bname, bbody),) = branch.items()
            if not isinstance(bbody, dict) or "steps" not in bbody:
                problems.append(f"{where}.{bname}: a branch needs steps")
                continue
            bodies.append((f"{where}.{bname}", bbody["steps"]))
            # branch variables are local to the branch
            _check_list(
                bbody["steps"], where, dataclasses.replace(walk, loop="", defined=set(walk.defined))
            )
    else:
        _check_for(
            spec["for"], where, dataclasses.replace(walk, defined=set(walk.defined)), parallel=True
        )
        if isinstance(spec["for"], dict):
            bodies.append((where, spec["for"].get("steps")))
    # SAMPLES parallel_shared_variables.workflows.yaml: assigning "input", "defined in the
    # parent scope but not marked shared", is a deployment error.
    for branch_where, raw in bodies:
        for name in sorted(_assigned_in(raw) & (walk.defined - set(shared))):
            problems.append(
                f"{branch_where}: assigns {name!r}, a variable of the parent scope that is not "
                "listed in shared"
            )


def _check_retry(policy: Any, where: str, walk: _Walk) -> None:
    """A retry names a policy (``${http.default_retry}``) or is a map with a predicate."""
    problems = walk.problems
    if isinstance(policy, str):
        match = _EXPR.match(policy)
        name = match.group(1).strip() if match else policy
        if name not in RETRY_POLICIES:
            problems.append(f"{where}: unknown retry policy {policy!r}")
        return
    if not isinstance(policy, dict):
        problems.append(f"{where}: retry must be a policy name or a map")
        return
    unknown = set(policy) - {"predicate", "max_retries", "backoff"}
    if unknown:
        problems.append(f"{where}: retry has unknown keys {sorted(unknown)}")
    predicate = policy.get("predicate")
    if predicate is not None:
        match = _EXPR.match(predicate) if isinstance(predicate, str) else None
        name = match.group(1).strip() if match else None
        if name is None or (name not in walk.definition.subworkflows and name not in walk.known):
            problems.append(
                f"{where}: retry predicate {predicate!r} is not a subworkflow or a predicate function"
            )
    backoff = policy.get("backoff")
    if backoff is not None:
        if not isinstance(backoff, dict):
            problems.append(f"{where}: retry backoff must be a map")
        else:
            unknown = set(backoff) - {"initial_delay", "max_delay", "multiplier"}
            if unknown:
                problems.append(f"{where}: retry backoff has unknown keys {sorted(unknown)}")
    for text in _expressions({k: v for k, v in policy.items() if k != "predicate"}):
        try:
            parse_expression(text)
        except ExpressionSyntaxError as exc:
            problems.append(f"{where}: bad expression ${{{text}}}: {exc}")


RETRY_POLICIES = {"http.default_retry", "http.default_retry_non_idempotent"}


def _root(target: str) -> str:
    match = re.match(r"\s*([A-Za-z_][A-Za-z0-9_]*)", target)
    return match.group(1) if match else target


def _assigned(body: Any, *, nested: bool) -> set[str]:
    """Variables a step body assigns (``assign`` targets' roots, ``result``); with
    ``nested``, also those its inner steps assign (loops, branches, try and except blocks)."""
    names: set[str] = set()
    if not isinstance(body, dict):
        return names
    for item in body.get("assign") or []:
        if isinstance(item, dict):
            names |= {_root(str(target)) for target in item}
    if isinstance(body.get("result"), str):
        names.add(body["result"])
    if isinstance(body.get("try"), dict) and "steps" not in body["try"]:
        names |= _assigned(body["try"], nested=nested)
    for case in body.get("switch") or [] if isinstance(body.get("switch"), list) else []:
        names |= _assigned(case, nested=nested)
    if nested:
        for key in ("steps",):
            names |= _assigned_in(body.get(key))
        if isinstance(body.get("try"), dict):
            names |= _assigned_in(body["try"].get("steps"))
        if isinstance(body.get("except"), dict):
            names |= _assigned_in(body["except"].get("steps"))
        if isinstance(body.get("for"), dict):
            names |= _assigned_in(body["for"].get("steps"))
        spec = body.get("parallel")
        if isinstance(spec, dict):
            for branch in spec.get("branches") or []:
                if isinstance(branch, dict):
                    for bbody in branch.values():
                        if isinstance(bbody, dict):
                            names |= _assigned_in(bbody.get("steps"))
            if isinstance(spec.get("for"), dict):
                names |= _assigned_in(spec["for"].get("steps"))
    else:  # nested steps and try blocks share the scope
        names |= _assigned_in(body.get("steps"), nested=False)
        if isinstance(body.get("try"), dict):
            names |= _assigned_in(body["try"].get("steps"), nested=False)
    return names


def _assigned_in(raw: Any, *, nested: bool = True) -> set[str]:
    names: set[str] = set()
    for entry in raw if isinstance(raw, list) else []:
        if isinstance(entry, dict) and len(entry) == 1:
            ((_name, body),) = entry.items()
            names |= _assigned(body, nested=nested)
    return names


def _check_calls(text: str, where: str, walk: _Walk) -> None:
    """Calls of standard-library functions take the arguments their pages document: a call
    with too few or too many is refused at deploy, as Google refuses it."""
    for node in _walk_nodes(parse_expression(text)):
        if isinstance(node, Call) and node.name in _SIGNATURES:
            try:
                _SIGNATURES[node.name].bind(*([None] * len(node.args)))
            except TypeError:
                walk.problems.append(
                    f"{where}: {node.name} takes {_arity(node.name)}, "
                    f"not {len(node.args)} argument(s)"
                )


def _check_call_step(call: str, args: Any, where: str, walk: _Walk) -> None:
    if "." not in call and call not in walk.definition.subworkflows and call not in walk.known:
        walk.problems.append(f"{where}: call to undefined subworkflow or function {call!r}")
        return
    if call in _SIGNATURES and call not in walk.definition.subworkflows:
        names = list(args) if isinstance(args, dict) else []
        try:
            _SIGNATURES[call].bind(**dict.fromkeys(map(str, names)))
        except TypeError:
            walk.problems.append(
                f"{where}: {call} takes the arguments {_arity(call)}, not {sorted(names)}"
            )


def _arity(name: str) -> str:
    params = list(_SIGNATURES[name].parameters.values())
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    optional = [p.name for p in params if p.default is not inspect.Parameter.empty]
    text = ", ".join(required) or "no argument"
    return text + (f" (optional: {', '.join(optional)})" if optional else "")


def _signatures() -> dict[str, inspect.Signature]:
    from localcloud.workflows.stdlib import standard_functions

    return {name: inspect.signature(fn) for name, fn in standard_functions().items()}


_SIGNATURES = _signatures()


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

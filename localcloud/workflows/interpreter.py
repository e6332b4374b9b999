"""Runs a parsed workflow: steps as a tree walked by coroutines, expressions by ``expr``.

Each execution is one asyncio task: a sleeping or waiting execution costs a task, not a
thread. Control flow follows the syntax reference: ``next`` jumps to a step of the same
subworkflow (``end``, ``break``, ``continue``), ``for`` and ``except`` variables are local
to their block, parallel branches see copies of the variables except the ``shared`` ones,
``try`` bodies are retried by a policy and their errors caught by ``except`` as maps.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from localcloud.workflows.definition import Definition, Step
from localcloud.workflows.expr import WorkflowError, evaluate, parse_expression, render

MAX_STEPS = 100_000
MAX_VARIABLES = 512 * 1024  # Google: "Maximum memory for variables: 512 KB"
CHECK_EVERY = 25  # steps between two measurements of the variables (bounded by the limit)
_EXPR = re.compile(r"^\$\{(.*)\}$", re.S)
_TARGET = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)|\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)|\s*\[")
Blocking = Callable[["Interpreter", dict[str, Any]], Awaitable[Any]]


class _Jump(Exception):
    def __init__(self, target: str) -> None:
        self.target = target


class _Return(Exception):
    def __init__(self, value: Any) -> None:
        self.value = value


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class RaisedError(WorkflowError):
    """A ``raise`` step: the raised value itself (a string or a map) is the error."""

    def __init__(self, raised: Any) -> None:
        message = raised.get("message", str(raised)) if isinstance(raised, dict) else str(raised)
        super().__init__(message)
        self.raised = raised

    @property
    def value(self) -> Any:
        return self.raised


class Scope(MutableMapping):
    """Variables of a subworkflow; a parallel branch's scope writes shared names through."""

    def __init__(
        self,
        local: dict[str, Any] | None = None,
        parent: Scope | None = None,
        shared: set[str] | None = None,
    ) -> None:
        self.local = local if local is not None else {}
        self.parent = parent
        self.shared = shared or set()

    def __getitem__(self, key: str) -> Any:
        if key in self.shared and self.parent is not None:
            return self.parent[key]
        if key in self.local:
            return self.local[key]
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self.shared and self.parent is not None:
            self.parent[key] = value
        else:
            self.local[key] = value

    def __delitem__(self, key: str) -> None:
        del self.local[key]

    def __iter__(self) -> Iterator[str]:
        yield from self.local
        if self.parent is not None:
            yield from (k for k in self.shared if k not in self.local)

    def __len__(self) -> int:
        return len(set(self))

    def __contains__(self, key: object) -> bool:
        return key in self.local or (
            self.parent is not None and key in self.shared and key in self.parent
        )


def _as_steps(raw: Any, cache: dict[int, list[Step]]) -> list[Step]:
    key = id(raw)
    if key not in cache:
        steps = []
        for item in raw or []:
            ((name, body),) = item.items()
            steps.append(
                Step(str(name), body, _as_steps(body["steps"], cache) if "steps" in body else [])
            )
        cache[key] = steps
    return cache[key]


class Interpreter:
    def __init__(
        self,
        definition: Definition,
        functions: dict[str, Callable[..., Any]],
        blocking: dict[str, Blocking],
        log: Callable[[str, Any], None],
    ) -> None:
        self.definition = definition
        self.functions = functions
        self.blocking = blocking
        self.log = log
        self.steps_run = 0
        self._cache: dict[int, list[Step]] = {}
        self.stack: list[str] = []
        self.failed_at: tuple[str, str] | None = None
        self.current: tuple[str, str] | None = None
        self.scopes: list[Scope] = []

    # -- entry ---------------------------------------------------------------------------
    async def run(self, argument: Any) -> Any:
        main = self.definition.main
        args = {}
        if main.params:
            args[main.params[0][0]] = argument
        return await self.call_subworkflow("main", args)

    async def call_subworkflow(self, name: str, args: dict[str, Any]) -> Any:
        sub = self.definition.subworkflows[name]
        scope = Scope()
        for pname, default, has_default in sub.params:
            if pname in args:
                scope[pname] = args[pname]
            elif has_default:
                scope[pname] = default
            else:
                raise WorkflowError(
                    f"subworkflow {name}: missing required argument {pname!r}", "TypeError"
                )
        unknown = set(args) - {p[0] for p in sub.params}
        if unknown and name != "main":
            raise WorkflowError(
                f"subworkflow {name}: unexpected arguments {sorted(unknown)}", "TypeError"
            )
        self.stack.append(name)
        self.scopes.append(scope)
        try:
            await self._run_list(sub.steps, scope)
        except _Return as ret:
            return ret.value
        except _Jump as jump:
            raise WorkflowError(f"next target {jump.target!r} not found", "SystemError") from None
        finally:
            self.stack.pop()
            self.scopes.remove(scope)
        return None

    def check_memory(self) -> None:
        """Variables of every live scope together stay under 512 KB, as in Google's limit."""
        total = 0
        for scope in self.scopes:
            total += size_of(scope.local, MAX_VARIABLES - total)
            if total > MAX_VARIABLES:
                raise WorkflowError(
                    f"the workflow's variables exceed the {MAX_VARIABLES // 1024} KB memory limit",
                    "ResourceLimitError",
                )

    # -- evaluation ----------------------------------------------------------------------
    def value(self, raw: Any, scope: Scope) -> Any:
        return render(raw, scope, self.functions)

    def expr(self, text: str, scope: Scope) -> Any:
        return evaluate(parse_expression(text), scope, self.functions)

    # -- steps ---------------------------------------------------------------------------
    async def _run_list(self, steps: list[Step], scope: Scope) -> None:
        positions = {s.name: i for i, s in enumerate(steps)}
        index = 0
        while index < len(steps):
            step = steps[index]
            try:
                target = await self._run_step(step, scope)
            except _Jump as jump:
                if jump.target in positions:
                    index = positions[jump.target]
                    continue
                raise
            if target is None:
                index += 1
            elif target == "end":
                raise _Return(None)
            elif target == "break":
                raise _Break()
            elif target == "continue":
                raise _Continue()
            elif target in positions:
                index = positions[target]
            else:
                raise _Jump(target)

    def _count(self, step: Step) -> None:
        self.steps_run += 1
        if self.steps_run > MAX_STEPS:
            raise WorkflowError(f"execution exceeded {MAX_STEPS} steps", "ResourceLimitError")
        if self.steps_run % CHECK_EVERY == 0:
            self.check_memory()
        self.current = (self.stack[-1] if self.stack else "main", step.name)

    async def _run_step(self, step: Step, scope: Scope) -> str | None:
        self._count(step)
        body = step.body
        try:
            return await self._body(step, body, scope)
        except WorkflowError:
            if self.failed_at is None:
                self.failed_at = (self.stack[-1] if self.stack else "main", step.name)
            raise

    async def _body(self, step: Step, body: dict[str, Any], scope: Scope) -> str | None:
        if "try" in body:
            return await self._try(step, body, scope)
        if "assign" in body:
            for item in body["assign"]:
                ((target, raw),) = item.items()
                self._assign(target, self.value(raw, scope), scope)
        if "call" in body:
            result = await self._call(body["call"], body.get("args") or {}, scope)
            if "result" in body:
                scope[body["result"]] = result
        if "switch" in body:
            for case in body["switch"]:
                if self._truthy(self.value(case["condition"], scope), step):
                    target = await self._case(step, case, scope)
                    if target is not None or "next" in case:
                        return target
                    break
        if "for" in body:
            return await self._for(step, body["for"], scope)
        if "parallel" in body:
            await self._parallel(step, body["parallel"], scope)
        if "steps" in body:
            await self._run_list(step.children, scope)
        if "raise" in body:
            raise RaisedError(self.value(body["raise"], scope))
        if "return" in body:
            raise _Return(self.value(body["return"], scope))
        return body.get("next")

    async def _case(self, step: Step, case: dict[str, Any], scope: Scope) -> str | None:
        inner = {k: v for k, v in case.items() if k != "condition"}
        if "steps" in inner:
            await self._run_list(_as_steps(inner.pop("steps"), self._cache), scope)
        if inner:
            return await self._body(step, inner, scope)
        return None

    @staticmethod
    def _truthy(value: Any, step: Step) -> bool:
        if not isinstance(value, bool):
            raise WorkflowError(
                f"step {step.name}: a condition must be a boolean, got {type(value).__name__}",
                "TypeError",
            )
        return value

    def _assign(self, target: str, value: Any, scope: Scope) -> None:
        """``a``, ``a.b``, ``a[expr]``, chains of them; missing map keys are created."""
        pos = 0
        path: list[Any] = []
        text = target.strip()
        while pos < len(text):
            match = _TARGET.match(text, pos)
            if match is None:
                raise WorkflowError(f"cannot assign to {target!r}", "SyntaxError")
            if match.group(1) and not path:
                path.append(match.group(1))
                pos = match.end()
            elif match.group(2):
                path.append(match.group(2))
                pos = match.end()
            else:
                depth, end = 1, match.end()
                while end < len(text) and depth:
                    depth += {"[": 1, "]": -1}.get(text[end], 0)
                    end += 1
                path.append(self.expr(text[match.end() : end - 1], scope))
                pos = end
        if len(path) == 1:
            scope[path[0]] = value
            return
        container = scope.get(path[0], None)
        if container is None:
            raise WorkflowError(f"variable {path[0]!r} is not defined", "KeyError")
        for key in path[1:-1]:
            container = self._child(container, key, target)
        last = path[-1]
        if isinstance(container, dict):
            container[str(last) if not isinstance(last, str) else last] = value
        elif isinstance(container, list) and isinstance(last, int):
            if not -len(container) <= last < len(container):
                raise WorkflowError(f"index {last} out of range in {target!r}", "IndexError")
            container[last] = value
        else:
            raise WorkflowError(
                f"cannot assign into {type(container).__name__} in {target!r}", "TypeError"
            )

    @staticmethod
    def _child(container: Any, key: Any, target: str) -> Any:
        if isinstance(container, dict):
            if key not in container:
                container[key] = {}
            return container[key]
        if isinstance(container, list) and isinstance(key, int):
            return container[key]
        raise WorkflowError(f"cannot index {type(container).__name__} in {target!r}", "TypeError")

    async def _call(self, name: str, raw_args: dict[str, Any], scope: Scope) -> Any:
        args = self.value(raw_args, scope) if raw_args else {}
        if name in self.definition.subworkflows:
            return await self.call_subworkflow(name, args)
        if name in self.blocking:
            return await self.blocking[name](self, args)
        function = self.functions.get(name)
        if function is not None:
            return function(**args) if isinstance(args, dict) else function(*args)
        raise WorkflowError(f"unknown function or subworkflow {name!r}", "SystemError")

    async def _for(self, step: Step, spec: dict[str, Any], scope: Scope) -> str | None:
        if "range" in spec:
            lo, hi = self.value(spec["range"], scope)
            items: Any = (
                range(int(lo), int(hi) + 1)
                if isinstance(lo, int) and isinstance(hi, int)
                else _frange(lo, hi)
            )
        else:
            items = self.value(spec["in"], scope)
            if isinstance(items, dict):
                items = list(items)
            if not isinstance(items, list):
                raise WorkflowError(
                    f"step {step.name}: for ... in needs a list, got {type(items).__name__}",
                    "TypeError",
                )
        body = _as_steps(spec["steps"], self._cache)
        before = set(scope.local)
        try:
            for i, item in enumerate(items):
                scope[spec["value"]] = item
                if "index" in spec:
                    scope[spec["index"]] = i
                try:
                    await self._run_list(body, scope)
                except _Continue:
                    continue
                except _Break:
                    break
        finally:
            for key in set(scope.local) - before:  # loop variables are local to the loop
                del scope.local[key]
        return step.body.get("next")

    async def _parallel(self, step: Step, spec: dict[str, Any], scope: Scope) -> None:
        shared = set(spec.get("shared") or [])
        for name in shared:
            if name not in scope:
                raise WorkflowError(
                    f"step {step.name}: shared variable {name!r} must be assigned before the parallel step",
                    "KeyError",
                )
        limit = spec.get("concurrency_limit")
        gate = asyncio.Semaphore(int(limit)) if limit else contextlib.nullcontext()
        continue_all = spec.get("exception_policy") == "continueAll"
        jobs: list[Callable[[Scope], Awaitable[None]]] = []
        if "branches" in spec:
            for branch in spec["branches"]:
                ((_bname, bbody),) = branch.items()
                steps = _as_steps(bbody["steps"], self._cache)

                async def run_branch(s: Scope, steps: list[Step] = steps) -> None:
                    await self._run_list(steps, s)

                jobs.append(run_branch)
            items: list[Any] = [None] * len(jobs)
        else:
            loop = spec["for"]
            if "in" in loop:
                values = self.value(loop["in"], scope)
            else:
                bounds = self.value(loop["range"], scope)
                values = range(bounds[0], bounds[1] + 1)
            body = _as_steps(loop["steps"], self._cache)
            items = list(values)

            async def iteration(s: Scope, body: list[Step] = body) -> None:
                with contextlib.suppress(_Continue):
                    await self._run_list(body, s)

            jobs = [iteration] * len(items)

        errors: list[dict[str, Any]] = []

        async def run(i: int) -> None:
            branch_scope = Scope(
                {k: _copy(v) for k, v in scope.items() if k not in shared},
                parent=scope,
                shared=shared,
            )
            if "for" in spec:
                branch_scope.local[spec["for"]["value"]] = items[i]
                if "index" in spec["for"]:
                    branch_scope.local[spec["for"]["index"]] = i
            async with gate:
                try:
                    await jobs[i](branch_scope)
                except WorkflowError as exc:
                    if not continue_all:
                        raise
                    errors.append(exc.value)

        tasks = [asyncio.create_task(run(i)) for i in range(len(jobs))]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        if errors:
            raise WorkflowError(
                f"{len(errors)} parallel branch(es) failed", "UnhandledBranchError", branches=errors
            )

    async def _try(self, step: Step, body: dict[str, Any], scope: Scope) -> str | None:
        inner = body["try"]
        policy = self._retry_policy(body.get("retry"), scope)
        attempt = 0
        delay = policy["initial_delay"] if policy else 0.0
        while True:
            try:
                if "steps" in inner:
                    await self._run_list(_as_steps(inner["steps"], self._cache), scope)
                    result = None
                else:
                    result = await self._body(step, inner, scope)
                return result if result is not None else body.get("next")
            except WorkflowError as exc:
                error = exc.value
                self.failed_at = None
                if (
                    policy
                    and attempt < policy["max_retries"]
                    and await self._should_retry(policy, error)
                ):
                    attempt += 1
                    await asyncio.sleep(delay)
                    delay = min(delay * policy["multiplier"], policy["max_delay"])
                    continue
                if "except" not in body:
                    raise
                handler = body["except"]
                before = set(scope.local)
                scope[handler.get("as", "e")] = error
                try:
                    await self._run_list(_as_steps(handler["steps"], self._cache), scope)
                finally:
                    for key in set(scope.local) - before:
                        del scope.local[key]
                return body.get("next")

    def _retry_policy(self, raw: Any, scope: Scope) -> dict[str, Any] | None:
        if raw is None:
            return None
        if isinstance(raw, str):
            match = _EXPR.match(raw)
            name = match.group(1).strip() if match else raw
            policy = BUILTIN_POLICIES.get(name)
            if policy is None:
                raise WorkflowError(f"unknown retry policy {raw!r}", "ValueError")
            return dict(policy)
        backoff = raw.get("backoff") or {}
        predicate = raw.get("predicate")
        match = _EXPR.match(predicate) if isinstance(predicate, str) else None
        return {
            "predicate": match.group(1).strip() if match else "retry.always",
            "max_retries": int(self.value(raw.get("max_retries", 0), scope)),
            "initial_delay": float(self.value(backoff.get("initial_delay", 1), scope)),
            "max_delay": float(self.value(backoff.get("max_delay", 60), scope)),
            "multiplier": float(self.value(backoff.get("multiplier", 1.25), scope)),
        }

    async def _should_retry(self, policy: dict[str, Any], error: dict[str, Any]) -> bool:
        name = policy["predicate"]
        if name in self.definition.subworkflows:
            sub = self.definition.subworkflows[name]
            answer = await self.call_subworkflow(
                name, {sub.params[0][0]: error} if sub.params else {}
            )
        elif name in self.functions:
            answer = self.functions[name](error)
        else:
            raise WorkflowError(f"unknown retry predicate {name!r}", "ValueError")
        return answer is True


def size_of(value: Any, budget: int) -> int:
    """Approximate JSON size of ``value``; stops counting once past ``budget``."""
    if isinstance(value, str | bytes):
        return len(value) + 2
    if isinstance(value, dict):
        total = 2
        for key, item in value.items():
            total += len(key) + 4 + size_of(item, budget - total)
            if total > budget:
                return total
        return total
    if isinstance(value, list):
        total = 2
        for item in value:
            total += 1 + size_of(item, budget - total)
            if total > budget:
                return total
        return total
    return 8


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _frange(lo: float, hi: float) -> Iterator[float]:
    value = lo
    while value <= hi:
        yield value
        value += 1


def retry_predicate(codes: set[int], tags: set[str]) -> Callable[[Any], bool]:
    def predicate(error: Any) -> bool:
        if not isinstance(error, dict):
            return False
        if error.get("code") in codes and "HttpError" in error.get("tags", []):
            return True
        return bool(tags & set(error.get("tags", [])))

    return predicate


DEFAULT_RETRY = retry_predicate(
    {429, 502, 503, 504}, {"ConnectionError", "ConnectionFailedError", "TimeoutError"}
)
NON_IDEMPOTENT = retry_predicate({429, 503}, {"ConnectionFailedError"})
BUILTIN_POLICIES = {
    "http.default_retry": {
        "predicate": "http.default_retry_predicate",
        "max_retries": 5,
        "initial_delay": 1.0,
        "max_delay": 60.0,
        "multiplier": 1.25,
    },
    "http.default_retry_non_idempotent": {
        "predicate": "http.default_retry_predicate_non_idempotent",
        "max_retries": 5,
        "initial_delay": 1.0,
        "max_delay": 60.0,
        "multiplier": 1.25,
    },
}

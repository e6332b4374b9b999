"""Runs a parsed workflow: steps as a tree walked by coroutines, expressions by ``expr``.

Each execution is one asyncio task: a sleeping or waiting execution costs a task, not a
thread. Control flow follows the syntax reference: ``next`` jumps to a step of the same
subworkflow (``end``, ``break``, ``continue``), ``for`` and ``except`` variables are local
to their block, parallel branches see copies of the variables except the ``shared`` ones,
``try`` bodies are retried by a policy and their errors caught by ``except`` as maps.

An execution survives a restart (``resume.py``): each task keeps a ``Cursor`` of where it
is, and a checkpoint saves them all with the variables just before every call that waits
(``sys.sleep``, ``http.*``, connectors) and at the first step boundary after it, and before
a retry's wait. Those are the only writes: a call's result is never lost, and the pure
steps between two calls are cheap to run again (Workflows' steps are deterministic but for
``sys.now`` and random values). A resumed execution makes the call in flight again; a sleep
or a retry's wait sleeps what remained of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from localcloud.workflows.definition import Definition, Step
from localcloud.workflows.expr import (
    WorkflowError,
    evaluate,
    is_number,
    parse_expression,
    render,
    type_name,
)
from localcloud.workflows.resume import FORMAT, Cursor, RestoreError, decode

MAX_STEPS = 100_000
# https://cloud.google.com/workflows/quotas (limits): subworkflow calls nest at most 20 deep
# (RecursionError, .../syntax/error-types: "the maximum call stack depth is exceeded"), and
# parallel steps at most 2 (ParallelNestingError: "the maximum depth that parallel steps can
# be nested is exceeded"). Per task: the branches of a parallel step each carry their own.
MAX_CALL_DEPTH = 20
MAX_PARALLEL_DEPTH = 2
_CALL_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("call_depth", default=0)
_PARALLEL_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("parallel", default=0)
MAX_VARIABLES = 512 * 1024  # Google: "Maximum memory for variables: 512 KB"
CHECK_EVERY = 25  # steps between two measurements of the variables (bounded by the limit)
_EXPR = re.compile(r"^\$\{(.*)\}$", re.S)
_TARGET = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)|\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)|\s*\[")
Blocking = Callable[["Interpreter", dict[str, Any]], Awaitable[Any]]
Save = Callable[[str], Awaitable[None]]
INSTANT = frozenset({"sys.log"})  # blocking calls that never wait: no checkpoint around them
# Where a resumed step body continues, by the kind of the next saved level: the parts of
# the body before it (an assignment before a call, say) already ran.
_RESUME_AT = {"call": 1, "sub": 1, "case": 2, "for": 3, "parallel": 4, "list": 5}


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
    """One execution's walk of its definition.

    ``saved`` is a checkpoint to resume from (as ``save`` was given it), ``save`` stores a
    checkpoint and returns once it is committed; without it nothing is saved.
    """

    def __init__(
        self,
        definition: Definition,
        functions: dict[str, Callable[..., Any]],
        blocking: dict[str, Blocking],
        log: Callable[[str, Any], None],
        *,
        saved: str | None = None,
        save: Save | None = None,
    ) -> None:
        self.definition = definition
        self.functions = functions
        self.blocking = blocking
        self.log = log
        self.steps_run = 0
        self._cache: dict[int, list[Step]] = {}
        self.failed_at: tuple[str, str] | None = None
        self.current: tuple[str, str] | None = None
        self.scopes: list[Scope] = []
        self.root = Cursor()
        if saved is not None:
            try:
                state = json.loads(saved)
                if state.get("format") != FORMAT:
                    raise RestoreError(
                        f"it was saved in format {state.get('format')!r}; this localcloud reads {FORMAT}"
                    )
                self.root = Cursor(state["root"])
                self.steps_run = int(state["steps"])
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                raise RestoreError(f"its saved state is unreadable ({exc!r})") from None
        self._save = save
        self._saving: asyncio.Task | None = None
        self._asked = 0  # checkpoints asked for, and (below) the last one committed
        self._saved = 0
        self._dirty = False  # a call ended since the last checkpoint

    # -- entry ---------------------------------------------------------------------------
    async def run(self, argument: Any) -> Any:
        main = self.definition.main
        args = {}
        if main.params:
            args[main.params[0][0]] = argument
        return await self.call_subworkflow("main", args, self.root)

    async def call_subworkflow(self, name: str, args: dict[str, Any], cursor: Cursor) -> Any:
        depth = _CALL_DEPTH.get()
        if depth >= MAX_CALL_DEPTH:
            raise WorkflowError(
                f"calling subworkflow {name!r} exceeds the maximum call stack depth of "
                f"{MAX_CALL_DEPTH}",
                "RecursionError",
            )
        token = _CALL_DEPTH.set(depth + 1)
        try:
            return await self._call_subworkflow(name, args, cursor)
        finally:
            _CALL_DEPTH.reset(token)

    async def _call_subworkflow(self, name: str, args: dict[str, Any], cursor: Cursor) -> Any:
        sub = self.definition.subworkflows[name]
        saved = cursor.take("sub", name=name)
        scope = Scope(decode(saved["vars"])) if saved is not None else self._bind(sub, name, args)
        self.scopes.append(scope)
        try:
            with cursor.inside({"kind": "sub", "name": name, "scope": scope}):
                await self._run_list(sub.steps, scope, cursor)
        except _Return as ret:
            return ret.value
        except _Jump as jump:
            raise WorkflowError(f"next target {jump.target!r} not found", "SystemError") from None
        finally:
            self.scopes.remove(scope)
        return None

    @staticmethod
    def _bind(sub: Any, name: str, args: dict[str, Any]) -> Scope:
        scope = Scope()
        for pname, default, has_default in sub.params:
            if pname in args:
                scope[pname] = _copy(args[pname])  # passed by value, like an assignment
            elif has_default:
                scope[pname] = _copy(default)  # the definition's own map is never handed out
            else:
                raise WorkflowError(
                    f"subworkflow {name}: missing required argument {pname!r}", "TypeError"
                )
        unknown = set(args) - {p[0] for p in sub.params}
        if unknown and name != "main":
            raise WorkflowError(
                f"subworkflow {name}: unexpected arguments {sorted(unknown)}", "TypeError"
            )
        return scope

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

    # -- checkpoints ---------------------------------------------------------------------
    def snapshot(self) -> str:
        """Every task's position and variables, as the JSON a resume starts from."""
        return json.dumps({"format": FORMAT, "steps": self.steps_run, "root": self.root.dump()})

    async def checkpoint(self, cursor: Cursor) -> None:
        """Save where the execution is, as seen by ``cursor``'s task; return once committed.

        Tasks asking at once share one write: each waits for a snapshot taken after it
        asked. Nothing is saved while ``cursor`` is still resuming (its saved state is
        the one on disk) or inside a retry predicate.
        """
        if self._save is None or cursor.pending or not cursor.saving:
            return
        self._asked += 1
        wanted = self._asked
        while self._saved < wanted:
            if self._saving is None or self._saving.done():
                self._saving = asyncio.get_running_loop().create_task(self._write())
            await asyncio.shield(self._saving)

    async def _write(self) -> None:
        covers = self._asked
        state = self.snapshot()  # taken now, in one go: no task moves meanwhile
        self._dirty = False
        if self._save is not None:
            await self._save(state)
        self._saved = covers

    async def close(self) -> None:
        """No more checkpoints; wait for the one being written (so none lands after the
        execution's final state)."""
        self._save = None
        if self._saving is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._saving)

    # -- evaluation ----------------------------------------------------------------------
    def value(self, raw: Any, scope: Scope) -> Any:
        return render(raw, scope, self.functions)

    def expr(self, text: str, scope: Scope) -> Any:
        return evaluate(parse_expression(text), scope, self.functions)

    # -- steps ---------------------------------------------------------------------------
    async def _run_list(self, steps: list[Step], scope: Scope, cursor: Cursor) -> None:
        positions = {s.name: i for i, s in enumerate(steps)}
        index = 0
        saved = cursor.take("list")
        if saved is not None:
            index = saved.get("i", -1)
            if not 0 <= index < len(steps) or steps[index].name != saved.get("step"):
                raise RestoreError(f"it was saved at step {saved.get('step')!r}, not found there")
        level: dict[str, Any] = {"kind": "list", "i": index, "step": ""}
        with cursor.inside(level):
            while index < len(steps):
                step = steps[index]
                level["i"], level["step"] = index, step.name
                try:
                    target = await self._run_step(step, scope, cursor)
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

    def _count(self, step: Step, cursor: Cursor) -> None:
        self.steps_run += 1
        if self.steps_run > MAX_STEPS:
            raise WorkflowError(f"execution exceeded {MAX_STEPS} steps", "ResourceLimitError")
        if self.steps_run % CHECK_EVERY == 0:
            self.check_memory()
        self.current = (cursor.routine, step.name)

    async def _run_step(self, step: Step, scope: Scope, cursor: Cursor) -> str | None:
        resuming = bool(cursor.pending)
        if resuming:  # counted before the checkpoint it resumes from
            self.current = (cursor.routine, step.name)
        else:
            self._count(step, cursor)
            if self._dirty and not self._waits(step.body):
                await self.checkpoint(cursor)  # what the last call returned is kept
        try:
            target = await self._body(step, step.body, scope, cursor)
        except WorkflowError:
            if self.failed_at is None:
                self.failed_at = (cursor.routine, step.name)
            raise
        if resuming and cursor.pending:
            raise RestoreError(f"its saved position inside step {step.name!r} is not there")
        return target

    def _waits(self, body: dict[str, Any]) -> bool:
        """Whether the step is a call that waits (which takes its own checkpoint)."""
        inner = body["try"] if isinstance(body.get("try"), dict) else body
        name = inner.get("call")
        return isinstance(name, str) and name in self.blocking and name not in INSTANT

    async def _body(
        self, step: Step, body: dict[str, Any], scope: Scope, cursor: Cursor
    ) -> str | None:
        if "try" in body:
            return await self._try(step, body, scope, cursor)
        start = _RESUME_AT.get(cursor.resuming or "", 0)
        if start <= 0 and "assign" in body:
            for item in body["assign"]:
                ((target, raw),) = item.items()
                self._assign(target, self.value(raw, scope), scope)
        if start <= 1 and "call" in body:
            result = await self._call(body["call"], body.get("args") or {}, scope, cursor)
            if "result" in body:
                scope[body["result"]] = _copy(result)
        if start <= 2 and "switch" in body:
            saved = cursor.take("case")
            chosen = saved["i"] if saved is not None else self._choose(step, body["switch"], scope)
            if chosen is not None:
                if not 0 <= chosen < len(body["switch"]):
                    raise RestoreError(f"it was saved in a case step {step.name!r} does not have")
                case = body["switch"][chosen]
                with cursor.inside({"kind": "case", "i": chosen}):
                    target = await self._case(step, case, scope, cursor)
                if target is not None or "next" in case:
                    return target
        if start <= 3 and "for" in body:
            return await self._for(step, body["for"], scope, cursor)
        if start <= 4 and "parallel" in body:
            await self._parallel(step, body["parallel"], scope, cursor)
        if "steps" in body:
            await self._run_list(step.children, scope, cursor)
        if "raise" in body:
            raise RaisedError(_copy(self.value(body["raise"], scope)))
        if "return" in body:
            raise _Return(self.value(body["return"], scope))
        return body.get("next")

    def _choose(self, step: Step, cases: list[dict[str, Any]], scope: Scope) -> int | None:
        """The index of the first case whose condition holds."""
        for i, case in enumerate(cases):
            if self._truthy(self.value(case["condition"], scope), step):
                return i
        return None

    async def _case(
        self, step: Step, case: dict[str, Any], scope: Scope, cursor: Cursor
    ) -> str | None:
        inner = {k: v for k, v in case.items() if k != "condition"}
        steps = inner.pop("steps", None)
        if steps is not None and cursor.resuming in (None, "list"):
            await self._run_list(_as_steps(steps, self._cache), scope, cursor)
        if inner:
            return await self._body(step, inner, scope, cursor)
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
        """``a``, ``a.b``, ``a[expr]``, chains of them; missing map keys are created.

        The value stored is a copy: https://cloud.google.com/workflows/docs/reference/syntax/variables
        ("Passing by value"): "When you assign one variable to another, you create a separate,
        independent copy of the variable's value instead of a reference", so changing a map or
        list through one name never shows through another.
        """
        value = _copy(value)
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

    async def _call(self, name: str, raw_args: dict[str, Any], scope: Scope, cursor: Cursor) -> Any:
        args = self.value(raw_args, scope) if raw_args else {}
        if name in self.definition.subworkflows:
            return await self.call_subworkflow(name, args, cursor)
        if name in self.blocking:
            if name in INSTANT:
                return await self.blocking[name](self, args)
            return await self._wait_for(name, args, cursor)
        function = self.functions.get(name)
        if function is not None:
            try:
                return function(**args) if isinstance(args, dict) else function(*args)
            except TypeError as exc:  # an argument name or count the function does not take
                detail = re.sub(r"^\w+\(\) ", "", str(exc))  # not the Python function's name
                raise WorkflowError(f"{name}: {detail}", "TypeError") from None
        raise WorkflowError(f"unknown function or subworkflow {name!r}", "SystemError")

    async def _wait_for(self, name: str, args: Any, cursor: Cursor) -> Any:
        """A call that waits, made once a checkpoint names it: after a restart it is made
        again, and a sleep sleeps what remained of it (its end is kept, in wall time)."""
        saved = cursor.take("call", name=name)
        level: dict[str, Any] = {"kind": "call", "name": name}
        seconds = args.get("seconds") if isinstance(args, dict) else None
        if name == "sys.sleep" and isinstance(seconds, int | float) and seconds >= 0:
            level["until"] = saved["until"] if saved is not None else time.time() + seconds
            args = {**args, "seconds": max(0.0, level["until"] - time.time())}
        with cursor.inside(level):
            if saved is None:
                await self.checkpoint(cursor)
            try:
                return await self.blocking[name](self, args)
            finally:
                self._dirty = True

    async def _for(
        self, step: Step, spec: dict[str, Any], scope: Scope, cursor: Cursor
    ) -> str | None:
        saved = cursor.take("for")
        level: dict[str, Any] = {"kind": "for", "i": 0}
        if saved is not None:
            level.update(i=saved["i"], before=saved["before"])
            if "range" in saved:
                level["range"] = saved["range"]
            else:
                level["items"] = decode(saved["items"])
        elif "range" in spec:
            level["range"] = self._loop_range(step, spec["range"], scope)
        else:
            # the loop walks the list as it was when it started
            level["items"] = _copy(self._loop_list(step, spec["in"], scope))
        if "range" in level:
            values: Any = _range_values(level["range"])
        else:
            values = level["items"]
        first = level["i"]
        before = set(level.setdefault("before", sorted(scope.local)))
        body = _as_steps(spec["steps"], self._cache)
        try:
            with cursor.inside(level):
                for i, item in itertools.islice(enumerate(values), first, None):
                    level["i"] = i
                    if saved is None or i != first:  # a resumed iteration has its variables
                        scope[spec["value"]] = item
                        if "index" in spec:
                            scope[spec["index"]] = i
                    try:
                        await self._run_list(body, scope, cursor)
                    except _Continue:
                        continue
                    except _Break:
                        break
        finally:
            for key in set(scope.local) - before:  # loop variables are local to the loop
                del scope.local[key]
        return step.body.get("next")

    def _loop_list(self, step: Step, raw: Any, scope: Scope) -> list[Any]:
        """What ``for: in:`` walks: a list (a map walks its keys, as ``keys()`` gives them)."""
        items = self.value(raw, scope)
        if isinstance(items, dict):
            items = list(items)
        if not isinstance(items, list):
            raise WorkflowError(
                f"step {step.name}: for ... in needs a list, got {type_name(items)}", "TypeError"
            )
        return items

    def _loop_range(self, step: Step, raw: Any, scope: Scope) -> list[Any]:
        """``for: range: [start, end]``: two numbers, both ends included (.../iteration)."""
        bounds = self.value(raw, scope)
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise WorkflowError(
                f"step {step.name}: for ... range needs a list [start, end], got "
                f"{type_name(bounds)}",
                "TypeError" if not isinstance(bounds, list) else "ValueError",
            )
        for bound in bounds:
            if not is_number(bound):
                raise WorkflowError(
                    f"step {step.name}: for ... range bounds must be numbers, got "
                    f"{type_name(bound)}",
                    "TypeError",
                )
        return bounds

    async def _parallel(
        self, step: Step, spec: dict[str, Any], scope: Scope, cursor: Cursor
    ) -> None:
        saved = cursor.take("parallel")
        shared = set(spec.get("shared") or [])
        for name in shared:
            if name not in scope:
                raise WorkflowError(
                    f"step {step.name}: shared variable {name!r} must be assigned before the parallel step",
                    "KeyError",
                )
        depth = _PARALLEL_DEPTH.get()
        if depth >= MAX_PARALLEL_DEPTH:
            raise WorkflowError(
                f"step {step.name}: parallel steps nest at most {MAX_PARALLEL_DEPTH} deep",
                "ParallelNestingError",
            )
        limit = spec.get("concurrency_limit")
        if limit is not None:
            limit = self.value(limit, scope)
            if not isinstance(limit, int) or isinstance(limit, bool):
                raise WorkflowError(
                    f"step {step.name}: concurrency_limit must be an integer, got "
                    f"{type_name(limit)}",
                    "TypeError",
                )
            if limit < 1:
                raise WorkflowError(
                    f"step {step.name}: concurrency_limit must be positive, got {limit}",
                    "ValueError",
                )
        gate = asyncio.Semaphore(limit) if limit else contextlib.nullcontext()
        jobs: list[Callable[[Scope, Cursor], Awaitable[None]]] = []
        if "branches" in spec:
            for branch in spec["branches"]:
                ((_bname, bbody),) = branch.items()
                steps = _as_steps(bbody["steps"], self._cache)

                async def run_branch(s: Scope, c: Cursor, steps: list[Step] = steps) -> None:
                    await self._run_list(steps, s, c)

                jobs.append(run_branch)
            items: list[Any] = [None] * len(jobs)
        else:
            loop = spec["for"]
            if saved is not None:
                items = decode(saved["items"])
            elif "in" in loop:
                items = self._loop_list(step, loop["in"], scope)
            else:
                items = list(_range_values(self._loop_range(step, loop["range"], scope)))
            body = _as_steps(loop["steps"], self._cache)

            async def iteration(s: Scope, c: Cursor, body: list[Step] = body) -> None:
                with contextlib.suppress(_Continue):
                    await self._run_list(body, s, c)

            jobs = [iteration] * len(items)

        # A branch that finished stays finished after a restart; one that ran resumes
        # where it was; one that had not started starts.
        done: set[int] = set(saved["done"]) if saved is not None else set()
        errors: list[Any] = decode(saved["errors"]) if saved is not None else []
        resumed = saved["branches"] if saved is not None else {}
        cursors = {
            i: Cursor(resumed.get(str(i)), routine=cursor.routine, saving=cursor.saving)
            for i in range(len(jobs))
            if i not in done
        }
        level: dict[str, Any] = {
            "kind": "parallel",
            "done": done,
            "errors": errors,
            "branches": cursors,
        }
        if "for" in spec:
            level["items"] = items

        async def run(i: int) -> None:
            branch = cursors[i]
            restored = branch.take("branch")
            if restored is not None:
                own = decode(restored["vars"])
            else:
                own = {k: _copy(v) for k, v in scope.items() if k not in shared}
                if "for" in spec:
                    own[spec["for"]["value"]] = _copy(items[i])
                    if "index" in spec["for"]:
                        own[spec["for"]["index"]] = i
            branch_scope = Scope(own, parent=scope, shared=shared)
            _PARALLEL_DEPTH.set(depth + 1)  # this task's own context: its branch only
            async with gate:
                # .../syntax/parallel-steps: "The default policy, continueAll, results in
                # no further action, and all other branches will attempt to run." The
                # errors are raised together once every branch has finished.
                try:
                    with branch.inside({"kind": "branch", "scope": branch_scope}):
                        await jobs[i](branch_scope, branch)
                except WorkflowError as exc:
                    errors.append(exc.value)
                done.add(i)

        with cursor.inside(level):
            tasks = [asyncio.create_task(run(i)) for i in cursors]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        if errors:
            # .../syntax/error-types: UnhandledBranchError, "one or more branches or
            # iterations encountered an unhandled runtime error"; the errors themselves are
            # kept under "branches", in the order the branches failed.
            raise WorkflowError(
                f"UnhandledBranchError: {len(errors)} parallel branch(es) or iteration(s) "
                "encountered an unhandled runtime error",
                "UnhandledBranchError",
                branches=errors,
            )

    async def _try(
        self, step: Step, body: dict[str, Any], scope: Scope, cursor: Cursor
    ) -> str | None:
        inner = body["try"]
        saved = cursor.take("try")
        if saved is not None:
            level = dict(saved)
        else:
            policy = self._retry_policy(body.get("retry"), scope)
            delay = policy["initial_delay"] if policy else 0.0
            level = {"kind": "try", "phase": "body", "attempt": 0, "delay": delay, "policy": policy}
        policy = level["policy"]
        with cursor.inside(level):
            while level["phase"] != "except":
                if level["phase"] == "wait":  # before a retry, until the saved time
                    await asyncio.sleep(max(0.0, level.pop("until") - time.time()))
                    level["phase"] = "body"
                try:
                    if "steps" in inner:
                        await self._run_list(_as_steps(inner["steps"], self._cache), scope, cursor)
                        result = None
                    else:
                        result = await self._body(step, inner, scope, cursor)
                    return result if result is not None else body.get("next")
                except WorkflowError as exc:
                    error = exc.value
                    self.failed_at = None
                    if (
                        policy
                        and level["attempt"] < policy["max_retries"]
                        and await self._should_retry(policy, error)
                    ):
                        level.update(
                            phase="wait",
                            attempt=level["attempt"] + 1,
                            until=time.time() + level["delay"],
                            delay=min(level["delay"] * policy["multiplier"], policy["max_delay"]),
                        )
                        await self.checkpoint(cursor)
                        continue
                    if "except" not in body:
                        raise
                    level.update(phase="except", before=sorted(scope.local))
                    scope[body["except"].get("as", "e")] = error
            before = set(level["before"])  # the handler's variable is local to it
            try:
                await self._run_list(_as_steps(body["except"]["steps"], self._cache), scope, cursor)
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

        def number(name: str, raw_value: Any, *, integer: bool = False) -> Any:
            """A policy's figure: a non-negative number (max_retries: an integer)."""
            value = self.value(raw_value, scope)
            wanted = "an integer" if integer else "a number"
            if not is_number(value) or (integer and not isinstance(value, int)):
                raise WorkflowError(
                    f"retry {name} must be {wanted}, got {type_name(value)}", "TypeError"
                )
            if value < 0:
                raise WorkflowError(f"retry {name} must not be negative, got {value}", "ValueError")
            return value if integer else float(value)

        return {
            "predicate": match.group(1).strip() if match else "retry.always",
            "max_retries": number("max_retries", raw.get("max_retries", 0), integer=True),
            "initial_delay": number("initial_delay", backoff.get("initial_delay", 1)),
            "max_delay": number("max_delay", backoff.get("max_delay", 60)),
            "multiplier": number("multiplier", backoff.get("multiplier", 1.25)),
        }

    async def _should_retry(self, policy: dict[str, Any], error: dict[str, Any]) -> bool:
        name = policy["predicate"]
        if name in self.definition.subworkflows:
            sub = self.definition.subworkflows[name]
            args = {sub.params[0][0]: error} if sub.params else {}
            # Run outside the saved tree: a restart during it repeats the judged attempt.
            answer = await self.call_subworkflow(name, args, Cursor(routine=name, saving=False))
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
    """A deep copy of a Workflows value (maps and lists; the rest is immutable)."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _range_values(bounds: list[Any]) -> Iterator[Any]:
    lo, hi = bounds
    if isinstance(lo, int) and isinstance(hi, int):
        return iter(range(lo, hi + 1))
    return _frange(lo, hi)


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

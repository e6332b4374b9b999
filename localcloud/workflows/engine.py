"""Workflows and executions: deploy-time validation, revisions, executions as tasks.

CreateExecution answers ACTIVE at once and the execution runs as an asyncio task; its
state, result or error are persisted when it ends, and where it is along the way (the
interpreter's checkpoints, ``resume.py``). An execution that was running when localcloud
stopped, killed or not, resumes at the next start from its last checkpoint, in the revision
it started with; one that cannot (its revision is gone, its state unreadable or of another
format) is marked FAILED with an error that says why. ``sys.log`` output goes to
localcloud's log with the execution's id.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import re
import secrets
import traceback
import uuid
from typing import Any

from google.cloud.workflows.executions_v1.types import Execution
from google.cloud.workflows_v1.types import OperationMetadata, Workflow
from google.protobuf import empty_pb2

from localcloud.core.clock import now
from localcloud.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from localcloud.core.names import parse_parent
from localcloud.core.projects import project_number
from localcloud.operations.store import OperationStore
from localcloud.workflows import definition
from localcloud.workflows.expr import WorkflowError
from localcloud.workflows.interpreter import Interpreter
from localcloud.workflows.resume import RestoreError
from localcloud.workflows.runtime import Runtime
from localcloud.workflows.store import ExecutionPb, WorkflowPb, WorkflowStore

LOG = logging.getLogger("localcloud.workflows.executions")
E = Execution.State
_WORKFLOW_ID = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
NOT_RESUMED = "localcloud stopped while this execution ran and cannot resume it: "
MAX_ARGUMENT = 32 * 1024
MAX_RESULT = 512 * 1024


class WorkflowsEngine:
    def __init__(self, store: WorkflowStore, operations: OperationStore, runtime: Runtime) -> None:
        self.store = store
        self.operations = operations
        self.runtime = runtime
        self.tasks: dict[str, asyncio.Task] = {}
        self.stopping = False
        self.running: dict[str, Interpreter] = {}
        self._parsed: dict[tuple[str, str], definition.Definition] = {}
        self.known = set(runtime.functions({})) | set(runtime.blocking(""))

    async def start(self) -> None:
        """Executions that were running go on from their last checkpoint."""
        saved, self.store.saved = self.store.saved, {}
        for execution in list(self.store.executions.values()):
            if execution.state not in (E.ACTIVE, E.QUEUED):
                continue
            workflow = execution.name.rsplit("/executions/", 1)[0]
            revision = self.store.revisions.get((workflow, execution.workflow_revision_id))
            state = saved.get(execution.name)
            try:
                if revision is None:
                    raise RestoreError(
                        f"revision {execution.workflow_revision_id} of its workflow is gone"
                    )
                if state is None:
                    raise RestoreError("an earlier localcloud, which saved no state, ran it")
                self._launch(execution, revision, state)
            except RestoreError as exc:
                self._fail(execution, NOT_RESUMED + str(exc))
                self._end(execution)
                await self.store.end_execution(execution)

    async def stop(self) -> None:
        self.stopping = True
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    # -- workflows -----------------------------------------------------------------------
    def validate(self, source: str) -> definition.Definition:
        try:
            return definition.parse(source, self.known)
        except definition.DefinitionError as exc:
            raise InvalidArgument("Workflow definition is invalid:\n" + str(exc)) from None

    def get(self, name: str, revision: str = "") -> Any:
        workflow = self.store.workflows.get(name)
        if workflow is None:
            raise NotFound(f"Resource '{name}' was not found")
        if revision and revision != workflow.revision_id:
            found = self.store.revisions.get((name, revision))
            if found is None:
                raise NotFound(f"Revision {revision} of {name} was not found")
            return found
        return workflow

    def list(self, parent: str) -> list[Any]:
        parse_parent(parent)
        return [
            w
            for n, w in sorted(self.store.workflows.items())
            if n.startswith(parent + "/workflows/")
        ]

    async def create(self, parent: str, request: Any, workflow_id: str) -> Any:
        parse_parent(parent)
        if not _WORKFLOW_ID.fullmatch(workflow_id):
            raise InvalidArgument(
                f"workflow_id {workflow_id!r} is invalid: letters, digits, '-' and '_', starting with a letter, at most 64"
            )
        name = f"{parent}/workflows/{workflow_id}"
        if name in self.store.workflows:
            raise AlreadyExists(f"Resource '{name}' already exists")
        self.validate(request.source_contents)
        workflow = WorkflowPb()
        workflow.CopyFrom(request)
        workflow.name = name
        workflow.state = Workflow.State.ACTIVE
        workflow.create_time.CopyFrom(now())
        workflow.update_time.CopyFrom(workflow.create_time)
        self._new_revision(workflow, 1)
        await self.store.put_workflow(workflow)
        return await self._done(workflow, "create")

    async def update(self, request: Any, mask: Any) -> Any:
        current = self.get(request.name)
        workflow = WorkflowPb()
        workflow.CopyFrom(current)
        paths = list(mask.paths) or [
            "source_contents",
            "description",
            "labels",
            "service_account",
            "user_env_vars",
            "call_log_level",
        ]
        for path in paths:
            if path not in (
                "source_contents",
                "description",
                "labels",
                "service_account",
                "user_env_vars",
                "call_log_level",
                "crypto_key_name",
                "execution_history_level",
            ):
                raise InvalidArgument(f"update_mask: {path} cannot be updated")
            workflow.ClearField(path)
            value = getattr(request, path)
            if path in ("labels", "user_env_vars"):
                getattr(workflow, path).update(value)
            else:
                setattr(workflow, path, value)
        if "source_contents" in paths:
            self.validate(workflow.source_contents)
        workflow.update_time.CopyFrom(now())
        if any(
            p in paths
            for p in ("source_contents", "service_account", "user_env_vars", "call_log_level")
        ):
            self._new_revision(workflow, int(current.revision_id.split("-")[0]) + 1)
        await self.store.put_workflow(workflow)
        return await self._done(workflow, "update")

    async def delete(self, name: str) -> Any:
        workflow = self.get(name)
        for task_name, task in list(self.tasks.items()):
            if task_name.startswith(name + "/executions/"):
                task.cancel()
        await self.store.delete_workflow(name)
        return await self._done(workflow, "delete", response=empty_pb2.Empty())

    @staticmethod
    def _new_revision(workflow: Any, number: int) -> None:
        workflow.revision_id = f"{number:06d}-{secrets.token_hex(2)[:3]}"
        workflow.revision_create_time.CopyFrom(now())

    async def _done(self, workflow: Any, verb: str, response: Any = None) -> Any:
        parent = workflow.name.rsplit("/workflows/", 1)[0]
        metadata = OperationMetadata.pb()(target=workflow.name, verb=verb, api_version="v1")
        metadata.create_time.CopyFrom(now())
        metadata.end_time.CopyFrom(metadata.create_time)
        done = workflow if response is None else response
        return await self.operations.create(parent, metadata, response=done)

    # -- executions ----------------------------------------------------------------------
    def get_execution(self, name: str) -> Any:
        execution = self.store.executions.get(name)
        if execution is None:
            raise NotFound(f"Resource '{name}' was not found")
        return self._with_status(execution)

    def _with_status(self, execution: Any) -> Any:
        """``execution`` with its current step, if it runs: the step is kept as plain values
        while running (cheap per step) and put into the proto only when someone asks."""
        interpreter = self.running.get(execution.name)
        if interpreter is not None and interpreter.current is not None:
            copy = type(execution)()
            copy.CopyFrom(execution)
            copy.status.current_steps.add(
                routine=interpreter.current[0], step=interpreter.current[1]
            )
            return copy
        return execution

    def list_executions(self, parent: str) -> builtins.list[Any]:
        """Newest first, each as GetExecution shows it (a ``stepName`` filter reads the
        current step, and the FULL view shows it)."""
        self.get(parent)
        found = self.store.executions.children(parent)
        found.sort(key=lambda e: e.start_time.ToNanoseconds(), reverse=True)
        return [self._with_status(e) for e in found]

    async def create_execution(self, parent: str, request: Any) -> Any:
        workflow = self.get(parent)
        if len(request.argument.encode()) > MAX_ARGUMENT:
            raise InvalidArgument(f"execution argument exceeds {MAX_ARGUMENT // 1024} KB")
        try:
            argument = json.loads(request.argument) if request.argument else None
        except ValueError as exc:
            raise InvalidArgument(f"execution argument is not valid JSON: {exc}") from None
        execution = ExecutionPb()
        execution.CopyFrom(request)
        execution.name = f"{parent}/executions/{uuid.uuid4()}"
        execution.state = E.ACTIVE
        execution.start_time.CopyFrom(now())
        execution.workflow_revision_id = workflow.revision_id
        if not execution.call_log_level:
            execution.call_log_level = workflow.call_log_level
        interpreter = self._interpreter(execution, workflow, None)
        await self.store.begin_execution(execution, interpreter.snapshot())
        self._start_task(execution, interpreter, argument)
        return execution

    async def cancel_execution(self, name: str) -> Any:
        execution = self.get_execution(name)
        if execution.state != E.ACTIVE:
            raise FailedPrecondition(
                f"Execution {name.rsplit('/', 1)[-1]} is not active; it cannot be cancelled"
            )
        task = self.tasks.get(name)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return self.get_execution(name)

    def _env(self, workflow: Any, execution: Any) -> dict[str, str]:
        parts = workflow.name.split("/")
        env = {
            "GOOGLE_CLOUD_PROJECT_ID": parts[1],
            "GOOGLE_CLOUD_PROJECT_NUMBER": project_number(parts[1]),
            "GOOGLE_CLOUD_LOCATION": parts[3],
            "GOOGLE_CLOUD_WORKFLOW_ID": parts[5],
            "GOOGLE_CLOUD_WORKFLOW_REVISION_ID": workflow.revision_id,
            "GOOGLE_CLOUD_WORKFLOW_EXECUTION_ID": execution.name.rsplit("/", 1)[-1],
            "GOOGLE_CLOUD_WORKFLOW_EXECUTION_ATTEMPT": "1",
        }
        env.update(workflow.user_env_vars)
        return env

    def _launch(self, execution: Any, workflow: Any, saved: str) -> None:
        """Run an execution again from its saved state (RestoreError if it cannot)."""
        try:
            interpreter = self._interpreter(execution, workflow, saved)
        except definition.DefinitionError as exc:  # a later localcloud checks more
            raise RestoreError(f"its workflow's source is no longer valid: {exc}") from None
        try:
            argument = json.loads(execution.argument) if execution.argument else None
        except ValueError as exc:
            raise RestoreError(f"its argument is not JSON: {exc}") from None
        self._start_task(execution, interpreter, argument)

    def _interpreter(self, execution: Any, workflow: Any, saved: str | None) -> Interpreter:
        exec_id = execution.name.rsplit("/", 1)[-1]
        account = (
            workflow.service_account.rsplit("/", 1)[-1]
            or f"workflows@{workflow.name.split('/')[1]}.iam.gserviceaccount.com"
        )

        def log(severity: str, value: Any) -> None:
            LOG.info(
                "[%s %s] %s: %s",
                workflow.name.rsplit("/", 1)[-1],
                exec_id,
                severity,
                value if isinstance(value, str) else json.dumps(value),
            )

        def save(state: str) -> Any:
            return self.store.save_state(execution.name, state)

        key = (workflow.name, workflow.revision_id)
        parsed = self._parsed.get(key)
        if parsed is None:
            parsed = self._parsed[key] = definition.parse(workflow.source_contents, self.known)
        return Interpreter(
            parsed,
            self.runtime.functions(self._env(workflow, execution)),
            self.runtime.blocking(account, account if workflow.service_account else ""),
            log,
            saved=saved,
            save=save,
        )

    def _start_task(self, execution: Any, interpreter: Interpreter, argument: Any) -> None:
        self.running[execution.name] = interpreter
        self.tasks[execution.name] = asyncio.get_running_loop().create_task(
            self._run(execution, interpreter, argument), name=f"execution {execution.name}"
        )

    async def _run(self, execution: Any, interpreter: Interpreter, argument: Any) -> None:
        exec_id = execution.name.rsplit("/", 1)[-1]
        try:
            result = await interpreter.run(argument)
            text = json.dumps(result)
            if len(text.encode()) > MAX_RESULT:
                raise WorkflowError(f"result exceeds {MAX_RESULT // 1024} KB", "ResourceLimitError")
            execution.result = text
            execution.state = E.SUCCEEDED
        except asyncio.CancelledError:
            if self.stopping:  # not cancelled by anyone: the server is going away
                await interpreter.close()  # it stays ACTIVE, to resume at the next start
                return
            execution.state = E.CANCELLED
        except WorkflowError as exc:
            execution.state = E.FAILED
            value = exc.value
            execution.error.payload = json.dumps(value, default=str)
            routine, step = interpreter.failed_at or ("main", "")
            execution.error.context = f'RuntimeError: {exc}\nin step "{step}", routine "{routine}"'
            execution.error.stack_trace.elements.add(step=step, routine=routine)
        except RestoreError as exc:
            self._fail(execution, NOT_RESUMED + str(exc))
        except Exception as exc:
            LOG.error("execution %s failed internally:\n%s", exec_id, traceback.format_exc())
            self._fail(execution, f"internal error: {exc}")
        await interpreter.close()
        self._end(execution)
        self.running.pop(execution.name, None)
        await asyncio.shield(self.store.end_execution(execution))
        self.tasks.pop(execution.name, None)

    @staticmethod
    def _fail(execution: Any, message: str) -> None:
        execution.state = E.FAILED
        execution.error.payload = json.dumps({"message": message, "tags": ["SystemError"]})

    @staticmethod
    def _end(execution: Any) -> None:
        execution.end_time.CopyFrom(now())
        execution.duration.FromNanoseconds(
            execution.end_time.ToNanoseconds() - execution.start_time.ToNanoseconds()
        )

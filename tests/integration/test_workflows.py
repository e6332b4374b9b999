"""Cloud Workflows through the official clients: the API, and a conformance set of workflows
from Google's syntax reference with their documented results.

Pages: https://cloud.google.com/workflows/docs/reference/syntax (steps, switch, iteration,
parallel-steps, catching-errors, retrying, subworkflows, environment-variables).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from google.api_core import exceptions
from google.cloud.workflows import executions_v1
from google.cloud.workflows_v1 import types as wf

from localcloud.core.oidc import Issuer
from localcloud.testing import wait_for
from orchestrator.clients import Clients, Environment

PARENT = "projects/local-project/locations/us-central1"
State = executions_v1.Execution.State


@pytest.fixture(scope="module")
def clients(localcloud) -> Clients:
    return Clients(Environment.from_env(localcloud.env))


@pytest.fixture
def deploy(clients):
    made: list[str] = []

    def make(source: str, **fields) -> wf.Workflow:
        workflow = clients.workflows.create_workflow(
            parent=PARENT,
            workflow_id=f"wf-{uuid.uuid4().hex[:8]}",
            workflow=wf.Workflow(source_contents=source, **fields),
        ).result(timeout=30)
        made.append(workflow.name)
        return workflow

    yield make
    for name in made:
        with contextlib.suppress(exceptions.NotFound):
            clients.workflows.delete_workflow(name=name).result(timeout=30)


def reply_json(handler: BaseHTTPRequestHandler, value) -> None:
    """Answer 200 with ``value`` as JSON (to nobody, if the caller is gone)."""
    body = json.dumps(value).encode()
    with contextlib.suppress(OSError):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


def run(clients, workflow: wf.Workflow, argument=None, timeout: float = 30):
    execution = clients.executions.create_execution(
        parent=workflow.name,
        execution=executions_v1.Execution(
            argument=json.dumps(argument) if argument is not None else ""
        ),
    )
    assert execution.state == State.ACTIVE

    def ended():
        current = clients.executions.get_execution(name=execution.name)
        return current if current.state != State.ACTIVE else None

    return wait_for(ended, timeout, "the execution to end")


def current_steps(clients, name: str) -> list[tuple[str, str]]:
    execution = clients.executions.get_execution(name=name)
    return [(s.routine, s.step) for s in execution.status.current_steps]


CONFORMANCE = [
    (
        "assign and return (syntax/steps)",
        """
main:
  steps:
    - init:
        assign:
          - number: 5
          - number_plus_one: ${number + 1}
          - other_number: 10
          - string: "hello"
    - last:
        return: ${string + " " + string(number_plus_one + other_number)}
""",
        None,
        "hello 16",
    ),
    (
        "params and maps (syntax/runtime-arguments)",
        """
main:
  params: [args]
  steps:
    - build:
        assign:
          - out: {}
          - out.name: ${args.firstName + " " + args.lastName}
          - out["count"]: ${len(args.items)}
    - done:
        return: ${out}
""",
        {"firstName": "Ada", "lastName": "Lovelace", "items": [1, 2, 3]},
        {"name": "Ada Lovelace", "count": 3},
    ),
    (
        "switch with next (syntax/conditions)",
        """
- first:
    assign:
      - value: 20
- check:
    switch:
      - condition: ${value < 10}
        next: small
      - condition: ${value < 100}
        next: medium
    next: large
- small:
    return: "small"
- medium:
    return: "medium"
- large:
    return: "large"
""",
        None,
        "medium",
    ),
    (
        "for in, break and continue (syntax/iteration)",
        """
main:
  steps:
    - init:
        assign:
          - total: 0
    - loop:
        for:
          value: v
          in: [1, 2, 3, 4, 5, 6]
          steps:
            - skip_odd:
                switch:
                  - condition: ${v % 2 == 1}
                    next: continue
            - stop_at_six:
                switch:
                  - condition: ${v == 6}
                    next: break
            - add:
                assign:
                  - total: ${total + v}
    - done:
        return: ${total}
""",
        None,
        6,
    ),
    (
        "for range with index is inclusive (syntax/iteration)",
        """
main:
  steps:
    - init:
        assign:
          - seen: []
    - loop:
        for:
          value: v
          index: i
          range: [1, 3]
          steps:
            - add:
                assign:
                  - seen: ${list.concat(seen, v * 10 + i)}
    - done:
        return: ${seen}
""",
        None,
        [10, 21, 32],
    ),
    (
        "subworkflow with a default param (syntax/subworkflows)",
        """
main:
  steps:
    - call_it:
        call: greet
        args:
          first: "Ada"
        result: text
    - done:
        return: ${text}
greet:
  params: [first, last: "Lovelace"]
  steps:
    - make:
        return: ${first + " " + last}
""",
        None,
        "Ada Lovelace",
    ),
    (
        "raise and except a map (syntax/catching-errors)",
        """
main:
  steps:
    - guarded:
        try:
          steps:
            - boom:
                raise:
                  code: 55
                  message: "Something went wrong."
        except:
          as: e
          steps:
            - handle:
                return: '${"caught " + string(e.code) + ": " + e.message}'
""",
        None,
        "caught 55: Something went wrong.",
    ),
    (
        "retry with a custom predicate (syntax/retrying)",
        """
main:
  steps:
    - init:
        assign:
          - attempts: 0
    - flaky:
        try:
          steps:
            - count:
                assign:
                  - attempts: ${attempts + 1}
            - fail_twice:
                switch:
                  - condition: ${attempts < 3}
                    raise: "transient"
        retry:
          predicate: ${always_retry}
          max_retries: 5
          backoff:
            initial_delay: 0.01
            max_delay: 0.05
            multiplier: 2
    - done:
        return: ${attempts}
always_retry:
  params: [e]
  steps:
    - yes:
        return: true
""",
        None,
        3,
    ),
    (
        "parallel branches with a shared variable (syntax/parallel-steps)",
        """
main:
  steps:
    - init:
        assign:
          - results: {}
    - work:
        parallel:
          shared: [results]
          branches:
            - one:
                steps:
                  - a:
                      assign:
                        - results.one: 1
            - two:
                steps:
                  - b:
                      assign:
                        - results.two: 2
    - done:
        return: ${results}
""",
        None,
        {"one": 1, "two": 2},
    ),
    (
        "built-in environment variables (syntax/environment-variables)",
        """
main:
  steps:
    - done:
        return: ${sys.get_env("GOOGLE_CLOUD_LOCATION") + "/" + sys.get_env("GREETING")}
""",
        None,
        "us-central1/hi",
    ),
]


@pytest.mark.parametrize(
    ("title", "source", "argument", "expected"), CONFORMANCE, ids=[c[0] for c in CONFORMANCE]
)
def test_conformance(clients, deploy, title, source, argument, expected):
    workflow = deploy(source, user_env_vars={"GREETING": "hi"})
    execution = run(clients, workflow, argument)
    assert execution.state == State.SUCCEEDED, execution.error.payload
    assert json.loads(execution.result) == expected


def test_unhandled_error_fails_with_googles_error_shape(clients, deploy):
    workflow = deploy("""
main:
  steps:
    - first:
        assign:
          - x: 1
    - explode:
        raise:
          message: "no luck"
          code: 7
""")
    execution = run(clients, workflow)
    assert execution.state == State.FAILED
    assert json.loads(execution.error.payload) == {"message": "no luck", "code": 7}
    assert execution.error.stack_trace.elements[0].step == "explode"
    assert execution.error.stack_trace.elements[0].routine == "main"


def test_deploy_time_validation_reports_every_problem(clients):
    source = """
main:
  steps:
    - one:
        asign:
          - x: 1
    - two:
        next: nowhere
    - three:
        call: undefined_subworkflow
    - four:
        return: ${1 +}
"""
    with pytest.raises(exceptions.InvalidArgument) as failure:
        clients.workflows.create_workflow(
            parent=PARENT,
            workflow_id=f"bad-{uuid.uuid4().hex[:6]}",
            workflow=wf.Workflow(source_contents=source),
        )
    message = str(failure.value)
    for fragment in ("main.one", "asign", "nowhere", "undefined_subworkflow", "main.four"):
        assert fragment in message


def test_workflow_api_revisions(clients, deploy):
    workflow = deploy("- a:\n    return: 1\n")
    assert workflow.state == wf.Workflow.State.ACTIVE
    assert workflow.revision_id.startswith("000001-")
    workflow.source_contents = "- a:\n    return: 2\n"
    updated = clients.workflows.update_workflow(workflow=workflow).result(timeout=30)
    assert updated.revision_id.startswith("000002-")
    assert json.loads(run(clients, updated).result) == 2
    names = {w.name for w in clients.workflows.list_workflows(parent=PARENT)}
    assert workflow.name in names


def test_http_post_with_oidc_reaches_a_server_that_checks_the_token(localcloud, clients, deploy):
    seen: list[dict] = []
    issuer = Issuer(localcloud.config.data_dir / "oidc", localcloud.config.http_url)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            token = self.headers.get("Authorization", "").removeprefix("Bearer ")
            claims = issuer.verify(token, audience=url)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"claims": claims, "body": body})
            reply_json(self, {"echo": body["n"] * 2})

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    url = f"http://127.0.0.1:{server.server_address[1]}/double"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        workflow = deploy(
            f"""
main:
  steps:
    - call_it:
        call: http.post
        args:
          url: {url}
          body:
            n: 21
          auth:
            type: OIDC
        result: response
    - done:
        return: ${{response.body.echo}}
""",
            service_account="projects/local-project/serviceAccounts/orchestrator@local-project.iam.gserviceaccount.com",
        )
        execution = run(clients, workflow)
        assert execution.state == State.SUCCEEDED, execution.error.payload
        assert json.loads(execution.result) == 42
        assert seen[0]["claims"]["email"] == "orchestrator@local-project.iam.gserviceaccount.com"
    finally:
        server.shutdown()


def test_pubsub_connector_publishes(clients, deploy, local_target, local_topic, local_subscription):
    topic = local_topic()
    sub = local_subscription(topic)
    workflow = deploy(f"""
main:
  steps:
    - publish:
        call: googleapis.pubsub.v1.projects.topics.publish
        args:
          topic: {topic}
          body:
            messages:
              - data: ${{base64.encode(text.encode("step done"))}}
                attributes:
                  step: build
        result: published
    - done:
        return: ${{published.messageIds}}
""")
    execution = run(clients, workflow)
    assert execution.state == State.SUCCEEDED, execution.error.payload
    got = local_target.subscriber.pull(
        request={"subscription": sub, "max_messages": 1}, timeout=10
    ).received_messages
    assert got[0].message.data == b"step done"
    assert json.loads(execution.result) == [got[0].message.message_id]


def test_pubsub_connector_keeps_pubsubs_limits(clients, deploy, local_topic):
    """A workflow publishes through the same checks as a gRPC client: an attribute value
    over 1,024 bytes is Google's INVALID_ARGUMENT, an HttpError 400 in the workflow, and a
    topic name that is not one is refused before any lookup."""
    topic = local_topic()
    workflow = deploy("""
main:
  params: [args]
  steps:
    - publish:
        try:
          call: googleapis.pubsub.v1.projects.topics.publish
          args:
            topic: ${args.topic}
            body:
              messages:
                - data: ${base64.encode(text.encode("x"))}
                  attributes:
                    big: ${args.value}
        except:
          as: e
          steps:
            - caught:
                return: ${[e.code, e.message]}
    - done:
        return: "published"
""")
    for target, value, words in (
        (topic, "v" * 1025, "exceeds 1024 bytes"),
        ("topics/not-a-full-name", "v", "topic"),
    ):
        execution = run(clients, workflow, {"topic": target, "value": value})
        assert execution.state == State.SUCCEEDED, execution.error.payload
        code, message = json.loads(execution.result)
        assert code == 400
        assert words in message


def test_many_sleeping_executions_run_concurrently_and_cancel(clients, deploy):
    """199 executions asleep for an hour leave room for a 200th to sleep a second and end:
    executions are tasks, not threads or the slots of a pool. Cancelling ends each."""
    workflow = deploy("""
main:
  params: [args]
  steps:
    - nap:
        call: sys.sleep
        args:
          seconds: ${args.seconds}
    - done:
        return: "rested"
""")
    sleepers = [
        clients.executions.create_execution(
            parent=workflow.name, execution=executions_v1.Execution(argument='{"seconds": 3600}')
        ).name
        for _ in range(199)
    ]
    try:
        wait_for(
            lambda: all(current_steps(clients, name) == [("main", "nap")] for name in sleepers),
            30,
            "all 199 executions to be asleep",
        )
        last = run(clients, workflow, {"seconds": 1})
        assert last.state == State.SUCCEEDED and json.loads(last.result) == "rested"
    finally:
        cancelled = [clients.executions.cancel_execution(name=name) for name in sleepers]
    assert {c.state for c in cancelled} == {State.CANCELLED}


SLEEPER = """
main:
  params: [args]
  steps:
    - before:
        assign:
          - started: ${sys.now()}
    - say:
        call: sys.log
        args:
          text: ${"sleeping " + string(args.seconds)}
    - nap:
        call: sys.sleep
        args:
          seconds: ${args.seconds}
    - after:
        assign:
          - slept: ${sys.now() - started}
    - done:
        return:
          started: ${started}
          slept: ${slept}
"""
CALLER = """
main:
  params: [args]
  steps:
    - first:
        call: http.post
        args:
          url: ${args.url + "/first"}
        result: one
    - second:
        call: http.post
        args:
          url: ${args.url + "/second"}
        result: two
    - done:
        return: ${[one.body, two.body]}
"""


class Counting(ThreadingHTTPServer):
    """Counts the calls to each path; the first call to /second hangs until ``release``
    (it is in flight when localcloud is killed)."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.hanging = threading.Event()
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                n = server.calls[self.path] = server.calls.get(self.path, 0) + 1
                if self.path == "/second" and n == 1:
                    server.hanging.set()
                    server.release.wait(120)
                reply_json(self, {"path": self.path, "call": n})  # the caller may be dead

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def poll(read, done, timeout: float = 60, what: str = "the condition"):
    """``read()`` until ``done(value)``; the last value."""
    box: list = []

    def check():
        box[:] = [read()]
        return done(box[0])

    wait_for(check, timeout, what)
    return box[0]


@pytest.mark.slow
def test_executions_running_when_localcloud_dies_resume_after_the_restart(tmp_path):
    """SIGKILL during a sleep and during an HTTP call: after the restart each execution goes
    on from where it was and succeeds. The call that had completed is not made again, the
    one in flight is; the sleep keeps its variables (``started``, from before the kill). One
    whose saved state is of another format fails, saying so. A graceful restart resumes
    too, and ``sys.log`` reaches the log."""
    import sqlite3

    from localcloud import testing

    server = Counting()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    instance = testing.start(tmp_path / "data")
    try:
        clients = Clients(Environment.from_env(instance.env))

        def deploy_own(workflow_id: str, source: str) -> str:
            return (
                clients.workflows.create_workflow(
                    parent=PARENT,
                    workflow_id=workflow_id,
                    workflow=wf.Workflow(source_contents=source),
                )
                .result(timeout=30)
                .name
            )

        def start(workflow: str, argument: dict) -> str:
            return clients.executions.create_execution(
                parent=workflow, execution=executions_v1.Execution(argument=json.dumps(argument))
            ).name

        def at_step(name: str, step: str) -> None:
            poll(
                lambda: [s.step for s in get(name).status.current_steps],
                lambda steps: steps == [step],
                what=f"step {step}",
            )

        def get(name: str):
            return clients.executions.get_execution(name=name)

        sleeper, caller = deploy_own("sleeper", SLEEPER), deploy_own("caller", CALLER)
        sleeping = start(sleeper, {"seconds": 4})
        calling = start(caller, {"url": server.url})
        unreadable = start(sleeper, {"seconds": 60})
        at_step(sleeping, "nap")
        at_step(unreadable, "nap")
        assert server.hanging.wait(30), "the second call was never made"
        killed_at = time.time()
        instance.kill()
        server.release.set()
        # A state this localcloud cannot read (what an older or newer format would be).
        with contextlib.closing(sqlite3.connect(instance.config.data_dir / "localcloud.db")) as db:
            db.execute(
                "UPDATE workflow_execution_states SET state=? WHERE execution=?",
                ('{"format": 0}', unreadable),
            )
            db.commit()

        instance = testing.start(instance.config.data_dir, config=instance.config)
        clients = Clients(Environment.from_env(instance.env))
        ended = {
            name: poll(lambda n=name: get(n), lambda e: e.state != State.ACTIVE, what="the end")
            for name in (sleeping, calling, unreadable)
        }
        assert ended[sleeping].state == State.SUCCEEDED, ended[sleeping].error.payload
        slept = json.loads(ended[sleeping].result)
        assert slept["started"] < killed_at, "the execution started over"
        assert slept["slept"] >= 4
        assert ended[calling].state == State.SUCCEEDED, ended[calling].error.payload
        assert json.loads(ended[calling].result) == [
            {"path": "/first", "call": 1},
            {"path": "/second", "call": 2},
        ]
        assert server.calls == {"/first": 1, "/second": 2}
        assert ended[unreadable].state == State.FAILED
        error = json.loads(ended[unreadable].error.payload)
        assert "cannot resume it" in error["message"]
        assert "format 0" in error["message"]

        napping = start(sleeper, {"seconds": 2})
        at_step(napping, "nap")
        stopped_at = time.time()
        instance = instance.restart()  # SIGTERM, then start again
        clients = Clients(Environment.from_env(instance.env))
        resumed = poll(lambda: get(napping), lambda e: e.state != State.ACTIVE, what="the end")
        assert resumed.state == State.SUCCEEDED, resumed.error.payload
        assert json.loads(resumed.result)["started"] < stopped_at
        assert "sleeping 4" in instance.log_path.read_text()
    finally:
        instance.stop()
        server.shutdown()


def test_variables_over_512_kb_fail_with_resource_limit_error(clients, deploy):
    """Google: "Maximum memory for variables: 512 KB"; exceeding it is a ResourceLimitError."""
    workflow = deploy("""
main:
  steps:
    - init:
        assign:
          - chunk: "0123456789012345678901234567890123456789012345678901234567890123"
          - big: ""
    - grow:
        for:
          value: i
          range: [1, 20000]
          steps:
            - add:
                assign:
                  - big: ${big + chunk}
    - done:
        return: ${len(big)}
""")
    execution = run(clients, workflow, timeout=60)
    assert execution.state == State.FAILED
    assert "ResourceLimitError" in json.loads(execution.error.payload)["tags"]

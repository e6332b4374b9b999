"""The Executions API's views, filters, order and pages, through the official client.

Google's rules (https://cloud.google.com/workflows/docs/reference/executions/rest/v1/):
``ExecutionView`` BASIC returns only name, start_time, end_time, duration, state and
workflow_revision_id, FULL everything; GetExecution defaults to FULL, ListExecutions to
BASIC. ListExecutions filters (AIP-160) on executionId, state, createTime, startTime,
endTime, duration, workflowRevisionId, stepName and labels; orders (AIP-132) by
executionId, state, createTime, startTime, endTime, duration and workflowRevisionId,
newest first by default; pages hold 100 by default, at most 1000 in BASIC and 100 in FULL.
What it cannot do with a filter or an order it refuses with INVALID_ARGUMENT.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from google.api_core import exceptions
from google.cloud.workflows import executions_v1
from google.cloud.workflows_v1 import types as wf

from localcloud.testing import wait_for
from orchestrator.clients import Clients, Environment

PARENT = "projects/local-project/locations/us-central1"
State = executions_v1.Execution.State
View = executions_v1.ExecutionView
# Succeeds with args.n, fails when asked, or sleeps in step "nap" first.
ROUTER = """
main:
  params: [args]
  steps:
    - route:
        switch:
          - condition: ${args.fail}
            next: fail
          - condition: ${args.sleep > 0}
            next: nap
        next: done
    - nap:
        call: sys.sleep
        args:
          seconds: ${args.sleep}
        next: done
    - fail:
        raise: "asked to fail"
    - done:
        return: ${args.n}
"""


@dataclass
class Made:
    workflow: str
    ok: executions_v1.Execution  # SUCCEEDED, labels team=a
    bad: executions_v1.Execution  # FAILED, labels team=b
    asleep: executions_v1.Execution  # ACTIVE in step nap, labels team=a, tier=gold


@pytest.fixture(scope="module")
def clients(localcloud) -> Clients:
    return Clients(Environment.from_env(localcloud.env))


def _workflow(clients: Clients, source: str) -> str:
    return (
        clients.workflows.create_workflow(
            parent=PARENT,
            workflow_id=f"wf-{uuid.uuid4().hex[:8]}",
            workflow=wf.Workflow(source_contents=source),
        )
        .result(timeout=30)
        .name
    )


def _start(clients: Clients, workflow: str, argument: dict, labels: dict) -> str:
    return clients.executions.create_execution(
        parent=workflow,
        execution=executions_v1.Execution(argument=json.dumps(argument), labels=labels),
    ).name


@pytest.fixture(scope="module")
def made(clients) -> Iterator[Made]:
    """One workflow with three executions, started one after the other: one succeeded,
    one failed, one asleep (cancelled at the end)."""
    workflow = _workflow(clients, ROUTER)
    ok = _start(clients, workflow, {"fail": False, "sleep": 0, "n": 1}, {"team": "a"})
    bad = _start(clients, workflow, {"fail": True, "sleep": 0, "n": 2}, {"team": "b"})
    asleep = _start(
        clients, workflow, {"fail": False, "sleep": 3600, "n": 3}, {"team": "a", "tier": "gold"}
    )

    def get(name: str, done: bool) -> executions_v1.Execution | None:
        found = clients.executions.get_execution(name=name)
        if done:
            return found if found.state != State.ACTIVE else None
        return found if [s.step for s in found.status.current_steps] == ["nap"] else None

    try:
        yield Made(
            workflow,
            wait_for(lambda: get(ok, True), 30, "the first execution to end"),
            wait_for(lambda: get(bad, True), 30, "the second execution to end"),
            wait_for(lambda: get(asleep, False), 30, "the third execution to sleep"),
        )
    finally:
        with contextlib.suppress(exceptions.GoogleAPICallError):
            clients.executions.cancel_execution(name=asleep)
        clients.workflows.delete_workflow(name=workflow).result(timeout=30)


def listed(clients: Clients, workflow: str, **request) -> list[str]:
    pager = clients.executions.list_executions(request={"parent": workflow, **request})
    return [e.name for e in pager]


def test_the_executions_ended_as_the_other_tests_expect(made):
    assert (made.ok.state, made.bad.state, made.asleep.state) == (
        State.SUCCEEDED,
        State.FAILED,
        State.ACTIVE,
    )


def test_basic_view_returns_only_its_documented_fields(clients, made):
    full = clients.executions.get_execution(name=made.ok.name)  # GetExecution: FULL
    assert full.labels == {"team": "a"} and json.loads(full.argument)["n"] == 1
    assert json.loads(full.result) == 1
    basic = clients.executions.get_execution(request={"name": made.ok.name, "view": View.BASIC})
    assert basic.name == full.name and basic.state == State.SUCCEEDED
    assert basic.start_time == full.start_time and basic.end_time == full.end_time
    assert basic.duration == full.duration
    assert basic.workflow_revision_id == full.workflow_revision_id != ""
    present = {f.name for f, _ in executions_v1.Execution.pb(basic).ListFields()}
    assert present == {
        "name",
        "state",
        "start_time",
        "end_time",
        "duration",
        "workflow_revision_id",
    }
    failed = clients.executions.get_execution(request={"name": made.bad.name, "view": View.BASIC})
    assert failed.state == State.FAILED and not failed.error.payload
    asleep = clients.executions.get_execution(
        request={"name": made.asleep.name, "view": View.BASIC}
    )
    assert not asleep.status.current_steps and not asleep.labels


def test_list_defaults_to_basic_and_full_has_everything(clients, made):
    by_default = list(clients.executions.list_executions(parent=made.workflow))
    assert [e.name for e in by_default] == [made.asleep.name, made.bad.name, made.ok.name]
    assert all(not e.labels and not e.argument and not e.result for e in by_default)
    assert all(e.start_time and e.state for e in by_default)
    full = list(
        clients.executions.list_executions(request={"parent": made.workflow, "view": View.FULL})
    )
    assert [dict(e.labels) for e in full] == [
        {"team": "a", "tier": "gold"},
        {"team": "b"},
        {"team": "a"},
    ]
    assert json.loads(full[2].result) == 1 and "asked to fail" in full[1].error.payload
    assert [(s.routine, s.step) for s in full[0].status.current_steps] == [("main", "nap")]


def _stamp(execution: executions_v1.Execution) -> str:
    return execution.start_time.isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('labels.team="a"', {"ok", "asleep"}),
        ("labels.team = a AND state = SUCCEEDED", {"ok"}),
        ('labels.team="a" state="ACTIVE"', {"asleep"}),  # juxtaposition is AND
        ("labels:tier", {"asleep"}),
        ("labels.tier:*", {"asleep"}),
        ('labels.team!="a"', {"bad"}),
        ('NOT labels.team="b"', {"ok", "asleep"}),
        ('-labels.team="b"', {"ok", "asleep"}),
        ('state="FAILED" OR state="ACTIVE"', {"bad", "asleep"}),
        ('labels.team="a" AND state=FAILED OR state=ACTIVE', {"asleep"}),  # OR binds tighter
        ('(labels.team="a" AND state=FAILED) OR state=ACTIVE', {"asleep"}),
        ("state!=ACTIVE", {"ok", "bad"}),
        ('stepName="nap"', {"asleep"}),
        ('endTime > "2020-01-01"', {"ok", "bad"}),  # a running execution has no end time
        ('duration < "600s"', {"ok", "bad"}),
        ('startTime > "2020-01-01T00:00:00Z"', {"ok", "bad", "asleep"}),
        ('startTime < "2020-01-01"', set()),
        ('labels.team="c"', set()),
    ],
)
def test_filters(clients, made, text, expected):
    names = {made.ok.name: "ok", made.bad.name: "bad", made.asleep.name: "asleep"}
    assert {names[n] for n in listed(clients, made.workflow, filter=text)} == expected


def test_filters_on_time_id_and_revision(clients, made):
    asleep = made.asleep
    since = f'startTime >= "{_stamp(asleep)}"'
    assert listed(clients, made.workflow, filter=since) == [asleep.name]
    before = f'createTime < "{_stamp(asleep)}"'
    assert listed(clients, made.workflow, filter=before) == [made.bad.name, made.ok.name]
    exec_id = asleep.name.rsplit("/", 1)[-1]
    assert listed(clients, made.workflow, filter=f'executionId="{exec_id}"') == [asleep.name]
    revision = f'workflowRevisionId="{asleep.workflow_revision_id}"'
    assert len(listed(clients, made.workflow, filter=revision)) == 3
    assert listed(clients, made.workflow, filter='workflowRevisionId="000099-xyz"') == []


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("", ["asleep", "bad", "ok"]),  # newest first
        ("startTime", ["ok", "bad", "asleep"]),
        ("createTime desc", ["asleep", "bad", "ok"]),
        ("state", ["asleep", "ok", "bad"]),  # ACTIVE, SUCCEEDED, FAILED
        ("state desc, startTime", ["bad", "ok", "asleep"]),
        ("endTime desc", ["bad", "ok", "asleep"]),  # no end time: last when descending
    ],
)
def test_order_by(clients, made, order, expected):
    names = {made.ok.name: "ok", made.bad.name: "bad", made.asleep.name: "asleep"}
    assert [names[n] for n in listed(clients, made.workflow, order_by=order)] == expected


def test_order_by_duration_puts_running_executions_first_ascending(clients, made):
    ended = [made.bad, made.ok]  # the default order (newest first) breaks ties
    ended.sort(key=lambda e: executions_v1.Execution.pb(e).duration.ToNanoseconds())
    shortest_first = [made.asleep.name] + [e.name for e in ended]
    assert listed(clients, made.workflow, order_by="duration asc") == shortest_first
    assert listed(clients, made.workflow, order_by="duration desc, executionId")[-1] == (
        made.asleep.name
    )


def test_order_by_execution_id(clients, made):
    found = listed(clients, made.workflow, order_by="executionId desc")
    assert found == sorted([made.ok.name, made.bad.name, made.asleep.name], reverse=True)


@pytest.mark.parametrize(
    ("request_fields", "words"),
    [
        ({"filter": 'argument="x"'}, "unknown field 'argument'"),
        ({"filter": 'labels="a"'}, "labels is a map"),
        ({"filter": "state > ACTIVE"}, "operator '>' is not supported on state"),
        ({"filter": "state = RUNNING"}, "'RUNNING' is not a value of state"),
        ({"filter": 'startTime > "last week"'}, "RFC 3339"),
        ({"filter": "duration > 10"}, '"20s"'),
        ({"filter": "nap"}, "free-text search is not supported"),
        ({"filter": 'state = "ACTIVE" and labels:x'}, "capitals"),
        ({"filter": '(state = "ACTIVE"'}, "expected ')'"),
        ({"filter": 'hasPrefix(labels.team, "a")'}, "functions are not supported"),
        ({"filter": 'executionId = "abc*"'}, "wildcards are not supported"),
        ({"filter": 'labels.team = "a'}, "unterminated string"),
        ({"filter": "NOT NOT state = ACTIVE"}, "after a negation"),
        ({"filter": "(" * 40 + "state = ACTIVE" + ")" * 40}, "nested deeper than 32"),
        ({"order_by": "labels"}, "cannot order by 'labels'"),
        ({"order_by": "stepName"}, "cannot order by 'stepName'"),
        ({"order_by": "startTime sideways"}, "not asc or desc"),
        ({"view": 7}, "Invalid view 7"),
    ],
)
def test_what_it_cannot_do_is_refused_with_invalid_argument(clients, made, request_fields, words):
    with pytest.raises(exceptions.InvalidArgument) as caught:
        listed(clients, made.workflow, **request_fields)
    assert words in caught.value.message


def test_pages_hold_100_by_default_at_most_100_in_full(clients):
    workflow = _workflow(clients, "main:\n  steps:\n    - done:\n        return: 1\n")
    try:
        for _ in range(101):
            clients.executions.create_execution(parent=workflow, execution={})
        default = clients.executions.list_executions(parent=workflow)
        assert [len(p.executions) for p in default.pages] == [100, 1]
        full = clients.executions.list_executions(
            request={"parent": workflow, "view": View.FULL, "page_size": 500}
        )
        assert [len(p.executions) for p in full.pages] == [100, 1]
        basic = clients.executions.list_executions(
            request={"parent": workflow, "view": View.BASIC, "page_size": 500}
        )
        assert [len(p.executions) for p in basic.pages] == [101]
    finally:
        clients.workflows.delete_workflow(name=workflow).result(timeout=30)


def test_a_page_token_only_continues_the_listing_it_came_from(clients, made):
    first = clients.executions.list_executions(
        request={"parent": made.workflow, "filter": 'labels.team="a"', "page_size": 1}
    )
    token = next(iter(first.pages)).next_page_token
    assert token
    rest = clients.executions.list_executions(
        request={"parent": made.workflow, "filter": 'labels.team="a"', "page_token": token}
    )
    assert [e.name for e in rest] == [made.ok.name]
    with pytest.raises(exceptions.InvalidArgument, match="must match"):
        list(
            clients.executions.list_executions(
                request={"parent": made.workflow, "filter": 'state="ACTIVE"', "page_token": token}
            )
        )

"""An execution resumed from any of its checkpoints ends as the uninterrupted one did.

Each workflow runs once against a scripted world (its calls answer by URL and by how many
calls to that URL have completed), keeping every checkpoint and what the world had seen
when it was written. Then, for each checkpoint, a new interpreter resumes from it in a
world that has seen the same: its result must be the same, and the calls it makes must be
exactly the calls that had not completed at the checkpoint (the one in flight made again,
none that had completed). ``workflows/deploy.yaml``, the orchestrator's own workflow, is
the first case. The integration tests kill a real localcloud
(``tests/integration/test_workflows.py``).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from localcloud.workflows import definition
from localcloud.workflows.expr import WorkflowError
from localcloud.workflows.interpreter import Interpreter
from localcloud.workflows.resume import FORMAT, RestoreError, decode, encode
from localcloud.workflows.runtime import Runtime

DEPLOY = (Path(__file__).parents[2] / "workflows" / "deploy.yaml").read_text()
ENV = {
    "BUILD_URL": "http://steps/build",
    "PUSH_URL": "http://steps/push",
    "DEPLOY_URL": "http://steps/deploy",
    "BIND_TRIGGERS_URL": "http://steps/bind_triggers",
    "STATUS_TOPIC": "projects/p/topics/deploy-status",
    "GOOGLE_CLOUD_PROJECT_ID": "p",
    "GOOGLE_CLOUD_LOCATION": "us-central1",
    "GOOGLE_CLOUD_WORKFLOW_ID": "deploy",
    "GOOGLE_CLOUD_WORKFLOW_EXECUTION_ID": "e1",
}
DEPLOYMENT = {"deployment_id": "d1", "service": "svc", "source": "gs://b/o#1"}
STEP_RESULTS = {
    "build": {"build_id": "b-1"},
    "push": {"image": "img@sha256:1"},
    "deploy": {"url": "http://svc", "revision": "svc-00001"},
    "bind_triggers": {"triggers": ["t1"]},
}


@dataclass
class World:
    """What the workflow's calls reach. ``failures[url]``: how many calls to it fail first
    (a 503, retried by ``deploy.yaml``); ``answers[url]``: a body other than ok."""

    failures: dict[str, int] = field(default_factory=dict)
    answers: dict[str, Any] = field(default_factory=dict)
    completed: Counter[str] = field(default_factory=Counter)
    started: list[str] = field(default_factory=list)  # a call's key, at its start
    in_flight: list[str] = field(default_factory=list)

    async def call(self, key: str, url: str, result: Any, seconds: float = 0.001) -> Any:
        self.started.append(key)
        self.in_flight.append(key)
        try:
            await asyncio.sleep(seconds)
            failing = self.completed[url] < self.failures.get(url, 0)
            self.completed[url] += 1
        finally:
            self.in_flight.remove(key)
        if failing:
            raise WorkflowError("HTTP server responded with error code 503", "HttpError", code=503)
        return result

    def blocking(self) -> dict[str, Any]:
        async def post(it: Interpreter, args: dict[str, Any]) -> Any:
            url = args["url"]
            step = url.rsplit("/", 1)[-1]
            body = self.answers.get(url, {"ok": True, "result": STEP_RESULTS.get(step, step)})
            key = f"post {url} {json.dumps(args.get('body'), sort_keys=True)}"
            return await self.call(key, url, {"code": 200, "headers": {}, "body": body})

        async def publish(it: Interpreter, args: dict[str, Any]) -> Any:
            key = f"publish {json.dumps(args, sort_keys=True)}"
            return await self.call(key, "pubsub", {"messageIds": ["1"]})

        async def sleep(it: Interpreter, args: dict[str, Any]) -> None:
            await self.call("sleep", "sleep", None, args["seconds"])

        async def log(it: Interpreter, args: dict[str, Any]) -> None:
            pass

        return {
            "http.post": post,
            "googleapis.pubsub.v1.projects.topics.publish": publish,
            "sys.sleep": sleep,
            "sys.log": log,
        }


@dataclass
class Checkpoint:
    state: str
    completed: Counter[str]  # the world's counts when it was written
    started: int
    in_flight: list[str]


def interpreter(source: str, world: World, saved: str | None, kept: list[Checkpoint]) -> Any:
    functions = Runtime(None, None, None).functions(ENV)  # type: ignore[arg-type]
    functions["sys.now"] = lambda: 1_700_000_000.0
    blocking = world.blocking()
    parsed = definition.parse(source, set(functions) | set(blocking))

    async def save(state: str) -> None:
        kept.append(
            Checkpoint(state, Counter(world.completed), len(world.started), list(world.in_flight))
        )

    return Interpreter(parsed, functions, blocking, lambda *a: None, saved=saved, save=save)


async def outcome(it: Interpreter, argument: Any) -> Any:
    try:
        return ("result", await it.run(argument))
    except WorkflowError as exc:
        return ("error", exc.value)


def check_every_resume(source: str, argument: Any, make_world: Any, ordered: bool = True) -> Any:
    """Run once, then resume from each checkpoint; return the first run's outcome."""
    world = make_world()
    kept: list[Checkpoint] = []
    expected = asyncio.run(outcome(interpreter(source, world, None, kept), argument))
    assert kept, "no checkpoint was taken"
    for n, point in enumerate(kept):
        again = make_world()
        again.completed = Counter(point.completed)
        got = asyncio.run(outcome(interpreter(source, again, point.state, []), argument))
        assert got == expected, f"resumed from checkpoint {n}"
        # Exactly what had not completed: calls started later, and those in flight.
        owed = point.in_flight + world.started[point.started :]
        made = again.started if ordered else sorted(again.started)
        assert made == (owed if ordered else sorted(owed)), f"checkpoint {n}"
    return expected


def test_deploy_workflow_resumes_exactly_after_every_checkpoint():
    """Four step calls (the first one retried after a 503: a 1 s wait), then the `done`
    publish."""
    result = check_every_resume(
        DEPLOY, DEPLOYMENT, lambda: World(failures={"http://steps/build": 1})
    )
    assert result[0] == "result"
    assert result[1]["state"] == "succeeded"
    assert result[1]["url"] == "http://svc"


def test_a_failing_deployment_resumes_into_its_except_and_publishes_failed():
    """A step's own failure goes through `except`, which publishes `done failed`."""
    answer = {"ok": False, "error": {"code": "DEPLOY_FAILED", "message": "no"}}
    result = check_every_resume(
        DEPLOY, DEPLOYMENT, lambda: World(answers={"http://steps/deploy": answer})
    )
    assert result == (
        "error",
        {
            "deployment_id": "d1",
            "service": "svc",
            "state": "failed",
            "step": "deploy",
            "code": "DEPLOY_FAILED",
            "message": "no",
        },
    )


CONSTRUCTS = """
main:
  params: [args]
  steps:
    - init:
        assign:
          - total: 0
          - seen: []
          - raw: ${text.encode("bytes survive")}
          - reported: null
    - loop:
        for:
          value: item
          index: i
          in: ${args.items}
          steps:
            - pick:
                switch:
                  - condition: ${item % 2 == 0}
                    steps:
                      - even:
                          call: http.post
                          args:
                            url: ${"http://w/even/" + string(item)}
                          result: r
                      - add:
                          assign:
                            - total: ${total + item}
                  - condition: true
                    next: odd
            - odd:
                call: nap
                args:
                  n: ${i}
                result: slept
            - keep:
                assign:
                  - seen: ${list.concat(seen, slept)}
    - guarded:
        try:
          steps:
            - flaky:
                call: http.post
                args:
                  url: http://w/flaky
                result: f
        retry:
          predicate: ${always}
          max_retries: 3
          backoff:
            initial_delay: 0.01
            max_delay: 0.02
            multiplier: 2
    - caught:
        try:
          call: http.post
          args:
            url: http://w/broken
        retry:
          predicate: ${always}
          max_retries: 1
          backoff:
            initial_delay: 0.01
        except:
          as: e
          steps:
            - report:
                call: http.post
                args:
                  url: http://w/report
                  body: ${e.code}
            - note:
                assign:
                  - reported: ${e.code}
    - done:
        return:
          total: ${total}
          seen: ${seen}
          reported: ${reported}
          raw: ${text.decode(raw)}

nap:
  params: [n]
  steps:
    - sleep:
        call: sys.sleep
        args:
          seconds: 0.01
    - back:
        return: ${"slept " + string(n)}

always:
  params: [e]
  steps:
    - yes:
        return: true
"""


def test_loops_switches_subworkflows_retries_and_excepts_resume_exactly():
    def world() -> World:
        return World(failures={"http://w/flaky": 2, "http://w/broken": 99})

    result = check_every_resume(CONSTRUCTS, {"items": [1, 2, 3, 4]}, world)
    assert result == (
        "result",
        {
            "total": 6,
            "seen": ["slept 0", "slept 1", "slept 2", "slept 3"],
            "reported": 503,
            "raw": "bytes survive",
        },
    )


PARALLEL = """
main:
  steps:
    - init:
        assign:
          - found: {}
          - order: []
    - fan:
        parallel:
          shared: [found]
          concurrency_limit: 2
          for:
            value: name
            in: ["a", "b", "c"]
            steps:
              - fetch:
                  call: http.post
                  args:
                    url: ${"http://w/" + name}
                  result: r
              - again:
                  call: http.post
                  args:
                    url: ${"http://w/" + name + "/2"}
              - store:
                  assign:
                    - found[name]: ${r.body.result}
    - branches:
        parallel:
          shared: [order]
          branches:
            - one:
                steps:
                  - wait1:
                      call: sys.sleep
                      args:
                        seconds: 0.05
                  - mark1:
                      assign:
                        - order: ${list.concat(order, "one")}
            - two:
                steps:
                  - call2:
                      for:
                        value: n
                        range: [1, 3]
                        steps:
                          - post:
                              call: http.post
                              args:
                                url: ${"http://w/two/" + string(n)}
                  - mark2:
                      assign:
                        - order: ${list.concat(order, "two")}
    - done:
        return:
          found: ${found}
          marks: ${len(order)}
"""


def test_parallel_branches_resume_where_each_was():
    result = check_every_resume(PARALLEL, None, World, ordered=False)
    assert result == ("result", {"found": {"a": "a", "b": "b", "c": "c"}, "marks": 2})


NAP = """
main:
  params: [seconds]
  steps:
    - nap:
        call: sys.sleep
        args:
          seconds: ${seconds}
    - done:
        return: "awake"
"""


def test_a_sleep_resumes_with_what_remained_of_it():
    world = World()
    kept: list[Checkpoint] = []

    async def until_checkpoint() -> None:
        task = asyncio.create_task(interpreter(NAP, world, None, kept).run(30))
        while not kept:
            await asyncio.sleep(0.001)
        task.cancel()

    asyncio.run(until_checkpoint())
    state = json.loads(kept[0].state)
    state["root"][-1]["until"] -= 29.9  # saved 29.9 s ago
    seconds: list[float] = []

    async def sleep(it: Interpreter, args: dict[str, Any]) -> None:
        seconds.append(args["seconds"])

    it = interpreter(NAP, world, json.dumps(state), [])
    it.blocking["sys.sleep"] = sleep
    assert asyncio.run(it.run(30)) == "awake"
    assert 0 <= seconds[0] <= 0.1


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda s: s.update(format=FORMAT + 1), "format"),
        (lambda s: s["root"][1].update(step="renamed"), "'renamed'"),
        (lambda s: s["root"][0].update(name="other"), "other"),
        (lambda s: s["root"].append({"kind": "for"}), "nap"),
    ],
)
def test_state_that_does_not_fit_is_a_restore_error(change, says):
    kept: list[Checkpoint] = []
    asyncio.run(interpreter(NAP, World(), None, kept).run(0.01))
    state = json.loads(kept[0].state)
    change(state)
    with pytest.raises(RestoreError, match=says):
        it = interpreter(NAP, World(), json.dumps(state), [])
        asyncio.run(it.run(0.01))


def test_values_round_trip_through_the_saved_form():
    value = {"b": b"\x00\xff", "n": [1, 2.5, None, True], "\0bytes": "x", "s": "\0map"}
    assert decode(json.loads(json.dumps(encode(value)))) == value

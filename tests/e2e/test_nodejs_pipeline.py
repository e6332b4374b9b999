"""Node.js functions through the pipeline (issue 19): the examples' zips dropped into the
sources bucket are built by the Node.js buildpack (npm ci from their lock files), deployed,
served over HTTP and reached by their Pub/Sub trigger, with the same status events as
Python functions. Skipped where this machine has no Node.js of the examples' runtime
(``make deps`` installs one)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from localcloud.run.sandbox import SandboxError, find_node
from localcloud.testing import wait_for, zip_dir
from orchestrator import runtimes
from tests.e2e.conftest import done, steps

EXAMPLES = Path(__file__).parent.parent.parent / "examples"
EXPECTED = [
    (step, state)
    for step in ("accepted", "build", "push", "deploy", "bind_triggers")
    for state in (("succeeded",) if step == "accepted" else ("running", "succeeded"))
]


def _node_missing() -> str | None:
    runtime = runtimes.DEFAULT_RUNTIMES[runtimes.NODEJS]
    assert runtime is not None
    if shutil.which("npm") is None:
        return "npm is not installed"
    try:
        find_node(runtime)
    except SandboxError as exc:
        return str(exc)
    return None


pytestmark = pytest.mark.skipif(bool(_node_missing()), reason=_node_missing() or "")


def test_the_nodejs_examples_are_served_and_triggered(pipeline):
    dep_id, _ = pipeline.upload(zip_dir(EXAMPLES / "hello-node"), "hello-node.zip")
    events = pipeline.wait(dep_id, timeout=180)
    final = done(events)
    assert final.state == "succeeded", final.message
    assert steps(events)[: len(EXPECTED)] == EXPECTED
    assert pipeline.get(final.details["url"] + "?name=<b>node</b>") == (
        "Hello, &lt;b&gt;node&lt;/b&gt;!\n"  # escape-html, installed by npm ci
    )

    dep_id, _ = pipeline.upload(zip_dir(EXAMPLES / "on-message-node"), "on-message-node.zip")
    final = done(pipeline.wait(dep_id, timeout=180))
    assert final.state == "succeeded", final.message
    text = f"hello {uuid.uuid4().hex[:8]}"
    topic = pipeline.clients.publisher.topic_path(pipeline.settings.project, "messages")
    message_id = pipeline.clients.publisher.publish(topic, text.encode()).result(timeout=30)
    service = pipeline.service("on-message-node")
    revision = pipeline.clients.run_revisions.get_revision(name=service.latest_ready_revision)
    log = pipeline.clients.env.log_file(revision.log_uri)
    assert log is not None
    line = f"message {message_id}: {text}"
    wait_for(
        lambda: log.is_file() and line in log.read_text(errors="replace"),
        60,
        f"the function to log {line!r}",
    )

"""A Node.js function through the pipeline (issue 19): ``examples/hello-node``'s zip dropped
into the sources bucket is built by the Node.js buildpack (npm ci from its lock file),
deployed and served, with the same status events as a Python function. Skipped where this
machine has no Node.js of the examples' runtime (``make deps`` installs one).

One deploy only, for the suite's time: a Node.js CloudEvent function reached through an
Eventarc Pub/Sub trigger is tested in ``tests/integration/test_cloud_build_nodejs.py``, the
trigger binding of the pipeline is the same for either language (``tests/e2e/
test_pipeline.py``), and ``examples/on-message-node`` is packed and taken by intake in
``tests/unit/test_examples.py``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from localcloud.run.sandbox import SandboxError, find_node
from localcloud.testing import zip_dir
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


def test_the_nodejs_example_is_built_deployed_and_served(pipeline):
    dep_id, _ = pipeline.upload(zip_dir(EXAMPLES / "hello-node"), "hello-node.zip")
    events = pipeline.wait(dep_id, timeout=180)
    final = done(events)
    assert final.state == "succeeded", final.message
    assert steps(events)[: len(EXPECTED)] == EXPECTED
    assert pipeline.get(final.details["url"] + "?name=<b>node</b>") == (
        "Hello, &lt;b&gt;node&lt;/b&gt;!\n"  # escape-html, installed by npm ci
    )

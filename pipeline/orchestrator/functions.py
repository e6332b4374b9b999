"""The orchestrator's functions: the entry points Cloud Run functions (or localcloud) call.

``pipeline/main.py``, the module functions-framework loads, re-exports them: the deployed
source root is ``pipeline/`` (this package, ``main.py`` and ``requirements.txt``), so the
package imports itself as ``orchestrator`` there as it does in the repository.
"""

from __future__ import annotations

import logging

import functions_framework

from orchestrator import build as build_step
from orchestrator import deploy as deploy_step
from orchestrator import intake, step
from orchestrator import push as push_step
from orchestrator import triggers as triggers_step

__all__ = [
    "bind_triggers",
    "build",
    "deploy",
    "on_deploy_request",
    "on_source_uploaded",
    "push",
]

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
step.warm()


@functions_framework.cloud_event
def on_source_uploaded(event) -> None:
    """Eventarc: a Cloud Storage object was finalized in the sources bucket."""
    intake.source_uploaded(event.data or {})


@functions_framework.cloud_event
def on_deploy_request(event) -> None:
    """Eventarc: a message was published to the deploy-requests topic."""
    intake.deploy_requested((event.data or {}).get("message") or {})


@functions_framework.http
def build(request):
    return step.run("build", request.get_json(silent=True), build_step.work, announce=None)


@functions_framework.http
def push(request):
    return step.run(
        "push",
        request.get_json(silent=True),
        push_step.work,
        announce="publishing",
        under_lock=True,
        skip=push_step.skip,
    )


@functions_framework.http
def deploy(request):
    return step.run(
        "deploy",
        request.get_json(silent=True),
        deploy_step.work,
        announce="deploying",
        under_lock=True,
    )


@functions_framework.http
def bind_triggers(request):
    return step.run(
        "bind_triggers",
        request.get_json(silent=True),
        triggers_step.work,
        announce="binding",
        release_on_success=True,
    )

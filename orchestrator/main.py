"""The orchestrator's functions: the entry points Cloud Run functions (or localcloud) call.

This directory is deployed as it is: its contents become the function's source root, so
the package ``orchestrator`` has no parent directory there. The first lines make this
directory importable as ``orchestrator`` in that layout too, so the modules keep one
import style in the repository, in tests and deployed.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

if "orchestrator" not in sys.modules:  # deployed: this directory is the source root
    _here = Path(__file__).resolve().parent
    _spec = importlib.util.spec_from_file_location(
        "orchestrator", _here / "__init__.py", submodule_search_locations=[str(_here)]
    )
    assert _spec is not None and _spec.loader is not None
    _package = importlib.util.module_from_spec(_spec)
    sys.modules["orchestrator"] = _package
    _spec.loader.exec_module(_package)

import functions_framework

from orchestrator import build as build_step
from orchestrator import deploy as deploy_step
from orchestrator import intake, step
from orchestrator import push as push_step
from orchestrator import triggers as triggers_step

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
    return step.run("push", request.get_json(silent=True), push_step.work, announce="publishing")


@functions_framework.http
def deploy(request):
    return step.run("deploy", request.get_json(silent=True), deploy_step.work, announce="deploying")


@functions_framework.http
def bind_triggers(request):
    return step.run(
        "bind_triggers", request.get_json(silent=True), triggers_step.work, announce="binding"
    )

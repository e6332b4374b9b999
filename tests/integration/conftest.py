"""Fixtures shared by the Cloud Run suites: clients, images built with Cloud Build from
``tests/functions``, and services deployed (and deleted after the test)."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

import pytest
from google.api_core import exceptions
from google.cloud import run_v2
from google.cloud.devtools import cloudbuild_v1

from localcloud.testing import make_public, zip_dir
from orchestrator.clients import Clients, Environment

FUNCTIONS = Path(__file__).parent.parent / "functions"
PARENT = "projects/local-project/locations/us-central1"


@pytest.fixture(scope="module")
def clients(localcloud) -> Clients:
    return Clients(Environment.from_env(localcloud.env))


@pytest.fixture(scope="module")
def build_image(clients):
    """Build a tests/functions directory with Cloud Build; returns the image by digest."""
    bucket = clients.storage.create_bucket(f"run-src-{uuid.uuid4().hex[:8]}")
    cache: dict[tuple[str, str], str] = {}

    def build(function: str, target: str) -> str:
        if (function, target) in cache:
            return cache[(function, target)]
        blob = bucket.blob(f"{function}.zip")
        blob.upload_from_string(zip_dir(FUNCTIONS / function))
        image = f"us-central1-docker.pkg.dev/local-project/functions/{function.replace('_', '-')}"
        args = ["build", image, "--env", f"GOOGLE_FUNCTION_TARGET={target}"]
        operation = clients.cloud_build.create_build(
            project_id="local-project",
            build=cloudbuild_v1.Build(
                source={"storage_source": {"bucket": bucket.name, "object_": blob.name}},
                steps=[{"name": "gcr.io/k8s-skaffold/pack", "entrypoint": "pack", "args": args}],
                images=[image],
            ),
        )
        result = operation.result(timeout=180)
        cache[(function, target)] = f"{image}@{result.results.images[0].digest}"
        return cache[(function, target)]

    return build


@pytest.fixture
def deploy(clients):
    """Create services; delete them after the test."""
    created: list[str] = []

    def make(
        image: str,
        *,
        public: bool = False,
        env: dict | None = None,
        limits: dict | None = None,
        **template,
    ) -> run_v2.Service:
        service_id = f"svc-{uuid.uuid4().hex[:8]}"
        service = run_v2.Service(
            template=run_v2.RevisionTemplate(
                containers=[
                    run_v2.Container(
                        image=image,
                        env=[{"name": k, "value": v} for k, v in (env or {}).items()],
                        resources={"limits": limits or {}},
                    )
                ],
                **template,
            )
        )
        result = clients.run_services.create_service(
            parent=PARENT, service=service, service_id=service_id
        ).result(timeout=120)
        created.append(result.name)
        if public:
            make_public(clients, result.name)
        return result

    yield make
    for name in created:
        with contextlib.suppress(exceptions.NotFound):
            clients.run_services.delete_service(name=name).result(timeout=60)

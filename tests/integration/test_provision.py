"""``orch local up``'s provisioning of the pipeline's functions on Cloud Run: an instance
killed before it listens (exit 137, as on a loaded machine) is started again, saying so,
instead of failing the whole ``up``; a function that fails by itself, or a bad image, is
not.

Each test deploys a function from ``tests/functions`` through ``Provisioner.deploy_service``
(what ``orch local up`` calls for each of the pipeline's functions) on the session's
localcloud, where the instance really is killed or really fails.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator

import pytest
from google.api_core import exceptions
from google.cloud import run_v2

from orch.provision import Provisioner
from orchestrator.config import Settings

Deploy = Callable[[str, dict[str, str]], run_v2.Service]


@pytest.fixture
def provision(localcloud, clients) -> Iterator[tuple[Deploy, list[str]]]:
    """Deploy a new service as provisioning does; what it printed. Services are deleted
    after the test."""
    settings = Settings.from_env({**localcloud.env, "ORCH_CONFIG": "/nonexistent/orch.json"})
    printed: list[str] = []
    provisioner = Provisioner(settings, clients, log=printed.append)
    made: list[str] = []

    def deploy(image: str, env: dict[str, str]) -> run_v2.Service:
        service_id = f"prov-{uuid.uuid4().hex[:8]}"
        made.append(settings.service_path(service_id))
        template = run_v2.RevisionTemplate(
            containers=[
                run_v2.Container(image=image, env=[{"name": k, "value": v} for k, v in env.items()])
            ]
        )
        return provisioner.deploy_service(service_id, template, "digest", None)

    yield deploy, printed
    for name in made:
        with contextlib.suppress(exceptions.NotFound):
            clients.run_services.delete_service(name=name).result(timeout=60)


def test_an_instance_killed_before_it_listens_is_started_again(
    localcloud, clients, build_image, provision
):
    deploy, printed = provision
    bucket = clients.storage.create_bucket(f"prov-{uuid.uuid4().hex[:8]}")
    marker = (
        f"http://{localcloud.config.storage_address}/upload/storage/v1/b/{bucket.name}/o"
        "?uploadType=multipart&ifGenerationMatch=0"
    )
    service = deploy(build_image("killed_once", "hello"), {"MARKER_URL": marker})
    assert service.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED
    assert bucket.get_blob("started") is not None, "the first instance never started"
    service_id = service.name.rsplit("/", 1)[-1]
    assert printed == [f"{service_id}: instance start failed (exit 137); retrying (2/3)"]


def test_an_instance_that_exits_by_itself_fails_provisioning_at_once(build_image, provision):
    deploy, printed = provision
    with pytest.raises(exceptions.FailedPrecondition, match="before listening"):
        deploy(build_image("crash_on_import", "echo"), {})
    assert printed == [], "a function that cannot start was started again"


def test_a_bad_image_fails_provisioning_at_once(provision):
    deploy, printed = provision
    missing = "us-central1-docker.pkg.dev/local-project/functions/no-such-image:latest"
    with pytest.raises(exceptions.GoogleAPICallError):
        deploy(missing, {})
    assert printed == []

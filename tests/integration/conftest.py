"""Fixtures shared by the Cloud Run and Cloud Build suites: clients, images built with Cloud
Build from ``tests/functions``, services deployed (and deleted when the module ends), build
sources, and a second localcloud."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from google.api_core import exceptions
from google.cloud import run_v2

from localcloud import testing
from localcloud.testing import build_function, make_public, run_service
from orchestrator.clients import Clients, Environment

FUNCTIONS = Path(__file__).parent.parent / "functions"
PARENT = "projects/local-project/locations/us-central1"


@pytest.fixture(scope="module")
def clients(localcloud) -> Clients:
    return Clients(Environment.from_env(localcloud.env))


@pytest.fixture(scope="session")
def build_image(localcloud) -> Callable[[str, str], str]:
    """Build a tests/functions directory with Cloud Build, once a session; the image by
    digest."""
    clients = Clients(Environment.from_env(localcloud.env))
    bucket = clients.storage.create_bucket(f"run-src-{uuid.uuid4().hex[:8]}")
    cache: dict[tuple[str, str], str] = {}

    def build(function: str, target: str) -> str:
        if (function, target) not in cache:
            image = (
                f"us-central1-docker.pkg.dev/local-project/functions/{function.replace('_', '-')}"
            )
            cache[(function, target)] = build_function(
                clients, bucket, FUNCTIONS / function, target, image
            )
        return cache[(function, target)]

    return build


@pytest.fixture(scope="module")
def graveyard(clients) -> Iterator[list[str]]:
    """Services to delete at the end of the module, all at once: a delete waits for the
    service's instances to stop (~2 s each), so one by one they would dominate the runtime."""
    names: list[str] = []
    yield names

    def delete(name: str) -> None:
        with contextlib.suppress(exceptions.NotFound):
            clients.run_services.delete_service(name=name).result(timeout=60)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(delete, names))


@pytest.fixture
def deploy(clients, graveyard):
    """Create services (deleted at the end of the module); ``deploy.created`` lists them,
    and a test that creates one itself adds it there."""

    def make(
        image: str,
        *,
        public: bool = False,
        env: dict | None = None,
        limits: dict | None = None,
        **template,
    ) -> run_v2.Service:
        result = clients.run_services.create_service(
            parent=PARENT,
            service=run_service(image, env, limits, **template),
            service_id=f"svc-{uuid.uuid4().hex[:8]}",
        ).result(timeout=120)
        graveyard.append(result.name)
        if public:
            make_public(clients, result.name)
        return result

    make.created = graveyard  # type: ignore[attr-defined]
    return make


@pytest.fixture(scope="module")
def sources(clients) -> Callable[..., tuple[str, str, int]]:
    """Upload a build's source to the module's bucket; ``(bucket, object, generation)``."""
    bucket = clients.storage.create_bucket(f"build-src-{uuid.uuid4().hex[:8]}")

    def upload(data: bytes, name: str | None = None) -> tuple[str, str, int]:
        blob = bucket.blob(name or f"{uuid.uuid4().hex[:8]}.zip")
        blob.upload_from_string(data)
        return bucket.name, blob.name, blob.generation

    return upload


@pytest.fixture
def build_notifications(local_target) -> Iterator[str]:
    """A subscription to ``cloud-builds``, where Cloud Build publishes each status change."""
    topic = "projects/local-project/topics/cloud-builds"
    with contextlib.suppress(exceptions.AlreadyExists):
        local_target.publisher.create_topic(name=topic)
    sub = local_target.subscription_path("builds")
    local_target.subscriber.create_subscription(name=sub, topic=topic)
    yield sub
    local_target.subscriber.delete_subscription(subscription=sub)


class OtherLocalcloud:
    """A second localcloud on its own data dir: ``instance`` (a test that restarts it puts
    the new one here), official clients pointed at it, and uploads to its storage."""

    def __init__(self, instance: testing.Instance) -> None:
        self.instance = instance

    def clients(self) -> Clients:
        return Clients(Environment.from_env(self.instance.env))

    def upload(self, data: bytes) -> tuple[str, str, int]:
        """A build's source in its storage; ``(bucket, object, generation)``."""
        with self.instance.client_env():  # the storage client reads os.environ
            storage = self.clients().storage
            bucket = storage.lookup_bucket("other-sources") or storage.create_bucket(
                "other-sources"
            )
            blob = bucket.blob(f"{uuid.uuid4().hex[:8]}.zip")
            blob.upload_from_string(data)
            return bucket.name, blob.name, blob.generation


@pytest.fixture(scope="session")
def other_localcloud(tmp_path_factory, wheelhouse) -> Iterator[OtherLocalcloud]:
    """For what the session's localcloud must not go through: a restart, a crash."""
    data = tmp_path_factory.mktemp("other-localcloud") / "data"
    other = OtherLocalcloud(
        testing.start(data, extra_env={"LOCALCLOUD_WHEELHOUSE": str(wheelhouse)})
    )
    yield other
    other.instance.stop()


@pytest.fixture(scope="session")
def default_build_account_builds(localcloud) -> str:
    """The Compute Engine default account, which builds functions that name no build account
    of their own, granted ``roles/cloudbuild.builds.builder`` on the project: what Google
    tells the owner of a new project to grant, since it no longer makes that account an
    editor (https://cloud.google.com/build/docs/cloud-build-service-account-updates);
    without it, its pushes to ``gcf-artifacts`` are refused here as there."""
    from localcloud.core.projects import project_number

    project = localcloud.config.project
    member = f"serviceAccount:{project_number(project)}-compute@developer.gserviceaccount.com"
    projects = Clients(Environment.from_env(localcloud.env)).projects
    policy = projects.get_iam_policy(request={"resource": f"projects/{project}"})
    if not any(
        b.role == "roles/cloudbuild.builds.builder" and member in b.members for b in policy.bindings
    ):
        policy.bindings.add(role="roles/cloudbuild.builds.builder", members=[member])
        projects.set_iam_policy(request={"resource": f"projects/{project}", "policy": policy})
    return member

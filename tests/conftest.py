"""Test fixtures: one localcloud per test session, official clients, self-cleaning factories.

The session's localcloud runs as a real ``python -m localcloud serve`` process on free
loopback ports with a temporary data directory. Tests reach it only through the official
``google-cloud-*`` clients. Scenarios marked ``parity`` also run against Google's official
Pub/Sub emulator when the Google Cloud CLI has it (skipped cleanly elsewhere).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.cloud import pubsub_v1

from localcloud import testing
from localcloud.run import stage
from localcloud.testing import write_wheel

# Tests start sandboxed instances in this process too: as root, give it the private mount
# namespace localcloud's server has (it must be entered while pytest has one thread).
stage.isolate()

PROJECT = "local-project"
GREETING_MODULE = 'def greet(name):\n    return f"hello, {name}, from a wheel"\n'


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where builds' pip finds packages (LOCALCLOUD_WHEELHOUSE): the ``localgreeting`` wheel."""
    path = tmp_path_factory.mktemp("wheelhouse")
    path.chmod(0o755)  # as a wheelhouse made with umask 022: builds read it as nobody
    write_wheel(path, "localgreeting", "0.1.0", GREETING_MODULE)
    return path


@pytest.fixture(scope="session")
def localcloud(
    tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path
) -> Iterator[testing.Instance]:
    instance = testing.start(
        tmp_path_factory.mktemp("localcloud"),
        extra_env={
            "LOCALCLOUD_PUSH_MIN_BACKOFF_MS": "100",
            "LOCALCLOUD_PUSH_MAX_BACKOFF_MS": "1000",
            "LOCALCLOUD_WHEELHOUSE": str(wheelhouse),
            "LOCALCLOUD_RUN_IDLE_MS": "3000",
            "LOCALCLOUD_RUN_LOG_MAX_BYTES": str(1 << 20),  # small, so a log flood test is cheap
            # Where a test's Recorder listens: sandboxed functions reach no other host port.
            "LOCALCLOUD_RUN_HOST_PORTS": str(testing.free_port()),
            "LOCALCLOUD_EVENTARC_MIN_BACKOFF_MS": "100",
            "LOCALCLOUD_EVENTARC_MAX_BACKOFF_MS": "500",
        },
    )
    saved = {k: os.environ.get(k) for k in instance.env}
    os.environ.update(instance.env)
    yield instance
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    code = instance.stop()
    assert code == 0, f"localcloud exited with {code}; see {instance.log_path}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failing test that used localcloud shows the end of localcloud's log with it: CI
    keeps only what pytest prints, and the data directory goes with the machine."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    instance = getattr(item, "funcargs", {}).get("localcloud")
    if report.failed and isinstance(instance, testing.Instance):
        with contextlib.suppress(OSError), instance.log_path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 8192))
            lines = log.read().decode(errors="replace").splitlines()[1:]
            report.sections.append(("localcloud's log, its end", "\n".join(lines[-40:])))


@pytest.fixture(scope="session")
def official_emulator(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[testing.OfficialEmulator]:
    reason = testing.official_emulator_available()
    if reason:
        pytest.skip(f"official Pub/Sub emulator unavailable: {reason}")
    emulator = testing.start_official_emulator(tmp_path_factory.mktemp("official-emulator"))
    yield emulator
    emulator.stop()


@dataclass
class PubSubTarget:
    """A Pub/Sub server under test and the official clients pointed at it."""

    name: str
    host: str
    publisher: Any
    subscriber: Any

    def topic_path(self, prefix: str = "topic") -> str:
        return f"projects/{PROJECT}/topics/{prefix}-{uuid.uuid4().hex[:10]}"

    def subscription_path(self, prefix: str = "sub") -> str:
        return f"projects/{PROJECT}/subscriptions/{prefix}-{uuid.uuid4().hex[:10]}"

    def ordered_publisher(self) -> Any:
        with testing.patched_environ({"PUBSUB_EMULATOR_HOST": self.host}):
            return pubsub_v1.PublisherClient(
                publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
            )


def _target(name: str, host: str) -> PubSubTarget:
    with testing.patched_environ({"PUBSUB_EMULATOR_HOST": host}):
        return PubSubTarget(name, host, pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient())


@pytest.fixture(scope="session")
def local_target(localcloud: testing.Instance) -> PubSubTarget:
    return _target("localcloud", localcloud.config.grpc_address)


@pytest.fixture(scope="session", params=["localcloud", "official"])
def pubsub_target(request: pytest.FixtureRequest) -> PubSubTarget:
    """Parity scenarios: the same test against localcloud and the official emulator."""
    if request.param == "localcloud":
        return request.getfixturevalue("local_target")
    emulator = request.getfixturevalue("official_emulator")
    return _target("official", emulator.host)


@pytest.fixture
def publisher(local_target: PubSubTarget) -> Any:
    return local_target.publisher


@pytest.fixture
def subscriber(local_target: PubSubTarget) -> Any:
    return local_target.subscriber


@pytest.fixture
def make_topic(pubsub_target: PubSubTarget) -> Iterator[Callable[..., str]]:
    """Create topics on the parity target; delete them after the test."""
    yield from _topic_factory(pubsub_target)


@pytest.fixture
def make_subscription(pubsub_target: PubSubTarget) -> Iterator[Callable[..., str]]:
    yield from _subscription_factory(pubsub_target)


@pytest.fixture
def local_topic(local_target: PubSubTarget) -> Iterator[Callable[..., str]]:
    """Create topics on localcloud only; delete them after the test."""
    yield from _topic_factory(local_target)


@pytest.fixture
def local_subscription(local_target: PubSubTarget) -> Iterator[Callable[..., str]]:
    yield from _subscription_factory(local_target)


def _topic_factory(target: PubSubTarget) -> Iterator[Callable[..., str]]:
    created: list[str] = []

    def make(prefix: str = "topic", **fields: Any) -> str:
        name = target.topic_path(prefix)
        target.publisher.create_topic(request={"name": name, **fields})
        created.append(name)
        return name

    yield make
    for name in created:
        with contextlib.suppress(Exception):
            target.publisher.delete_topic(topic=name)


def _subscription_factory(target: PubSubTarget) -> Iterator[Callable[..., str]]:
    created: list[str] = []

    def make(topic: str, prefix: str = "sub", **fields: Any) -> str:
        name = target.subscription_path(prefix)
        target.subscriber.create_subscription(request={"name": name, "topic": topic, **fields})
        created.append(name)
        return name

    yield make
    for name in created:
        with contextlib.suppress(Exception):
            target.subscriber.delete_subscription(subscription=name)

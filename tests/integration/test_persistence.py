"""Durability and supervision: restarts, SIGKILL, orphans, a second supervisor, taken ports.

These start their own localcloud instances (the session's stays untouched), so they are
marked slow; each still takes only a few seconds.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from google.cloud import pubsub_v1

from localcloud import testing

pytestmark = pytest.mark.slow
PROJECT = "local-project"


def clients(instance: testing.Instance):
    with testing.patched_environ({"PUBSUB_EMULATOR_HOST": instance.config.grpc_address}):
        return pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()


def children_of(data_dir: Path) -> list[int]:
    """Pids of processes whose command line mentions the data directory (our children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(data_dir) in cmdline and "localcloud serve" not in cmdline:
            pids.append(int(entry.name))
    return pids


def wait_gone(pids: list[int], timeout: float = 30.0) -> list[int]:
    """Those of ``pids`` still running once all are gone or ``timeout`` has passed."""

    def alive() -> list[int]:
        return [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]

    with contextlib.suppress(AssertionError):
        testing.wait_for(lambda: not alive(), timeout, "the processes to go", every=0.1)
    return alive()


def _zombie(pid: int) -> bool:
    try:
        return " Z " in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True


def pull(subscriber, sub: str, want: int, timeout: float = 15.0) -> list:
    got: list = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        response = subscriber.pull(request={"subscription": sub, "max_messages": want}, timeout=5)
        got.extend(response.received_messages)
    return got


def test_state_survives_a_restart(tmp_path):
    instance = testing.start(tmp_path / "data")
    try:
        publisher, subscriber = clients(instance)
        topic = f"projects/{PROJECT}/topics/durable"
        sub = f"projects/{PROJECT}/subscriptions/durable-sub"
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=20)
        for i in range(3):
            publisher.publish(topic, f"m{i}".encode()).result(timeout=30)
        first = pull(subscriber, sub, 3)
        acked = [m for m in first if m.message.data == b"m0"]
        subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in acked])

        instance = instance.restart()
        publisher, subscriber = clients(instance)
        assert publisher.get_topic(topic=topic).name == topic
        assert subscriber.get_subscription(subscription=sub).ack_deadline_seconds == 20
        again = pull(subscriber, sub, 2)
        assert sorted(m.message.data for m in again) == [b"m1", b"m2"]
        publisher.publish(topic, b"after").result(timeout=30)
        ids = {m.message.message_id for m in first} | {m.message.message_id for m in again}
        fresh = pull(subscriber, sub, 1)
        assert fresh[0].message.data == b"after"
        assert fresh[0].message.message_id not in ids, (
            "message ids must stay unique across restarts"
        )
    finally:
        instance.stop()


def test_published_messages_survive_sigkill(tmp_path):
    """A Publish that returned is committed: SIGKILL right after loses nothing."""
    instance = testing.start(tmp_path / "data")
    try:
        publisher, subscriber = clients(instance)
        topic = f"projects/{PROJECT}/topics/killed"
        sub = f"projects/{PROJECT}/subscriptions/killed-sub"
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=sub, topic=topic)
        futures = [publisher.publish(topic, f"k{i}".encode()) for i in range(200)]
        ids = {f.result(timeout=30) for f in futures}
        instance.kill()
        assert wait_gone(children_of(instance.config.data_dir)) == []

        instance = testing.start(instance.config.data_dir, config=instance.config)
        publisher, subscriber = clients(instance)
        got = pull(subscriber, sub, 200)
        assert {m.message.message_id for m in got} == ids
    finally:
        instance.stop()


def test_stream_reconnects_across_a_restart(tmp_path):
    """Shutdown closes StreamingPull with UNAVAILABLE, so the client reconnects by itself."""
    instance = testing.start(tmp_path / "data")
    try:
        publisher, subscriber = clients(instance)
        topic = f"projects/{PROJECT}/topics/reconnect"
        sub = f"projects/{PROJECT}/subscriptions/reconnect-sub"
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=sub, topic=topic)
        got: list[bytes] = []
        arrived = threading.Event()

        def callback(message) -> None:
            got.append(message.data)
            message.ack()
            arrived.set()

        future = subscriber.subscribe(sub, callback)
        publisher.publish(topic, b"before").result(timeout=30)
        assert arrived.wait(10)
        arrived.clear()
        instance = instance.restart()
        publisher.publish(topic, b"after").result(timeout=60)
        assert arrived.wait(30), f"stream did not reconnect; got {got}"
        assert not future.done(), "the subscriber gave up instead of reconnecting"
        future.cancel()
        assert got == [b"before", b"after"]
    finally:
        instance.stop()


def test_sigterm_stops_cleanly_and_sigkill_leaves_no_orphans(tmp_path):
    instance = testing.start(tmp_path / "data")
    children = children_of(instance.config.data_dir)
    assert len(children) >= 2, "expected fake-gcs-server and the registry"
    assert instance.stop() == 0
    assert wait_gone(children) == []
    assert not (instance.config.data_dir / "state.json").exists()

    instance = testing.start(instance.config.data_dir, config=instance.config)
    children = children_of(instance.config.data_dir)
    instance.kill()
    assert wait_gone(children) == [], "children outlived a SIGKILLed supervisor"


def test_second_supervisor_on_same_data_dir_refuses(tmp_path):
    instance = testing.start(tmp_path / "data")
    try:
        env = {
            **os.environ,
            "LOCALCLOUD_DATA": str(instance.config.data_dir),
            **testing.port_env(instance.config),
        }
        result = subprocess.run(
            [sys.executable, "-m", "localcloud", "serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 1
        assert "already running" in result.stderr
        assert str(instance.process.pid) in result.stderr
    finally:
        instance.stop()


def test_taken_port_is_named_with_its_variable(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        env = {
            **os.environ,
            "LOCALCLOUD_DATA": str(tmp_path / "data"),
            **testing.port_env(),
            "LOCALCLOUD_GRPC_PORT": str(port),
        }
        result = subprocess.run(
            [sys.executable, "-m", "localcloud", "serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert f"port {port}" in result.stderr
    assert "LOCALCLOUD_GRPC_PORT" in result.stderr


def test_bad_config_value_is_named(tmp_path):
    env = {
        **os.environ,
        "LOCALCLOUD_DATA": str(tmp_path),
        **testing.port_env(),
        "LOCALCLOUD_GRPC_PORT": "eighty",
    }
    result = subprocess.run(
        [sys.executable, "-m", "localcloud", "serve"], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "LOCALCLOUD_GRPC_PORT" in result.stderr

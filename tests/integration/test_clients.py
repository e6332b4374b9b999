"""The client factory: emulator variables lead to localcloud, with the official clients."""

from __future__ import annotations

import uuid

from localcloud.testing import free_port, patched_environ
from orchestrator.clients import Clients, Environment


def test_factory_reaches_localcloud(localcloud):
    env = Environment.from_env(localcloud.env)
    assert env.local
    clients = Clients(env)
    # The process's emulator variable points nowhere: only Environment steers the clients.
    with patched_environ({"PUBSUB_EMULATOR_HOST": f"127.0.0.1:{free_port()}"}):
        topic = f"projects/{env.project}/topics/factory-{uuid.uuid4().hex[:8]}"
        clients.publisher.create_topic(name=topic)
        assert clients.publisher.get_topic(topic=topic).name == topic
        sub = topic.replace("/topics/", "/subscriptions/")
        clients.subscriber.create_subscription(name=sub, topic=topic)
        clients.ordered_publisher.publish(topic, b"one", ordering_key="k").result(timeout=10)
        got = clients.subscriber.pull(subscription=sub, max_messages=1, timeout=10)
        assert [m.message.data for m in got.received_messages] == [b"one"]
    with localcloud.client_env():
        bucket = clients.storage.create_bucket(f"factory-{uuid.uuid4().hex[:8]}")
        bucket.blob("x.txt").upload_from_string(b"hi")
        assert bucket.blob("x.txt").download_as_bytes() == b"hi"
        operations = list(clients.operations.list_operations("projects/local-project", ""))
        assert all(op.name.startswith("projects/local-project/") for op in operations)


def test_factory_without_emulator_variables_is_cloud():
    env = Environment.from_env({"GOOGLE_CLOUD_PROJECT": "my-proj"})
    assert not env.local
    assert env.project == "my-proj"
    assert env.region == "us-central1"


def test_what_differs_besides_addresses_is_asked_of_the_environment(tmp_path):
    local = Environment.from_env({"LOCALCLOUD_GRPC_HOST": "127.0.0.1:1"})
    cloud = Environment.from_env({"GOOGLE_CLOUD_PROJECT": "my-proj"})
    assert local.polling(30)._initial < cloud.polling(30)._initial
    assert local.polling(30)._timeout == 30
    log = tmp_path / "rev.log"
    assert local.log_file(str(log)) == log
    assert local.log_file(f"file://{log}") == log
    assert cloud.log_file("https://console.cloud.google.com/logs/viewer?x=1") is None
    assert local.log_file("") is None

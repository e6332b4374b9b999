"""The client factory: emulator variables lead to localcloud, with the official clients."""

from __future__ import annotations

import uuid

from orchestrator.clients import Clients, Environment


def test_factory_reaches_localcloud(localcloud):
    env = Environment.from_env(localcloud.env)
    assert env.local
    clients = Clients(env)
    with localcloud.client_env():
        topic = f"projects/{env.project}/topics/factory-{uuid.uuid4().hex[:8]}"
        clients.publisher.create_topic(name=topic)
        assert clients.publisher.get_topic(topic=topic).name == topic
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

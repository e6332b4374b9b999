"""``make demo``: show localcloud working, through the official clients.

Until the deploy pipeline lands, the demo publishes and receives a message over
StreamingPull and uploads an object to a bucket, then shows the object's notification
as Cloud Storage would publish it. It expects ``orch local up`` to have run.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid

from localcloud.core.config import Config
from localcloud.supervisor import read_state
from localcloud.testing import patched_environ


def main() -> int:
    config = Config.from_env()
    state = read_state(config)
    if state is None:
        print(f"localcloud is not running on {config.data_dir}; run `orch local up` first")
        return 1
    with patched_environ(state["env"]):
        from orchestrator.clients import Clients

        clients = Clients()
        project = clients.env.project
        run = uuid.uuid4().hex[:6]
        topic = f"projects/{project}/topics/demo-{run}"
        sub = f"projects/{project}/subscriptions/demo-{run}"
        clients.publisher.create_topic(name=topic)
        clients.subscriber.create_subscription(name=sub, topic=topic)
        print(f"created {topic} and {sub}")

        received = threading.Event()

        def on_message(message) -> None:
            print(
                f"received over StreamingPull: {message.data.decode()!r} {dict(message.attributes)}"
            )
            message.ack()
            received.set()

        future = clients.subscriber.subscribe(sub, on_message)
        start = time.perf_counter()
        message_id = clients.publisher.publish(
            topic, b"hello from localcloud", step="demo"
        ).result()
        print(f"published message {message_id}")
        received.wait(10)
        print(f"publish to receive: {(time.perf_counter() - start) * 1000:.1f} ms")
        future.cancel()

        events = f"projects/{project}/topics/{config.storage_events_topic}"
        events_sub = f"projects/{project}/subscriptions/demo-storage-{run}"
        clients.subscriber.create_subscription(name=events_sub, topic=events)
        bucket_name = f"demo-{run}-sources"
        bucket = clients.storage.create_bucket(bucket_name)
        blob = bucket.blob("hello.zip")
        blob.upload_from_string(b"PK\x05\x06" + b"\0" * 18, if_generation_match=0)
        print(f"uploaded gs://{bucket_name}/hello.zip (generation {blob.generation})")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            response = clients.subscriber.pull(subscription=events_sub, max_messages=10, timeout=10)
            for item in response.received_messages:
                attrs = dict(item.message.attributes)
                print(
                    f"storage notification: {attrs['eventType']} gs://{attrs['bucketId']}/{attrs['objectId']}"
                )
                print(json.dumps(attrs, indent=2, sort_keys=True))
                clients.subscriber.acknowledge(subscription=events_sub, ack_ids=[item.ack_id])
                return 0
        print("no storage notification arrived in 10 s; see `orch local logs storage`")
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""A Pub/Sub-triggered function: receives each message published to `orders` as a
CloudEvent (google.cloud.pubsub.topic.v1.messagePublished) and logs the order."""

import base64
import json

import functions_framework


@functions_framework.cloud_event
def on_order(event):
    message = event.data["message"]
    order = json.loads(base64.b64decode(message.get("data", "")) or b"{}")
    print(f"order {message.get('messageId')}: {order}")

"""Records the events it receives by POSTing them to RECORD_URL (the test's receiver).

``record`` is a CloudEvent function, ``record_legacy`` a legacy background (``event``)
function; with FAIL=1 both fail (HTTP 500) after recording, so delivery is retried.
"""

import json
import os
import urllib.request

import functions_framework


def _post(payload):
    request = urllib.request.Request(
        os.environ["RECORD_URL"],
        data=json.dumps(payload, default=str).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).read()
    if os.environ.get("FAIL") == "1":
        raise RuntimeError("failing on purpose")


@functions_framework.cloud_event
def record(event):
    _post({"kind": "cloudevent", "attributes": dict(event.get_attributes()), "data": event.data})


def record_legacy(data, context):
    _post(
        {
            "kind": "legacy",
            "data": data,
            "context": {
                "event_id": context.event_id,
                "event_type": context.event_type,
                "timestamp": context.timestamp,
                "resource": context.resource,
            },
        }
    )

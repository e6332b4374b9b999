"""A user's function that tries to use the deploy pipeline's rights (issue 16).

It calls Google's APIs with the official clients as any function would, with no
credentials of its own: Pub/Sub and Cloud Storage find localcloud through their documented
emulator variables, which the instance's environment sets; the Cloud Run client has no such
variable, so, like the orchestrator's own client factory, it takes ``LOCALCLOUD_GRPC_HOST``
when set and Google's endpoint otherwise. Whoever localcloud takes the caller to be is the
revision's service account: nothing here says who it is.

Each call answers ``{"ok": true}`` or ``{"ok": false, "error": ..., "code": ...,
"message": ...}``: the exception the client raised (``PermissionDenied`` from a gRPC API,
``Forbidden`` from Cloud Storage's JSON API), its HTTP status and its message, so a test
sees exactly what the function's code saw.
"""

import json
import os

import grpc
from google.api_core import exceptions
from google.cloud import pubsub_v1, run_v2, storage
from google.cloud.run_v2.services.services.transports import ServicesGrpcTransport


def services_client() -> run_v2.ServicesClient:
    host = os.environ.get("LOCALCLOUD_GRPC_HOST")
    if not host:
        return run_v2.ServicesClient()
    channel = grpc.insecure_channel(host)
    return run_v2.ServicesClient(transport=ServicesGrpcTransport(channel=channel))


def delete_service(name: str) -> None:
    services_client().delete_service(name=name).result(timeout=60)


def publish(topic: str) -> None:
    pubsub_v1.PublisherClient().publish(topic, b"from a user's function").result(timeout=30)


def read(bucket: str, name: str) -> None:
    storage.Client().bucket(bucket).blob(name).download_as_bytes()


def list_objects(bucket: str) -> None:
    list(storage.Client().list_blobs(bucket))


def attempt(request):
    args = request.args
    what = args.get("what", "")
    try:
        if what == "delete_service":
            delete_service(args["name"])
        elif what == "publish":
            publish(args["topic"])
        elif what == "read":
            read(args["bucket"], args["object"])
        elif what == "list":
            list_objects(args["bucket"])
        else:
            return json.dumps({"error": f"unknown what={what!r}"}), 400
    except exceptions.GoogleAPICallError as exc:
        error = {"error": type(exc).__name__, "code": int(exc.code), "message": exc.message}
        return json.dumps({"ok": False, **error})
    return json.dumps({"ok": True})

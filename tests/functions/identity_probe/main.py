"""Asks, from inside a Cloud Run instance, who it is: the metadata server, google-auth's
own discovery (``google.auth.default()``, ``fetch_id_token``), and localcloud's ``whoami``.

Nothing here names localcloud: the metadata server is found as google-auth finds it, and
the test passes the ``whoami`` URL. ``hold`` keeps a TCP connection open for a while, so a
test can see from outside whom it belongs to.
"""

import json
import os
import socket
import time

import google.auth
import google.auth.transport.requests
import google.oauth2.id_token
import requests
from google.auth.compute_engine import _metadata


def metadata_root() -> str:
    return _metadata._get_metadata_root(False)  # what google-auth itself uses


def probe(request):
    what = request.args.get("what", "")
    if what == "metadata":  # one raw metadata GET: (status, body)
        headers = {} if request.args.get("noflavor") else {"Metadata-Flavor": "Google"}
        response = requests.get(
            metadata_root() + request.args["path"],
            params={k[2:]: v for k, v in request.args.items() if k.startswith("q.")},
            headers=headers,
            timeout=10,
        )
        return json.dumps({"status": response.status_code, "body": response.text})
    if what == "default":  # google.auth.default(), as unchanged user code calls it
        credentials, project = google.auth.default()
        credentials.refresh(google.auth.transport.requests.Request())
        return json.dumps(
            {
                "kind": type(credentials).__module__,
                "email": credentials.service_account_email,
                "project": project,
                "token": credentials.token,
            }
        )
    if what == "id_token":
        token = google.oauth2.id_token.fetch_id_token(
            google.auth.transport.requests.Request(), request.args["audience"]
        )
        return json.dumps({"token": token})
    if what == "whoami":  # localcloud's view of this call; with a token if one is given
        headers = {}
        if request.args.get("token"):
            headers["Authorization"] = f"Bearer {request.args['token']}"
        response = requests.get(request.args["url"], headers=headers, timeout=10)
        return json.dumps({"status": response.status_code, "body": response.json()})
    if what == "hold":  # a connection left open for a while, seen from outside
        conn = socket.create_connection((request.args["host"], int(request.args["port"])))
        time.sleep(float(request.args.get("seconds", "5")))
        local = conn.getsockname()
        conn.close()
        return json.dumps({"local": list(local)})
    return json.dumps({"env": {k: v for k, v in os.environ.items() if "METADATA" in k}})

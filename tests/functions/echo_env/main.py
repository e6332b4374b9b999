"""Echoes what a Cloud Run instance sees: its identity variables, env, pid, sandbox view."""

import json
import os
import time
import uuid

INSTANCE = uuid.uuid4().hex  # one per process: tells instances apart


def echo(request):
    delay = float(request.args.get("sleep", "0"))
    if delay:
        time.sleep(delay)
    probe = request.args.get("exists")
    return json.dumps(
        {
            "service": os.environ.get("K_SERVICE"),
            "revision": os.environ.get("K_REVISION"),
            "configuration": os.environ.get("K_CONFIGURATION"),
            "greeting": os.environ.get("GREETING"),
            "port": os.environ.get("PORT"),
            "pid": os.getpid(),
            "instance": INSTANCE,
            "exists": os.path.exists(probe) if probe else None,
            "forwarded_for": request.headers.get("X-Forwarded-For"),
        }
    )

"""One function with a behaviour per path, so one build serves the Cloud Run suites:
``/crash`` (the worker, or with ``all`` the whole server, dies), ``/echo`` (the body back),
``/stream`` (chunks written ``delay`` apart), anything else a JSON report of the instance,
after ``sleep`` seconds of simulated work."""

import json
import os
import time
import uuid

import flask

INSTANCE = uuid.uuid4().hex  # one per process: tells instances apart
time.sleep(float(os.environ.get("START_DELAY", "0")))  # a slow start, when a test asks
VERSION = "one"


def handle(request):
    path = request.path
    if path == "/crash":
        if request.args.get("all"):  # the server's master too (gunicorn restarts workers)
            with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
                if b"functions" in f.read():
                    os.kill(os.getppid(), 9)
        os._exit(1)
    if path == "/echo":
        data = request.get_data()
        return flask.Response(data, mimetype="application/octet-stream")
    if path == "/stream":
        n = int(request.args.get("n", "5"))
        delay = float(request.args.get("delay", "0.2"))

        def chunks():
            for i in range(n):
                time.sleep(delay)
                yield f"chunk {i} at {time.time()}\n"  # when it was written

        return flask.Response(chunks(), mimetype="text/plain")
    started = time.time()
    delay = float(request.args.get("sleep", "0"))
    if delay:
        time.sleep(delay)
    return json.dumps(
        {
            "instance": INSTANCE,
            "started": started,
            "finished": time.time(),
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "method": request.method,
            "content_length": request.headers.get("Content-Length"),
            "greeting": os.environ.get("GREETING"),
            "version": VERSION,
        }
    )

"""The console's web server: Flask on Werkzeug's threaded server, on loopback by default.

Pages are rendered on the server (Jinja2 templates, package data beside this module); a
little JavaScript (``static/console.js``) refreshes the live part of a page by asking for
it again with ``?fragment=1`` and the ``ETag`` it has, so an unchanged page costs a 304.
Nothing is fetched from the internet: the page works offline.

The page writes nothing but an explicit upload (``POST /deploy``), which must carry the
token of the page it came from and, when the browser says where it comes from, this
server's own origin: another web site open in the same browser cannot deploy through it.
Requests naming another host are refused, so a DNS name pointed at 127.0.0.1 cannot
reach it either.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from flask import Flask, Response, abort, redirect, render_template, request, url_for

from orch.console import readers, views
from orch.console.model import Store
from orchestrator.config import Settings

LOG = logging.getLogger(__name__)
MAX_UPLOAD = 100 * 1024 * 1024  # Cloud Run functions' limit for a source upload (bytes)
DEFAULT_PORT = 8070  # beside localcloud's ports (8085, 4443, 5000, 8090), not on them


@dataclass
class Console:
    """What the pages read from: settings, clients (None: pages show only the store), the
    store the watcher keeps current."""

    settings: Settings
    clients: Any
    store: Store
    token: str = ""
    host: str = "127.0.0.1"  # the address served: requests must name it (or loopback)


def create_app(console: Console) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD
    console.token = console.token or secrets.token_urlsafe(24)
    app.jinja_env.globals.update(
        seconds_text=views.seconds_text,
        time_text=views.time_text,
        settings=console.settings,
        token=console.token,
        local=bool(console.clients is not None and console.clients.env.local),
    )

    @app.before_request
    def same_host_only() -> Any:
        host = (request.host or "").rsplit(":", 1)[0].strip("[]")
        if host not in ("localhost", "127.0.0.1", "::1", console.host.strip("[]")):
            abort(421, f"this console answers only to its own address, not {request.host}")
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("Origin")
            if origin and origin != request.host_url.rstrip("/"):
                abort(403, f"an upload from {origin} is refused: use the console's own page")
        return None

    def errors() -> dict[str, str]:
        return dict(console.store.errors)

    def live(template: str, etag: str | None = None, status: int = 200, **context: Any) -> Any:
        """The page, or only its live part for the page's poll (304 when unchanged)."""
        fragment = request.args.get("fragment") == "1"
        if etag is not None and fragment and request.if_none_match.contains(etag):
            return Response(status=304, headers={"ETag": f'"{etag}"'})
        html = render_template(template, fragment=fragment, errors=errors(), **context)
        response = Response(html, status=status, mimetype="text/html")
        if etag is not None:
            response.set_etag(etag)
        response.headers["Cache-Control"] = "no-cache"
        return response

    @app.get("/")
    def index() -> Any:
        return redirect(url_for("deployments"))

    @app.get("/deployments")
    def deployments() -> Any:
        service = request.args.get("service", "").strip()
        state = request.args.get("state", "").strip()
        try:
            limit = max(1, min(int(request.args.get("limit", "1000")), 10000))
        except ValueError:
            limit = 1000
        now = datetime.now(UTC)
        # Decided before anything is sorted or rendered, so an unchanged poll costs little:
        # while a shown deployment may run, durations grow and the page changes every second.
        running = state not in ("succeeded", "failed") and bool(console.store.unfinished())
        etag = _etag(console.store.version, service, state, limit, now if running else None)
        if request.args.get("fragment") == "1" and request.if_none_match.contains(etag):
            return Response(status=304, headers={"ETag": f'"{etag}"'})
        everything = console.store.deployments()
        shown, total = views.select(everything, service, state, limit)
        return live(
            "deployments.html",
            etag,
            rows=[views.row(d, now) for d in shown],
            total=total,
            services=sorted({d.service for d in everything if d.service}),
            states=views.LIST_STATES,
            service=service,
            state=state,
            limit=limit,
            loaded=console.store.records_loaded,
        )

    @app.get("/deployments/<deployment_id>")
    def deployment(deployment_id: str) -> Any:
        found = console.store.get(deployment_id)
        now = datetime.now(UTC)
        if found is None:
            return live(
                "deployment.html",
                _etag(console.store.version, deployment_id),
                status=200 if not console.store.records_loaded else 404,
                deployment=None,
                deployment_id=deployment_id,
                loaded=console.store.records_loaded,
            )
        running = not found.outcome
        return live(
            "deployment.html",
            _etag(console.store.version, deployment_id, now if running else None),
            deployment=found,
            deployment_id=deployment_id,
            bars=views.timeline(found, now),
            loaded=True,
        )

    @app.get("/services")
    def services() -> Any:
        problem = ""
        found: list[readers.ServiceView] = []
        try:
            found = readers.services(console.clients, console.settings)
        except Exception as exc:
            problem = f"Cloud Run services of {console.settings.location_path} cannot be read: {readers.reason(exc)}"
        return live(
            "services.html", status=502 if problem else 200, services=found, problem=problem
        )

    @app.get("/topics")
    def topics() -> Any:
        problem = ""
        subscription, letters = "", list[readers.DeadLetter]()
        try:
            subscription, letters = readers.dead_letters(console.clients, console.settings)
        except Exception as exc:
            problem = f"the dead-letter subscription cannot be read: {readers.reason(exc)}"
        return live(
            "topics.html",
            events=console.store.recent_events(),
            subscription=subscription,
            letters=letters,
            problem=problem,
        )

    @app.get("/deploy")
    def deploy_form() -> Any:
        return render_template("deploy.html", errors=errors(), problem="", form={})

    @app.post("/deploy")
    def deploy() -> Any:
        if not secrets.compare_digest(request.form.get("token", ""), console.token):
            abort(403, "the upload form has expired: reload the page and choose the file again")
        try:
            data, base = _archive()
            object_name, metadata = _metadata(request.form, base)
            done = readers.upload(console.clients, console.settings, data, object_name, metadata)
        except UploadRefused as refused:
            return render_template(
                "deploy.html", errors=errors(), problem=str(refused), form=request.form
            ), 400
        except Exception as exc:
            problem = (
                f"uploading to gs://{console.settings.sources_bucket} failed: {readers.reason(exc)}"
            )
            return render_template(
                "deploy.html", errors=errors(), problem=problem, form=request.form
            ), 502
        console.store.uploaded(done.deployment_id, metadata.get("service", ""), done.uri)
        return redirect(url_for("deployment", deployment_id=done.deployment_id), code=303)

    @app.errorhandler(Exception)
    def failure(exc: Exception) -> Any:
        from werkzeug.exceptions import HTTPException

        if isinstance(exc, HTTPException):
            code, message = exc.code or 500, exc.description or exc.name
            if code == 413:
                message = f"the upload is larger than {MAX_UPLOAD // (1024 * 1024)} MiB"
        else:
            LOG.exception("console page failed")
            code, message = 500, readers.reason(exc)
        return render_template("error.html", errors=errors(), code=code, message=message), code

    return app


def _etag(*parts: Any) -> str:
    """Changes with the store, and every second while something runs (durations grow)."""
    text = "|".join(str(int(p.timestamp())) if isinstance(p, datetime) else str(p) for p in parts)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class UploadRefused(ValueError):
    """What was chosen cannot be uploaded; the form says why."""


def _archive() -> tuple[bytes, str]:
    """(zip bytes, base name) of the chosen zip, or of the chosen folder's files zipped the
    way ``orch deploy DIR`` zips a directory (``.gcloudignore`` and all)."""
    from orch import packing

    archive = request.files.get("archive")
    if archive is not None and archive.filename:
        data = archive.read()
        if not data:
            raise UploadRefused(f"{archive.filename} is empty")
        name = PurePosixPath(archive.filename.replace("\\", "/")).name
        base = name[: -len(".zip")] if name.lower().endswith(".zip") else PurePosixPath(name).stem
        return data, base
    files = [f for f in request.files.getlist("folder") if f.filename]
    if not files:
        raise UploadRefused("choose a zip file or a folder to deploy")
    with tempfile.TemporaryDirectory(prefix="orch-console-") as scratch:
        root = Path(scratch)
        top = ""
        for item in files:
            parts = PurePosixPath(str(item.filename).replace("\\", "/")).parts
            if not parts or any(p in ("", ".", "..") for p in parts) or parts[0] == "/":
                raise UploadRefused(f"{item.filename!r} is not a path inside the folder")
            top = top or (parts[0] if len(parts) > 1 else "source")
            inside = parts[1:] if len(parts) > 1 else parts
            target = root.joinpath(top, *inside)
            target.parent.mkdir(parents=True, exist_ok=True)
            item.save(target)
        try:
            return packing.pack(root / top)
        except packing.PackingError as exc:
            raise UploadRefused(str(exc)) from None


def _metadata(form: Any, base: str) -> tuple[str, dict[str, str]]:
    """(object name, object metadata) from the form: the service name and ``key=value``
    overrides, checked as intake will check them, so a typo is said here, before upload."""
    from orchestrator import manifest

    metadata: dict[str, str] = {}
    for number, line in enumerate(str(form.get("overrides", "")).splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        key, eq, value = text.partition("=")
        if not eq or not key.strip():
            raise UploadRefused(f"overrides, line {number}: {text!r} is not key=value")
        metadata[key.strip()] = value.strip()
    service = str(form.get("service", "")).strip()
    if service:
        if not manifest.SERVICE_RE.fullmatch(service):
            raise UploadRefused(f"service: {manifest.SERVICE_RULE}")
        metadata["service"] = service
    try:
        manifest.object_metadata_overrides(metadata)
    except manifest.ManifestError as exc:
        raise UploadRefused(str(exc)) from None
    try:
        name = service or manifest.service_from_archive(f"{base}.zip")
    except manifest.ManifestError as exc:
        raise UploadRefused(str(exc)) from None
    return f"{name}.zip", metadata


def serve(console: Console, host: str, port: int) -> Any:
    """A started threaded server (``.serve_forever()``; ``.shutdown()`` to stop)."""
    from werkzeug.serving import make_server

    # One line per request would bury the terminal: the pages poll every second or two.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    return make_server(host, port, create_app(console), threaded=True)

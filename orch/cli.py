"""``orch``: the orchestrator's command line.

``orch local ...`` runs localcloud; ``deploy``, ``request``, ``status``, ``services``,
``url``, ``call``, ``logs`` and ``console`` (a web page, ``orch/console/``) use the
pipeline, on localcloud or on Google Cloud alike.

Flags mirror environment variables (``--data`` is ``LOCALCLOUD_DATA``), so a script and
a person configure it the same way.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from localcloud.core.config import Config, ConfigError
from orchestrator.config import ENV_VARS, Settings

UP_TIMEOUT = 90.0
# How long `local up` waits for a localcloud that is stopping (SIGTERM: it stops its
# children and flushes the database; SIGKILL: the kernel lets go within milliseconds).
STOP_TIMEOUT = 30.0
CONSOLE_PORT = (
    8070  # orch console's default port (orch.console.DEFAULT_PORT); not localcloud's 8090
)


def _config(data: str | None) -> Config:
    env = dict(os.environ)
    if data:
        env["LOCALCLOUD_DATA"] = data
    try:
        return Config.from_env(env)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _state(config: Config) -> dict | None:
    from localcloud.supervisor import read_state

    return read_state(config)


def _health(config: Config, state: dict) -> dict | None:
    url = state["addresses"]["http"] + "/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            return json.load(exc)
        except ValueError:
            return None
    except OSError:
        return None


def _print_addresses(state: dict) -> None:
    a = state["addresses"]
    click.echo(f"  Pub/Sub, Workflows, Build, Run, Eventarc (gRPC)  {a['grpc']}")
    click.echo(f"  Cloud Storage (JSON API)                         {a['storage']}")
    click.echo(f"  Artifact Registry (OCI registry)                 {a['registry']}")
    click.echo(f"  OIDC issuer keys (JWKS)                          {a['oidc_jwks']}")
    if "run_ingress" in a:
        click.echo(f"  Cloud Run ingress (Host: SERVICE.run.localhost)  {a['run_ingress']}")
    click.echo(f"  data directory                                   {state['data_dir']}")


@click.group()
def main() -> None:
    """The serverless deploy orchestrator."""


@main.group()
def local() -> None:
    """Run localcloud, the local Google Cloud, on this machine."""


data_option = click.option(
    "--data", envvar="LOCALCLOUD_DATA", help="Data directory [env LOCALCLOUD_DATA, ./.localcloud]."
)


@local.command()
@data_option
@click.option(
    "--pipeline/--no-pipeline",
    default=True,
    show_default=True,
    help="Provision the deploy pipeline (bucket, topics, functions, workflow, triggers).",
)
def up(data: str | None, pipeline: bool) -> None:
    """Start localcloud, wait until every part is healthy, then provision the pipeline."""
    config = _config(data)
    _warn_if_exposed(config.host)
    state = _running(config)
    if state is not None:
        click.echo(f"localcloud is already running (pid {state['pid']}) on {config.data_dir}")
        _print_addresses(state)
    else:
        state = _start(config)
    if pipeline:
        _provision(state)


def _running(config: Config) -> dict | None:
    """The healthy localcloud of this data directory, or None when nothing holds its lock.

    Decided by the lock (``supervisor.lock_holder``): ``state.json`` outlives a SIGKILL,
    and its pid may be a process still dying. A holder on its way out is waited for until
    the kernel lets go of its lock; one starting, until it is healthy; one that stays
    unhealthy is reported, with what to do, rather than provisioned against.
    """
    from localcloud.core.procs import going
    from localcloud.supervisor import LOCK, UNSEEN, lock_holder

    lock = config.data_dir / LOCK
    deadline = time.monotonic() + UP_TIMEOUT
    said = None
    while True:
        holder = lock_holder(config)
        if holder is None:
            return None
        state = _state(config)
        health = _health(config, state) if state is not None else None
        if state is not None and health and health.get("status") == "ok":
            return state
        if health:  # it answers, and says which part is not well
            parts = ", ".join(f"{k} {v}" for k, v in sorted(health.get("parts", {}).items()))
            raise click.ClickException(
                f"localcloud (pid {holder}) on {config.data_dir} runs but is not healthy "
                f"({parts}); see `orch local logs`, or restart it: "
                "`orch local down && orch local up`"
            )
        stopping = holder != UNSEEN and going(holder)
        if said != stopping:
            said = stopping
            what = "is stopping; waiting for it to exit" if stopping else "is starting; waiting"
            click.echo(f"localcloud (pid {holder or '?'}) on {config.data_dir} {what} ...")
            deadline = time.monotonic() + (STOP_TIMEOUT if stopping else UP_TIMEOUT)
        if time.monotonic() > deadline:
            who = f"pid {holder}" if holder != UNSEEN else "a process not visible here"
            if stopping:
                advice = f"wait for it, or end it: kill -9 {holder}"
            else:
                advice = f"see `orch local logs`; stop it with `kill {holder or 'PID'}`"
            raise click.ClickException(
                f"{lock} is still held by {who}, which is not a healthy localcloud: {advice}"
            )
        time.sleep(0.1)


def _warn_if_exposed(host: str) -> None:
    """Off loopback other machines reach localcloud's ports. Its gRPC APIs serve them only
    with a token localcloud minted (a caller it cannot trace to this machine is refused),
    but Cloud Storage and the registry do not check their callers yet."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        click.echo(
            f"warning: LOCALCLOUD_HOST={host} is not a loopback address: every machine that "
            "can reach it can read and write localcloud's Cloud Storage and registry (its "
            "gRPC APIs refuse callers from other machines without a token)",
            err=True,
        )


def _start(config: Config) -> dict:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    (config.data_dir / "logs").mkdir(exist_ok=True)
    log_path = config.data_dir / "logs" / "localcloud.log"
    env = {**os.environ, "LOCALCLOUD_DATA": str(config.data_dir)}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "localcloud", "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
        )
    click.echo(f"starting localcloud (pid {process.pid}) on {config.data_dir} ...")
    deadline = time.monotonic() + UP_TIMEOUT
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
            raise click.ClickException(f"localcloud exited with code {code}:\n{tail}")
        state = _state(config)
        if state is not None and state["pid"] == process.pid:
            health = _health(config, state)
            if health and health.get("status") == "ok":
                click.echo("localcloud is up:")
                _print_addresses(state)
                click.echo('point clients at it with:  eval "$(orch local env)"')
                click.echo("point gcloud at it with:   orch local gcloud")
                return state
        time.sleep(0.2)
    process.terminate()
    raise click.ClickException(
        f"localcloud did not become healthy in {UP_TIMEOUT:g}s; see {log_path}"
    )


def _provision(state: dict) -> None:
    """Provision the pipeline through localcloud's APIs (what Terraform does in the cloud)."""
    from google.api_core import exceptions

    from orch.provision import provision
    from orchestrator.clients import Clients, Environment
    from orchestrator.config import Settings

    env = {**os.environ, **state["env"]}
    settings = Settings.from_env(env)
    click.echo(f"provisioning the deploy pipeline in {settings.project}/{settings.region} ...")
    started = time.monotonic()
    try:
        changes = provision(settings, Clients(Environment.from_env(env)), log=click.echo)
    except (exceptions.GoogleAPICallError, exceptions.RetryError, OSError) as exc:
        raise click.ClickException(
            f"provisioning the pipeline failed: {_api_error(exc).message}; localcloud's "
            "health: `orch local status`; run `orch local up` again once it is healthy"
        ) from None
    changed = sum(c.action != "unchanged" for c in changes)
    click.echo(
        f"pipeline ready in {time.monotonic() - started:.1f}s ({changed} of {len(changes)} "
        f"resources changed); drop a zip into gs://{settings.sources_bucket}/ or run "
        "`orch deploy DIR`"
    )
    click.echo(
        f'watch them in a browser: eval "$(orch local env)" && orch console  '
        f"(serves http://127.0.0.1:{CONSOLE_PORT}/)"
    )


@local.command()
@data_option
@click.option("--timeout", default=30.0, show_default=True, help="Seconds before SIGKILL.")
def down(data: str | None, timeout: float) -> None:
    """Stop localcloud (SIGTERM, then SIGKILL after --timeout)."""
    config = _config(data)
    state = _state(config)
    if state is None:
        click.echo(f"localcloud is not running on {config.data_dir}")
        return
    pid = state["pid"]
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            click.echo(f"localcloud (pid {pid}) stopped")
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    click.echo(f"localcloud (pid {pid}) did not stop in {timeout:g}s; killed")


@local.command()
@data_option
def status(data: str | None) -> None:
    """Say whether localcloud runs, and the health of each part."""
    config = _config(data)
    state = _state(config)
    if state is None:
        click.echo(f"localcloud is not running on {config.data_dir}")
        sys.exit(3)
    health = _health(config, state) or {"status": "unreachable", "parts": {}}
    click.echo(f"localcloud (pid {state['pid']}) is {health['status']}")
    for part, value in sorted(health.get("parts", {}).items()):
        click.echo(f"  {part:<10} {value}")
    _print_sandbox(health.get("sandbox"))
    _print_addresses(state)
    if health["status"] != "ok":
        sys.exit(1)


def _print_sandbox(report: dict | None) -> None:
    """How Cloud Run instances are contained here, and what this machine cannot enforce."""
    if not report:
        return
    click.echo(
        f"  sandbox    user {report.get('user')}, network {report.get('network')}, cgroups "
        f"{report.get('cgroups') or 'none'}, seccomp {'on' if report.get('seccomp') else 'off'}"
    )
    for what, why in (report.get("not_enforced") or {}).items():
        click.echo(f"  warning    {what} not enforced: {why}")


@local.command()
@data_option
def env(data: str | None) -> None:
    """Print the variables that point clients at localcloud, for eval."""
    config = _config(data)
    state = _state(config)
    variables = state["env"] if state else config.client_env()
    click.echo("export " + " ".join(f"{k}={v}" for k, v in variables.items()))


@local.command("gcloud")
@data_option
@click.option("--activate", is_flag=True, help="Also make it gcloud's active configuration.")
def gcloud_config(data: str | None, activate: bool) -> None:
    """Point a gcloud configuration named `localcloud` at localcloud (created or updated;
    the active configuration stays as it is unless --activate)."""
    from orch import gcloud

    config = _config(data)
    state = _state(config)
    addresses = state["addresses"] if state else {}
    env = state["env"] if state else config.client_env()
    values = gcloud.properties(
        addresses.get("http", config.http_url),
        addresses.get("storage", f"http://{config.storage_address}"),
        env.get("GOOGLE_CLOUD_PROJECT", config.project),
        config.region,
    )
    try:
        written = gcloud.write(values, activate=activate)
    except (gcloud.GcloudError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if state is None:
        click.echo(f"localcloud is not running on {config.data_dir}; its ports from the settings")
    click.echo(f"gcloud configuration '{gcloud.NAME}' written to {written.path}")
    if written.active == gcloud.NAME:
        click.echo("it is the active configuration: plain `gcloud ...` uses localcloud")
    else:
        click.echo(
            f"the active configuration is still '{written.active}'; use localcloud with\n"
            f"  gcloud --configuration={gcloud.NAME} run services list\n"
            f"or for this shell:  export CLOUDSDK_ACTIVE_CONFIG_NAME={gcloud.NAME}\n"
            f"or for every shell: gcloud config configurations activate {gcloud.NAME}"
        )
    if not written.verified:
        click.echo("gcloud is not installed here: the configuration was not checked by gcloud")


@local.command()
@data_option
@click.argument("part", required=False)
@click.option("-n", "--lines", default=50, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("--build", "build_id", help="Show one Cloud Build build's log.")
@click.option("--service", help="Show a Cloud Run service's instance logs (every revision).")
def logs(
    data: str | None,
    part: str | None,
    lines: int,
    follow: bool,
    build_id: str | None,
    service: str | None,
) -> None:
    """Show the logs of localcloud (PART: localcloud, storage, registry; default all)."""
    config = _config(data)
    log_dir = config.data_dir / "logs"
    files = sorted(log_dir.glob("*.log")) if log_dir.exists() else []
    if service:
        # Revision logs are named <service>-<5 digits>-<suffix>.log.
        prefix = len(service) + 1
        files = sorted(
            p
            for p in (log_dir / "run").glob(f"{service}-*.log")
            if p.stem[prefix : prefix + 5].isdigit()
        )
        if not files:
            raise click.ClickException(
                f"no instance logs for service {service!r} in {log_dir / 'run'}"
            )
    elif build_id:
        files = [log_dir / "builds" / f"{build_id}.log"]
        if not files[0].exists():
            raise click.ClickException(f"no log for build {build_id!r} in {log_dir / 'builds'}")
    elif part:
        files = [f for f in files if f.stem == part]
        if not files:
            raise click.ClickException(f"no log named {part!r} in {log_dir}")
    if not files:
        raise click.ClickException(f"no logs in {log_dir}")
    for path in files:
        click.echo(f"==> {path} <==")
        for line in path.read_text(errors="replace").splitlines()[-lines:]:
            click.echo(line)
    if follow:
        _follow(files)


def _follow(files: list[Path]) -> None:
    handles = {path: open(path, errors="replace") for path in files}  # noqa: SIM115
    for handle in handles.values():
        handle.seek(0, os.SEEK_END)
    try:
        while True:
            for path, handle in handles.items():
                for line in handle:
                    click.echo(f"{path.stem}: {line}", nl=False)
            time.sleep(0.3)
    except KeyboardInterrupt:
        pass


# ============================================================== the pipeline's commands
#
# Names (project, region, bucket, topics) come from orchestrator.config.Settings: a config
# file (ORCH_CONFIG), the environment, then defaults; --project/--region/--bucket override.
# Clients come from orchestrator.clients, the one place that knows localcloud from Google.


def _settings(project: str | None, region: str | None, bucket: str | None) -> Settings:
    env = dict(os.environ)
    for value, var in ((project, "project"), (region, "region"), (bucket, "sources_bucket")):
        if value:
            env[ENV_VARS[var]] = value
    from orchestrator.clients import ProjectNotSet

    try:
        return Settings.from_env(env)
    except ProjectNotSet as exc:
        raise click.ClickException(str(exc)) from None


def with_settings(function: Callable[..., Any]) -> Callable[..., Any]:
    """Add --project, --region and --bucket; the command receives ``settings``."""

    @click.option("--project", help="Google Cloud project [env GOOGLE_CLOUD_PROJECT].")
    @click.option("--region", help="Region of the pipeline and services [env ORCH_REGION].")
    @click.option("--bucket", help="The sources bucket [env ORCH_SOURCES_BUCKET].")
    @functools.wraps(function)
    def wrapper(
        *args: Any, project: str | None, region: str | None, bucket: str | None, **kwargs: Any
    ) -> Any:
        return function(*args, settings=_settings(project, region, bucket), **kwargs)

    return wrapper


def _clients() -> Any:
    from orchestrator import clients

    try:
        return clients.default()
    except clients.ProjectNotSet as exc:
        raise click.ClickException(str(exc)) from None


def _api_error(exc: Exception) -> click.ClickException:
    message = getattr(exc, "message", None) or str(exc)
    return click.ClickException(f"{type(exc).__name__}: {message}")


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1] if name else ""


def _start_and_follow(
    clients: Any,
    settings: Settings,
    start: Callable[[], str],
    *,
    service: str | None,
    no_wait: bool,
    timeout: float,
) -> None:
    """Run ``start`` (which returns the deployment id) and follow that deployment."""
    from google.api_core import exceptions

    from orch import follow

    if no_wait:
        try:
            click.echo(start())
        except exceptions.GoogleAPICallError as exc:
            raise _api_error(exc) from None
        return
    # Subscribe before starting, so the first event cannot be missed.
    filter = f"attributes.service = {follow.quote(service)}" if service else ""
    stream = _open_stream(clients, settings, filter)
    deployment_id = ""
    try:
        deployment_id = start()
        console = follow.make_console()
        with follow.Progress(console, title=f"deployment {deployment_id}") as progress:
            outcome = follow.follow_deployment(
                stream,
                deployment_id,
                progress.update,
                timeout=timeout,
                records=lambda: follow.outcome_from_records(clients, settings, deployment_id),
            )
    except exceptions.GoogleAPICallError as exc:
        raise _api_error(exc) from None
    except KeyboardInterrupt:
        if deployment_id:
            click.echo(
                f"\nstopped following; the deployment goes on: orch status {deployment_id}",
                err=True,
            )
        raise SystemExit(130) from None
    finally:
        stream.close()
    _report(outcome)


def _report(outcome: Any) -> None:
    if outcome.ok:
        revision = f" (revision {_short(outcome.revision)})" if outcome.revision else ""
        click.echo(f"deployed {outcome.service}{revision}")
        if outcome.url:
            click.echo(f"URL: {outcome.url}")
        return
    where = f" at step {outcome.step}" if outcome.step and not outcome.timed_out else ""
    code = f"{outcome.error_code}: " if outcome.error_code else ""
    click.echo(
        f"error: deployment {outcome.deployment_id} failed{where}: {code}{outcome.message}",
        err=True,
    )
    raise SystemExit(1)


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--service", help="Service name (default: the directory's or zip's name).")
@click.option("--no-wait", is_flag=True, help="Print the deployment id and return.")
@click.option("--timeout", default=900.0, show_default=True, help="Seconds to follow.")
@with_settings
def deploy(
    path: Path, service: str | None, no_wait: bool, timeout: float, settings: Settings
) -> None:
    """Zip PATH (a directory, or use a .zip as is), upload it and follow the deployment.

    The archive goes to gs://SOURCES_BUCKET/NAME.zip; --service also sets the object's
    `service` metadata, which overrides function.yaml. Exits 1 if the deployment fails.
    """
    from google.api_core.exceptions import NotFound

    from orch import packing
    from orchestrator import manifest

    if service is not None and not manifest.SERVICE_RE.fullmatch(service):
        raise click.BadParameter(manifest.SERVICE_RULE, param_hint="--service")
    try:
        data, base = packing.pack(path)
    except packing.PackingError as exc:
        raise click.ClickException(str(exc)) from None
    object_name = f"{service or base}.zip"
    clients = _clients()

    def upload() -> str:
        blob = clients.storage.bucket(settings.sources_bucket).blob(object_name)
        if service:
            blob.metadata = {"service": service}
        try:
            blob.upload_from_string(data, content_type="application/zip")
        except NotFound:
            raise click.ClickException(
                f"the sources bucket gs://{settings.sources_bucket} does not exist: is the "
                "pipeline provisioned (orch local up, or terraform apply)?"
            ) from None
        click.echo(
            f"uploaded gs://{settings.sources_bucket}/{object_name} "
            f"(generation {blob.generation}, {len(data)} bytes)",
            err=True,
        )
        return manifest.deployment_id(settings.sources_bucket, object_name, blob.generation)

    _start_and_follow(clients, settings, upload, service=service, no_wait=no_wait, timeout=timeout)


def _parse_env_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        if not eq or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--env")
        env[name] = value
    return env


@main.command()
@click.argument("source")
@click.option("--service", help="Service name (overrides function.yaml).")
@click.option("--env", "env_pairs", multiple=True, metavar="NAME=VALUE", help="Repeatable.")
@click.option("--allow-unauthenticated/--no-allow-unauthenticated", default=None)
@click.option("--min-instances", type=int)
@click.option("--max-instances", type=int)
@click.option("--concurrency", type=int)
@click.option("--entry-point")
@click.option("--signature-type", type=click.Choice(["http", "cloudevent", "event"]))
@click.option("--no-wait", is_flag=True, help="Print the deployment id and return.")
@click.option("--timeout", default=900.0, show_default=True, help="Seconds to follow.")
@with_settings
def request(
    source: str,
    service: str | None,
    env_pairs: tuple[str, ...],
    allow_unauthenticated: bool | None,
    min_instances: int | None,
    max_instances: int | None,
    concurrency: int | None,
    entry_point: str | None,
    signature_type: str | None,
    no_wait: bool,
    timeout: float,
    settings: Settings,
) -> None:
    """Publish a deploy request for SOURCE and follow the deployment.

    SOURCE is gs://BUCKET/OBJECT[#GENERATION], or an object name in the sources bucket.
    Without a generation the object's current one is pinned, so the request deploys exactly
    what is there now.
    """
    from google.api_core import exceptions

    from orchestrator import manifest

    fields: dict[str, Any] = {}
    for key, value in (
        ("service", service),
        ("entry_point", entry_point),
        ("signature_type", signature_type),
        ("min_instances", min_instances),
        ("max_instances", max_instances),
        ("concurrency", concurrency),
        ("allow_unauthenticated", allow_unauthenticated),
    ):
        if value is not None:
            fields[key] = value
    if env_pairs:
        fields["env"] = _parse_env_pairs(env_pairs)
    if not source.startswith("gs://"):
        source = f"gs://{settings.sources_bucket}/{source}"
    try:
        parsed = manifest.Source.parse(source)
        manifest.validate_request({"source": source, **fields})
    except manifest.ManifestError as exc:
        raise click.ClickException(str(exc)) from None
    clients = _clients()

    def publish() -> str:
        generation = parsed.generation
        if generation is None:
            blob = clients.storage.bucket(parsed.bucket).get_blob(parsed.object)
            if blob is None:
                raise click.ClickException(f"no object {parsed.uri()}")
            generation = int(blob.generation)
        pinned = manifest.Source(parsed.bucket, parsed.object, generation)
        document = {"source": pinned.uri(), **fields}
        topic = settings.topic_path(settings.requests_topic)
        try:
            message_id = clients.publisher.publish(
                topic, json.dumps(document, sort_keys=True).encode()
            ).result(timeout=60)
        except exceptions.NotFound:
            raise click.ClickException(f"the requests topic {topic} does not exist") from None
        click.echo(f"published deploy request {message_id} for {pinned.uri()}", err=True)
        return manifest.deployment_id(parsed.bucket, parsed.object, generation, fields or None)

    _start_and_follow(clients, settings, publish, service=service, no_wait=no_wait, timeout=timeout)


_EXECUTION_STATES = {"ACTIVE": "running", "QUEUED": "queued", "CANCELLED": "cancelled"}


def _execution_summary(clients: Any, name: str) -> tuple[str, Any, Any]:
    """(state word, result JSON or None, error payload or None) of a workflow execution."""
    execution = clients.executions.get_execution(name=name)
    state = execution.state.name
    result = None
    if execution.result:
        try:
            result = json.loads(execution.result)
        except ValueError:
            result = execution.result
    error = execution.error.payload if state == "FAILED" else None
    if state == "SUCCEEDED":
        word = result.get("state", "succeeded") if isinstance(result, dict) else "succeeded"
    elif state == "FAILED":
        word = "failed"
    else:
        word = _EXECUTION_STATES.get(state, state.lower())
    return word, result, error


def _print_event_line(event: Any) -> None:
    line = f"{event.time or '-':<24} {event.deployment_id}  {event.service:<20} "
    line += f"{event.step:<13} {event.state:<9}"
    if event.error_code:
        line += f" {event.error_code}:"
    if event.message:
        line += f" {event.message}"
    click.echo(line.rstrip())


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@main.command("status")
@click.argument("deployment_id", required=False)
@click.option("-f", "--follow", "follow_events", is_flag=True, help="Print events live.")
@click.option("--limit", default=20, show_default=True, help="Deployments to list.")
@with_settings
def deployment_status(
    deployment_id: str | None, follow_events: bool, limit: int, settings: Settings
) -> None:
    """Show one deployment (claim and workflow execution), or list recent ones.

    With --follow, print status events as they arrive (one deployment's until it ends, or
    every deployment's until Ctrl-C), through a temporary filtered subscription.
    """
    from google.api_core import exceptions

    from orchestrator.records import DEPLOYMENTS_PREFIX, claim_name

    clients = _clients()
    if follow_events:
        _follow_status(clients, settings, deployment_id)
        return
    records = settings.records_bucket
    try:
        if deployment_id:
            blob = clients.storage.bucket(records).get_blob(claim_name(deployment_id))
            if blob is None:
                raise click.ClickException(f"no deployment {deployment_id} in gs://{records}")
            claim = json.loads(blob.download_as_bytes())
            _print_claim(clients, claim)
            return
        blobs = [
            b
            for b in clients.storage.list_blobs(records, prefix=DEPLOYMENTS_PREFIX)
            if b.name.endswith("/claim.json")
        ]
    except exceptions.GoogleAPICallError as exc:
        raise _api_error(exc) from None
    blobs.sort(
        key=lambda b: (b.time_created.timestamp() if b.time_created else 0.0, b.name),
        reverse=True,
    )
    rows = [["CREATED", "DEPLOYMENT", "SERVICE", "STATE", "SOURCE"]]
    for blob in blobs[:limit]:
        try:
            claim = json.loads(blob.download_as_bytes())
        except (ValueError, exceptions.GoogleAPICallError):
            continue
        state = claim.get("state") or "?"
        if state != "failed" and claim.get("execution"):
            try:
                state = _execution_summary(clients, claim["execution"])[0]
            except exceptions.GoogleAPICallError:
                state = "unknown"
        rows.append(
            [
                str(claim.get("created") or ""),
                str(claim.get("deployment_id") or ""),
                str(claim.get("service") or ""),
                str(state),
                str(claim.get("source") or ""),
            ]
        )
    if len(rows) == 1:
        click.echo(f"no deployments in gs://{records}")
        return
    _table(rows)


def _print_claim(clients: Any, claim: dict[str, Any]) -> None:
    from google.api_core import exceptions

    for key in ("deployment_id", "service", "source", "created", "state"):
        click.echo(f"{key + ':':<15}{claim.get(key) or ''}")
    if claim.get("error"):
        error = claim["error"]
        click.echo(f"{'error:':<15}{error.get('code', '')}: {error.get('message', '')}")
    execution = claim.get("execution")
    if not execution:
        return
    click.echo(f"{'execution:':<15}{execution}")
    try:
        word, result, error = _execution_summary(clients, execution)
    except exceptions.GoogleAPICallError as exc:
        click.echo(f"{'workflow:':<15}unavailable ({_api_error(exc).message})")
        return
    click.echo(f"{'workflow:':<15}{word}")
    if result is not None:
        text = (
            json.dumps(result, indent=2, sort_keys=True) if not isinstance(result, str) else result
        )
        click.echo("result:")
        for line in text.splitlines():
            click.echo(f"  {line}")
    if error:
        click.echo(f"{'error:':<15}{error}")


def _open_stream(clients: Any, settings: Settings, filter: str) -> Any:
    """A temporary filtered subscription on the status topic, or a message saying why not."""
    from google.api_core import exceptions

    from orch import follow

    stream = follow.StatusStream(clients, settings, filter)
    try:
        stream.open()
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    except exceptions.GoogleAPICallError as exc:
        raise _api_error(exc) from None
    return stream


def _follow_status(clients: Any, settings: Settings, deployment_id: str | None) -> None:

    from orch import follow

    filter = f"attributes.deployment_id = {follow.quote(deployment_id)}" if deployment_id else ""
    stream = _open_stream(clients, settings, filter)
    outcome = None
    try:
        if deployment_id:
            click.echo(f"following deployment {deployment_id} (Ctrl-C to stop)", err=True)
            outcome = follow.follow_deployment(
                stream,
                deployment_id,
                _print_event_line,
                timeout=float("inf"),
                records=lambda: follow.outcome_from_records(clients, settings, deployment_id),
            )
        else:
            click.echo(f"following {stream.topic} (Ctrl-C to stop)", err=True)
            while True:
                event = stream.get(3600)
                if event is not None:
                    _print_event_line(event)
    except KeyboardInterrupt:
        return
    finally:
        stream.close()
    if outcome is not None:
        _report(outcome)


def _get_service(clients: Any, settings: Settings, service: str) -> Any:
    from google.api_core import exceptions

    try:
        return clients.run_services.get_service(name=settings.service_path(service))
    except exceptions.NotFound:
        raise click.ClickException(f"no service {service!r} in {settings.location_path}") from None
    except exceptions.GoogleAPICallError as exc:
        raise _api_error(exc) from None


@main.command()
@with_settings
def services(settings: Settings) -> None:
    """List the Cloud Run services in the region: URL, ready revision, deployment id."""
    from google.api_core import exceptions

    clients = _clients()
    try:
        found = list(clients.run_services.list_services(parent=settings.location_path))
    except exceptions.GoogleAPICallError as exc:
        raise _api_error(exc) from None
    if not found:
        click.echo(f"no services in {settings.location_path}")
        return
    rows = [["SERVICE", "URL", "READY REVISION", "DEPLOYMENT"]]
    for svc in sorted(found, key=lambda s: s.name):
        rows.append(
            [
                _short(svc.name),
                svc.uri or "-",
                _short(svc.latest_ready_revision) or "-",
                svc.labels.get("deployment-id", "-"),
            ]
        )
    _table(rows)


@main.command("console")
@click.option(
    "--port", default=CONSOLE_PORT, show_default=True, help="Port to serve on (0: any free)."
)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to serve on (keep loopback)."
)
@with_settings
def console_command(port: int, host: str, settings: Settings) -> None:
    """Serve a web page where deployments are watched: timelines, services, topics, and
    deploy from the page. Reads through the same clients as `orch status`; it opens nothing
    by itself: open the address it prints."""
    from orch import console

    clients = _clients()
    try:
        running = console.start(clients, settings, host=host, port=port)
    except OSError as exc:
        raise click.ClickException(
            f"cannot serve on {host}:{port}: {exc.strerror or exc}; choose another --port"
        ) from None
    click.echo(f"orch console for {settings.project}/{settings.region}: {running.url}")
    click.echo("(Ctrl-C to stop)", err=True)
    try:
        running.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()


@main.command()
@click.argument("service")
@with_settings
def url(service: str, settings: Settings) -> None:
    """Print SERVICE's URL."""
    svc = _get_service(_clients(), settings, service)
    if not svc.uri:
        raise click.ClickException(f"service {service!r} has no URL yet")
    click.echo(svc.uri)


@main.command()
@click.argument("service")
@click.option("--data", "-d", help="Request body: JSON (sent as application/json) or text.")
@click.option("--path", default="/", show_default=True)
@click.option("--method", "-X", help="HTTP method [default: POST with --data, else GET].")
@click.option("--timeout", default=300.0, show_default=True)
@with_settings
def call(
    service: str,
    data: str | None,
    path: str,
    method: str | None,
    timeout: float,
    settings: Settings,
) -> None:
    """Call SERVICE over HTTP and print the answer; exits 1 on an HTTP error.

    The first request goes without credentials; if the service answers 401 or 403 (it is
    private) it is sent again with an ID token whose audience is the service's URL (from
    localcloud's metadata endpoint, or Google's credentials).
    """
    import requests

    clients = _clients()
    svc = _get_service(clients, settings, service)
    if not svc.uri:
        raise click.ClickException(f"service {service!r} has no URL yet")
    target = svc.uri.rstrip("/") + "/" + path.lstrip("/")
    headers: dict[str, str] = {}
    body: bytes | None = None
    if data is not None:
        body = data.encode()
        try:
            json.loads(data)
            headers["Content-Type"] = "application/json"
        except ValueError:
            headers["Content-Type"] = "text/plain; charset=utf-8"
    verb = (method or ("POST" if data is not None else "GET")).upper()

    def send(extra: dict[str, str]) -> Any:
        try:
            return clients.http.request(
                verb, target, data=body, headers={**headers, **extra}, timeout=timeout
            )
        except requests.RequestException as exc:
            raise click.ClickException(f"calling {target}: {exc}") from None

    response = send({})
    if response.status_code in (401, 403):
        try:
            token = clients.id_token(svc.uri)
        except Exception as exc:  # requests, google-auth or gcloud: say why, briefly
            raise click.ClickException(f"cannot get an ID token for {svc.uri}: {exc}") from None
        response = send({"Authorization": f"Bearer {token}"})
    text = response.text
    click.echo(text, nl=not text.endswith("\n"))
    if response.status_code >= 400:
        click.echo(f"HTTP {response.status_code} from {target}", err=True)
        raise SystemExit(1)


@main.command("logs")
@click.argument("service")
@click.option("-n", "--lines", default=50, show_default=True, help="Lines per revision.")
@with_settings
def service_logs(service: str, lines: int, settings: Settings) -> None:
    """Show SERVICE's logs: each revision's tail locally, its log URL on Google Cloud."""
    from google.api_core import exceptions

    clients = _clients()
    try:
        revisions = list(
            clients.run_revisions.list_revisions(parent=settings.service_path(service))
        )
    except exceptions.NotFound:
        raise click.ClickException(f"no service {service!r} in {settings.location_path}") from None
    except exceptions.GoogleAPICallError as exc:
        raise _api_error(exc) from None
    if not revisions:
        raise click.ClickException(f"service {service!r} has no revisions")
    revisions.sort(key=lambda r: (r.create_time.timestamp() if r.create_time else 0, r.name))
    for revision in revisions:
        name = _short(revision.name)
        uri = revision.log_uri
        log_file = clients.env.log_file(uri)
        if not uri:
            click.echo(f"==> {name}: no log URI <==")
        elif log_file is None:
            click.echo(f"==> {name} <==\n{uri}")
        else:
            if not log_file.is_file():
                click.echo(f"==> {name}: no log yet ({log_file}) <==")
                continue
            click.echo(f"==> {name} ({log_file}) <==")
            for line in log_file.read_text(errors="replace").splitlines()[-lines:]:
                click.echo(line)


if __name__ == "__main__":
    main()

"""``orch``: the orchestrator's command line. ``orch local ...`` runs localcloud.

Flags mirror environment variables (``--data`` is ``LOCALCLOUD_DATA``), so a script and
a person configure it the same way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import click

from localcloud.core.config import Config, ConfigError

UP_TIMEOUT = 90.0


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
def up(data: str | None) -> None:
    """Start localcloud in the background and wait until every part is healthy."""
    config = _config(data)
    state = _state(config)
    if state is not None:
        click.echo(f"localcloud is already running (pid {state['pid']}) on {config.data_dir}")
        _print_addresses(state)
        return
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
                return
        time.sleep(0.2)
    process.terminate()
    raise click.ClickException(
        f"localcloud did not become healthy in {UP_TIMEOUT:g}s; see {log_path}"
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
    _print_addresses(state)
    if health["status"] != "ok":
        sys.exit(1)


@local.command()
@data_option
def env(data: str | None) -> None:
    """Print the variables that point clients at localcloud, for eval."""
    config = _config(data)
    state = _state(config)
    variables = state["env"] if state else config.client_env()
    click.echo("export " + " ".join(f"{k}={v}" for k, v in variables.items()))


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


if __name__ == "__main__":
    main()

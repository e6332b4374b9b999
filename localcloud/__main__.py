"""``python -m localcloud serve``: run localcloud in the foreground."""

from __future__ import annotations

import logging
import sys

import click

from localcloud.core.config import Config, ConfigError


@click.group()
def cli() -> None:
    """localcloud: the Google Cloud APIs of the deploy orchestrator, on loopback."""


@cli.command()
@click.option("--data", envvar="LOCALCLOUD_DATA", help="Data directory (LOCALCLOUD_DATA).")
@click.option("--log-level", envvar="LOCALCLOUD_LOG_LEVEL", default="INFO", show_default=True)
def serve(data: str | None, log_level: str) -> None:
    """Serve in the foreground until SIGTERM or SIGINT."""
    import os

    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    env = dict(os.environ)
    if data:
        env["LOCALCLOUD_DATA"] = data
    try:
        config = Config.from_env(env)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    from localcloud.supervisor import serve as run

    sys.exit(run(config))


if __name__ == "__main__":
    cli()

"""The ``localcloud`` gcloud configuration: ``gcloud`` pointed at localcloud.

A named gcloud configuration is one INI file, ``configurations/config_NAME`` in gcloud's
config directory (``CLOUDSDK_CONFIG``, else ``~/.config/gcloud``, ``%APPDATA%\\gcloud`` on
Windows; https://cloud.google.com/sdk/docs/configurations). The file is written directly
(setting its dozen properties through ``gcloud config set`` costs a gcloud start, over a
second, each), keys of ours replaced and any other key the user added kept; then, when gcloud
is installed, gcloud reads it back once (``configurations describe``), so a file gcloud
would read otherwise is an error here. The active configuration (``active_config``) is
left alone unless asked.

What it sets:

- ``core/project`` and ``auth/disable_credentials``: localcloud serves the local user
  without credentials.
- ``api_endpoint_overrides/SERVICE`` = ``http://HOST:HTTP_PORT/`` for the APIs localcloud
  serves over REST on its HTTP port, and ``storage`` = its Cloud Storage front's JSON API
  base, ``http://HOST:STORAGE_PORT/storage/v1/`` (gcloud's own default is
  ``https://storage.googleapis.com/storage/v1/``).
- ``proxy/*`` = localcloud's HTTP port: ``gcloud run --region R`` calls ``R-HOST`` (it
  derives regional endpoints by prefixing the host), a name that resolves nowhere; through a
  proxy gcloud resolves no name (``localcloud/core/proxying.py``).
- ``run/region`` = localcloud's region, so ``gcloud run services describe NAME`` needs no flag.
- ``core/disable_usage_reporting`` and ``component_manager/disable_update_check``: with the
  proxy set, calls to Google's own servers would go to localcloud and fail.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

NAME = "localcloud"
# gcloud's names for the APIs localcloud serves on its HTTP port (gcloud's
# api_endpoint_overrides section; `gcloud config set api_endpoint_overrides/NAME`).
HTTP_APIS = (
    "pubsub",
    "workflows",
    "workflowexecutions",
    "cloudbuild",
    "eventarc",
    "run",
    "iam",
    "cloudresourcemanager",
    "artifactregistry",
    "cloudfunctions",
    # gcloud functions deploy asks Service Usage whether run, cloudbuild and
    # artifactregistry are enabled, and fails when it cannot (localcloud/serviceusage.py).
    "serviceusage",
)
UNSPECIFIED = {"", "0.0.0.0", "::", "[::]"}  # listening everywhere: reach it on loopback
GCLOUD_TIMEOUT = 60.0


class GcloudError(Exception):
    """gcloud refused the configuration; the message says what it said."""


@dataclass(frozen=True)
class Written:
    path: Path
    active: str  # the active configuration after writing
    verified: bool  # gcloud read it back


def config_dir(environ: dict[str, str] | None = None) -> Path:
    """gcloud's configuration directory, where gcloud looks for it."""
    env = os.environ if environ is None else environ
    if env.get("CLOUDSDK_CONFIG"):
        return Path(env["CLOUDSDK_CONFIG"]).expanduser()
    if sys.platform == "win32" and env.get("APPDATA"):
        return Path(env["APPDATA"]) / "gcloud"
    return Path.home() / ".config" / "gcloud"


def _loopback(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = parts.hostname or ""
    if host in UNSPECIFIED:
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    if parts.port is None:
        raise ValueError(f"no port in localcloud's address {url!r}")
    return host, parts.port


def properties(
    http_url: str, storage_url: str, project: str, region: str
) -> dict[str, dict[str, str]]:
    """The configuration's properties, by section."""
    http_host, http_port = _loopback(http_url)
    storage_host, storage_port = _loopback(storage_url)
    base = f"http://{http_host}:{http_port}/"
    overrides = dict.fromkeys(HTTP_APIS, base)
    overrides["storage"] = f"http://{storage_host}:{storage_port}/storage/v1/"
    return {
        "core": {
            "project": project,
            "disable_usage_reporting": "True",
        },
        "auth": {"disable_credentials": "True"},
        "api_endpoint_overrides": overrides,
        "proxy": {"type": "http", "address": http_host.strip("[]"), "port": str(http_port)},
        "run": {"region": region},
        "component_manager": {"disable_update_check": "True"},
    }


def active(directory: Path, environ: dict[str, str] | None = None) -> str:
    """The configuration gcloud uses when none is named (``default`` until one is chosen)."""
    env = os.environ if environ is None else environ
    if env.get("CLOUDSDK_ACTIVE_CONFIG_NAME"):
        return env["CLOUDSDK_ACTIVE_CONFIG_NAME"]
    try:
        return (directory / "active_config").read_text().strip() or "default"
    except OSError:
        return "default"


def write(
    values: dict[str, dict[str, str]],
    *,
    name: str = NAME,
    activate: bool = False,
    environ: dict[str, str] | None = None,
) -> Written:
    """Create or update configuration ``name``; activate it only when asked."""
    directory = config_dir(environ)
    path = directory / "configurations" / f"config_{name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    ini = configparser.ConfigParser(interpolation=None)
    ini.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    if path.exists():
        ini.read(path)
    for section, entries in values.items():
        if not ini.has_section(section):
            ini.add_section(section)
        for key, value in entries.items():
            ini.set(section, key, value)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as out:
        ini.write(out)
    temporary.replace(path)
    gcloud = shutil.which("gcloud", path=(environ or os.environ).get("PATH"))
    if activate:
        _activate(gcloud, directory, name, environ)
    verified = False
    if gcloud is not None:
        _verify(gcloud, name, values, environ)
        verified = True
    return Written(path, active(directory, environ), verified)


def _run(gcloud: str, args: list[str], environ: dict[str, str] | None) -> str:
    env = dict(os.environ if environ is None else environ)
    try:
        done = subprocess.run(
            [gcloud, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=GCLOUD_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GcloudError(f"`gcloud {' '.join(args)}` failed: {exc}") from None
    if done.returncode != 0:
        raise GcloudError(f"`gcloud {' '.join(args)}` said: {done.stderr.strip()}")
    return done.stdout


def _activate(
    gcloud: str | None, directory: Path, name: str, environ: dict[str, str] | None
) -> None:
    if gcloud is not None:
        _run(gcloud, ["config", "configurations", "activate", name], environ)
    else:
        (directory / "active_config").write_text(name)


def _verify(
    gcloud: str, name: str, values: dict[str, dict[str, str]], environ: dict[str, str] | None
) -> None:
    """gcloud reads the configuration back and sees our values."""
    out = _run(gcloud, ["config", "configurations", "describe", name, "--format=json"], environ)
    seen = json.loads(out).get("properties", {})
    for section, entries in values.items():
        for key, value in entries.items():
            got = str(seen.get(section, {}).get(key, ""))
            if got.lower() != value.lower():
                raise GcloudError(
                    f"gcloud reads {section}/{key} of configuration {name} as {got!r}, not {value!r}"
                )

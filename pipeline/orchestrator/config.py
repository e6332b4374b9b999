"""Where the pipeline's resources are: one settings object for the functions and the CLI.

Names come from ``pipeline.json`` (shared with Terraform, so cloud and local cannot drift)
and the project; environment variables override each one, which is how Terraform and
``orch local up`` hand the functions their settings, and how a user points ``orch`` at a
deployment in Google Cloud (``orch config`` writes the same variables to a file).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

from orchestrator.clients import default_project

PIPELINE_FILE = Path(__file__).with_name("pipeline.json")
CONFIG_FILE_ENV = "ORCH_CONFIG"
DEFAULT_CONFIG_FILE = Path("~/.config/orch/config.json")


@cache
def pipeline() -> dict[str, Any]:
    """The shared resource names (``pipeline/orchestrator/pipeline.json``)."""
    return json.loads(PIPELINE_FILE.read_text())


# field -> environment variable; the functions get exactly these from their deployer.
ENV_VARS = {
    "project": "GOOGLE_CLOUD_PROJECT",
    "region": "ORCH_REGION",
    "prefix": "ORCH_PREFIX",
    "sources_bucket": "ORCH_SOURCES_BUCKET",
    "records_bucket": "ORCH_RECORDS_BUCKET",
    "build_logs_bucket": "ORCH_BUILD_LOGS_BUCKET",
    "requests_topic": "ORCH_REQUESTS_TOPIC",
    "status_topic": "ORCH_STATUS_TOPIC",
    "dead_letter_topic": "ORCH_DEAD_LETTER_TOPIC",
    "repository": "ORCH_REPOSITORY",
    "workflow": "ORCH_WORKFLOW",
    "runtime_service_account": "ORCH_RUNTIME_SERVICE_ACCOUNT",
    "trigger_service_account": "ORCH_TRIGGER_SERVICE_ACCOUNT",
    "build_service_account": "ORCH_BUILD_SERVICE_ACCOUNT",
}


@dataclass(frozen=True)
class Settings:
    """The names one deployment of the pipeline uses (ids, not full resource paths)."""

    project: str
    region: str
    prefix: str
    sources_bucket: str
    records_bucket: str
    build_logs_bucket: str
    requests_topic: str
    status_topic: str
    dead_letter_topic: str
    repository: str
    workflow: str
    runtime_service_account: str
    trigger_service_account: str
    build_service_account: str

    @classmethod
    def defaults(cls, project: str, region: str = "us-central1", prefix: str = "") -> Settings:
        p = pipeline()
        prefix = prefix or p["name_prefix"]
        accounts = p["service_accounts"]
        return cls(
            project=project,
            region=region,
            prefix=prefix,
            sources_bucket=project + p["sources_bucket_suffix"],
            records_bucket=project + p["records_bucket_suffix"],
            build_logs_bucket=project + p["build_logs_bucket_suffix"],
            requests_topic=p["topics"]["requests"],
            status_topic=p["topics"]["status"],
            dead_letter_topic=p["topics"]["dead_letter"],
            repository=p["repository"],
            workflow=p["workflow"],
            runtime_service_account=service_account_email(
                f"{prefix}-{accounts['runtime']}", project
            ),
            trigger_service_account=service_account_email(
                f"{prefix}-{accounts['trigger']}", project
            ),
            build_service_account=service_account_email(f"{prefix}-{accounts['build']}", project),
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from a config file (``ORCH_CONFIG``), then the environment, then defaults."""
        env = dict(os.environ if environ is None else environ)
        values: dict[str, str] = {}
        path = Path(env.get(CONFIG_FILE_ENV) or DEFAULT_CONFIG_FILE).expanduser()
        if path.is_file():
            values.update(
                {k: str(v) for k, v in json.loads(path.read_text()).items() if k in ENV_VARS}
            )
        for name, var in ENV_VARS.items():
            if env.get(var):
                values[name] = env[var]
        project = values.get("project") or default_project(env)
        base = cls.defaults(
            project, values.get("region") or "us-central1", values.get("prefix") or ""
        )
        return cls(**{**asdict(base), **values})

    def env(self) -> dict[str, str]:
        """The variables that hand these settings to a function (or a shell)."""
        return {ENV_VARS[f.name]: getattr(self, f.name) for f in fields(self)}

    # ----------------------------------------------------------------- full names

    def topic_path(self, topic: str) -> str:
        return topic if topic.startswith("projects/") else f"projects/{self.project}/topics/{topic}"

    @property
    def location_path(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    @property
    def workflow_path(self) -> str:
        return f"{self.location_path}/workflows/{self.workflow}"

    def service_path(self, service: str) -> str:
        return f"{self.location_path}/services/{service}"

    def function_service(self, function: str) -> str:
        """The Cloud Run service of one of the pipeline's own functions (``orch-build``)."""
        return f"{self.prefix}-{function}"

    @property
    def registry_host(self) -> str:
        return f"{self.region}-docker.pkg.dev"

    def image(self, service: str) -> str:
        """Where a deployed service's images live: ``REGION-docker.pkg.dev/P/functions/S``."""
        return f"{self.registry_host}/{self.project}/{self.repository}/{service}"

    def staging_image(self, service: str) -> str:
        """Where builds push before ``push`` publishes the image under the service's path."""
        staging = pipeline()["staging_image_prefix"]
        return f"{self.registry_host}/{self.project}/{self.repository}/{staging}/{service}"


def service_account_email(account_id: str, project: str) -> str:
    return f"{account_id}@{project}.iam.gserviceaccount.com"

"""The client factory: the only place that knows whether we talk to Google or localcloud.

Everything else in the orchestrator asks this module for clients. ``Environment`` reads
the process environment once; from then on it alone says where clients go. With the
emulator variables set (``orch local env`` prints them), clients reach localcloud: Pub/Sub
and Cloud Storage at the addresses of their documented ``PUBSUB_EMULATOR_HOST`` and
``STORAGE_EMULATOR_HOST``, every other gRPC API at ``LOCALCLOUD_GRPC_HOST``, on insecure
channels. Without them, clients use Application Default Credentials. What differs
between the two besides addresses (how often operations are polled, where a revision's
log is read) is a method of ``Environment`` too, so no other module asks which it is.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import grpc

DEFAULT_PROJECT = "local-project"


class ProjectNotSet(RuntimeError):
    """Outside localcloud no project was named and Application Default Credentials name none."""


def default_project(environ: Mapping[str, str] | None = None) -> str:
    """The project clients work in: ``GOOGLE_CLOUD_PROJECT`` (or ``GCP_PROJECT``); with
    localcloud, its default project; on Google Cloud, the one Application Default
    Credentials name (a Cloud Run function's metadata server names its own).

    Never a made-up default outside localcloud: a missing project there would send every
    call to a project that does not exist, and the error would name that project instead of
    what is missing.
    """
    env = os.environ if environ is None else environ
    named = env.get("GOOGLE_CLOUD_PROJECT") or env.get("GCP_PROJECT")
    if named:
        return named
    if env.get("LOCALCLOUD_GRPC_HOST"):
        return DEFAULT_PROJECT
    import google.auth
    import google.auth.exceptions

    try:
        _, project = google.auth.default()
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise ProjectNotSet(
            "no Google Cloud project: set GOOGLE_CLOUD_PROJECT (or run `orch config`), or "
            '`eval "$(orch local env)"` to use localcloud; Application Default '
            f"Credentials are not set up either ({exc})"
        ) from None
    if not project:
        raise ProjectNotSet(
            "no Google Cloud project: set GOOGLE_CLOUD_PROJECT (or run `orch config`), or "
            "`gcloud config set project PROJECT` so Application Default Credentials name one"
        )
    return project


@dataclass(frozen=True)
class Environment:
    """What the factory reads from the process environment, once."""

    project: str
    region: str
    grpc_host: str | None
    pubsub_host: str | None
    storage_host: str | None
    registry_host: str | None = None
    metadata_url: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Environment:
        env = os.environ if environ is None else environ
        return cls(
            project=default_project(env),
            region=env.get("GOOGLE_CLOUD_REGION") or env.get("LOCALCLOUD_REGION") or "us-central1",
            grpc_host=env.get("LOCALCLOUD_GRPC_HOST") or None,
            pubsub_host=env.get("PUBSUB_EMULATOR_HOST") or None,
            storage_host=env.get("STORAGE_EMULATOR_HOST") or None,
            registry_host=env.get("LOCALCLOUD_REGISTRY") or None,
            metadata_url=env.get("LOCALCLOUD_OIDC_ISSUER") or None,
        )

    @property
    def local(self) -> bool:
        return self.grpc_host is not None

    def polling(self, timeout: float) -> Any:
        """How long-running operations are waited on, up to ``timeout`` seconds.

        Locally up to 20 ms apart, rising slowly (x1.1) to 250 ms, not api_core's 1 s
        steps: every pipeline step waits on one (a build, a revision, a trigger) that takes
        a fraction of a second here, and whatever the last sleep overshoots the
        operation's end by is added to the deploy (api_core sleeps a random time up to the
        step). A poll costs a millisecond or two. On Google Cloud, where a revision takes tens
        of seconds and every poll counts against the API's quota, from 0.5 s rising x1.5
        to 5 s.
        """
        from google.api_core.future.polling import DEFAULT_POLLING

        initial, maximum, multiplier = (0.02, 0.25, 1.1) if self.local else (0.5, 5.0, 1.5)
        return DEFAULT_POLLING.with_delay(
            initial=initial, maximum=maximum, multiplier=multiplier
        ).with_timeout(timeout)

    def log_file(self, log_uri: str) -> Path | None:
        """Where a revision's log can be read on this machine (localcloud writes it to a
        file and its ``log_uri`` is that file's path); None on Google Cloud, whose
        ``log_uri`` is a Cloud Logging page to open."""
        if not self.local or not log_uri:
            return None
        return Path(log_uri.removeprefix("file://"))


class Clients:
    """Official clients, built lazily and reused (each holds a channel or session)."""

    def __init__(self, env: Environment | None = None) -> None:
        self.env = env or Environment.from_env()

    def _grpc(self, client_cls: type, transport_cls: type, host: str | None = None) -> Any:
        """A GAPIC client on an insecure channel to localcloud, or a default one."""
        host = host or self.env.grpc_host
        if host is None:
            return client_cls()
        return client_cls(transport=transport_cls(channel=_insecure_channel(host)))

    def _publisher(self, **options: Any) -> Any:
        """A Pub/Sub publisher for ``env``: its emulator address when there is one. Never
        the process's PUBSUB_EMULATOR_HOST: only ``Environment`` says where clients go."""
        import google.cloud.pubsub_v1 as pubsub_v1
        from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

        if self.env.pubsub_host is None:
            return pubsub_v1.PublisherClient(**options)
        channel = _insecure_channel(self.env.pubsub_host)
        return pubsub_v1.PublisherClient(
            transport=PublisherGrpcTransport(channel=channel), **options
        )

    @cached_property
    def publisher(self) -> Any:
        return self._publisher()

    @cached_property
    def ordered_publisher(self) -> Any:
        import google.cloud.pubsub_v1 as pubsub_v1

        options = pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
        # Status events go out one at a time and each is waited for: a batch would only
        # add its 10 ms collection delay to every step. (With ordering on, a full batch is
        # not sent early, so the latency itself is set to zero.)
        batch = pubsub_v1.types.BatchSettings(max_messages=1, max_latency=0.0)
        return self._publisher(publisher_options=options, batch_settings=batch)

    @cached_property
    def subscriber(self) -> Any:
        import google.cloud.pubsub_v1 as pubsub_v1
        from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

        return self._grpc(pubsub_v1.SubscriberClient, SubscriberGrpcTransport, self.env.pubsub_host)

    @cached_property
    def storage(self) -> Any:
        import google.cloud.storage as storage

        if self.env.storage_host is not None:
            from google.auth.credentials import AnonymousCredentials

            return storage.Client(
                project=self.env.project,
                credentials=AnonymousCredentials(),
                client_options={"api_endpoint": self.env.storage_host},
            )
        return storage.Client(project=self.env.project)

    @cached_property
    def cloud_build(self) -> Any:
        from google.cloud.devtools import cloudbuild_v1
        from google.cloud.devtools.cloudbuild_v1.services.cloud_build.transports import (
            CloudBuildGrpcTransport,
        )

        return self._grpc(cloudbuild_v1.CloudBuildClient, CloudBuildGrpcTransport)

    @cached_property
    def run_services(self) -> Any:
        from google.cloud import run_v2
        from google.cloud.run_v2.services.services.transports import ServicesGrpcTransport

        return self._grpc(run_v2.ServicesClient, ServicesGrpcTransport)

    @cached_property
    def run_revisions(self) -> Any:
        from google.cloud import run_v2
        from google.cloud.run_v2.services.revisions.transports import RevisionsGrpcTransport

        return self._grpc(run_v2.RevisionsClient, RevisionsGrpcTransport)

    @cached_property
    def artifact_registry(self) -> Any:
        from google.cloud import artifactregistry_v1
        from google.cloud.artifactregistry_v1.services.artifact_registry.transports import (
            ArtifactRegistryGrpcTransport,
        )

        return self._grpc(artifactregistry_v1.ArtifactRegistryClient, ArtifactRegistryGrpcTransport)

    @cached_property
    def iam_admin(self) -> Any:
        """IAM Admin (service accounts, custom roles): ``orch local up`` makes Terraform's."""
        from google.cloud import iam_admin_v1
        from google.cloud.iam_admin_v1.services.iam.transports import IAMGrpcTransport

        return self._grpc(iam_admin_v1.IAMClient, IAMGrpcTransport)

    @cached_property
    def projects(self) -> Any:
        """Resource Manager projects: a project's IAM policy."""
        from google.cloud import resourcemanager_v3
        from google.cloud.resourcemanager_v3.services.projects.transports import (
            ProjectsGrpcTransport,
        )

        return self._grpc(resourcemanager_v3.ProjectsClient, ProjectsGrpcTransport)

    @cached_property
    def eventarc(self) -> Any:
        from google.cloud import eventarc_v1
        from google.cloud.eventarc_v1.services.eventarc.transports import EventarcGrpcTransport

        return self._grpc(eventarc_v1.EventarcClient, EventarcGrpcTransport)

    @cached_property
    def functions(self) -> Any:
        from google.cloud import functions_v2
        from google.cloud.functions_v2.services.function_service.transports import (
            FunctionServiceGrpcTransport,
        )

        return self._grpc(functions_v2.FunctionServiceClient, FunctionServiceGrpcTransport)

    @cached_property
    def workflows(self) -> Any:
        from google.cloud import workflows_v1
        from google.cloud.workflows_v1.services.workflows.transports import WorkflowsGrpcTransport

        return self._grpc(workflows_v1.WorkflowsClient, WorkflowsGrpcTransport)

    @cached_property
    def executions(self) -> Any:
        from google.cloud.workflows import executions_v1
        from google.cloud.workflows.executions_v1.services.executions.transports import (
            ExecutionsGrpcTransport,
        )

        return self._grpc(executions_v1.ExecutionsClient, ExecutionsGrpcTransport)

    @cached_property
    def operations(self) -> Any:
        """``google.longrunning.Operations`` (localcloud's, shared by all its APIs)."""
        from google.api_core import operations_v1

        if self.env.grpc_host is None:
            raise RuntimeError("a bare Operations client exists only for localcloud")
        return operations_v1.OperationsClient(grpc.insecure_channel(self.env.grpc_host))

    @cached_property
    def http(self) -> Any:
        """A plain ``requests`` session (OCI registry calls, service calls), reused."""
        import requests

        return requests.Session()

    def registry_url(self, host: str) -> str:
        """The base URL of the OCI distribution API for an image host.

        Artifact Registry hosts (``REGION-docker.pkg.dev``) map to localcloud's registry.
        """
        if self.env.registry_host is not None:
            return f"http://{self.env.registry_host}"
        return f"https://{host}"

    def registry_headers(self) -> dict[str, str]:
        """Authorization for the registry: an OAuth access token on Google Cloud, none locally."""
        if self.env.registry_host is not None:
            return {}
        import google.auth
        import google.auth.transport.requests

        credentials, _ = google.auth.default(
            scopes=["https://www.googleapis.com/auth/cloud-platform"]
        )
        credentials.refresh(google.auth.transport.requests.Request())
        return {"Authorization": f"Bearer {credentials.token}"}

    def id_token(self, audience: str) -> str:
        """A Google-signed (or localcloud-signed) ID token for calling a private service.

        Locally, localcloud's metadata endpoint mints it, as the metadata server does on
        Google Cloud; there, google-auth asks ADC, then falls back to gcloud for user
        credentials (which cannot mint ID tokens for arbitrary audiences themselves).
        """
        if self.env.metadata_url is not None:
            response = self.http.get(
                f"{self.env.metadata_url}/computeMetadata/v1/instance/service-accounts/"
                "default/identity",
                params={"audience": audience, "format": "full"},
                headers={"Metadata-Flavor": "Google"},
                timeout=10,
            )
            response.raise_for_status()
            return response.text.strip()
        import google.auth.transport.requests
        import google.oauth2.id_token

        try:
            return google.oauth2.id_token.fetch_id_token(
                google.auth.transport.requests.Request(), audience
            )
        except Exception:  # user credentials cannot mint ID tokens: ask gcloud, as users do
            import subprocess

            return subprocess.run(
                ["gcloud", "auth", "print-identity-token"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()


def _insecure_channel(host: str) -> grpc.Channel:
    return grpc.insecure_channel(
        host,
        options=[
            ("grpc.max_receive_message_length", 32 * 1024 * 1024),
            ("grpc.max_send_message_length", 32 * 1024 * 1024),
        ],
    )


_default: Clients | None = None


def _forget_default() -> None:
    global _default
    _default = None


# gRPC channels and client threads do not survive a fork (gunicorn forks its workers after
# loading a function): a child builds its own.
os.register_at_fork(after_in_child=_forget_default)


def default() -> Clients:
    """The process-wide factory (functions are long-lived; channels are reused)."""
    global _default
    if _default is None:
        _default = Clients()
    return _default

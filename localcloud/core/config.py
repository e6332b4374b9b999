"""One typed configuration, read once at start-up from the environment.

A bad value is rejected at start with a message naming the variable, so a typo in a
port never turns into a confusing bind error later.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now (tests, instances): bind to 0 and read it back."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Port:
    """A listening port, with the variable that moves it (for error messages)."""

    name: str
    port: int
    envvar: str


def _principal(env: Mapping[str, str]) -> str:
    from localcloud.core.identity import MEMBER

    value = (env.get("LOCALCLOUD_PRINCIPAL") or "").strip()
    if value and not MEMBER.match(value):
        raise ConfigError(
            f"LOCALCLOUD_PRINCIPAL must be an IAM member such as user:dev@example.com or "
            f"serviceAccount:NAME@PROJECT.iam.gserviceaccount.com, not {value!r}"
        )
    return value


def _int(environ: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is out of range [{lo}, {hi}]")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    value = (env.get(name) or choices[0]).strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _ports(env: Mapping[str, str], name: str) -> tuple[int, ...]:
    text = env.get(name) or ""
    try:
        ports = tuple(int(p) for p in text.replace(" ", "").split(",") if p)
    except ValueError:
        raise ConfigError(f"{name} must be a comma-separated list of ports, not {text!r}") from None
    if any(not 0 < p < 65536 for p in ports):
        raise ConfigError(f"{name}: ports are between 1 and 65535")
    return ports


def _bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (use true or false)")


@dataclass(frozen=True)
class Config:
    """Where localcloud keeps its state and where each part listens.

    Two organization policies a real project may be under can be switched on, so that a
    test or a user sees here what such a project refuses (both are off by default, as in a
    project with no organization):

    - ``LOCALCLOUD_ORG_POLICY_DOMAIN_RESTRICTED=true``: domain restricted sharing
      (``constraints/iam.allowedPolicyMemberDomains``), which refuses any SetIamPolicy
      naming ``allUsers`` or ``allAuthenticatedUsers`` with FAILED_PRECONDITION
      (https://cloud.google.com/resource-manager/docs/organization-policy/restricting-domains).
      localcloud has no customer directory, so other members are not checked.
    - ``LOCALCLOUD_ORG_POLICY_REQUIRE_INVOKER_IAM=true``: the managed constraint
      ``constraints/run.managed.requireInvokerIam``, which refuses a Cloud Run service
      with ``invoker_iam_disabled``
      (https://cloud.google.com/run/docs/authenticating/public#invoker_check).
    """

    data_dir: Path = field(default_factory=lambda: Path(".localcloud").resolve())
    host: str = "127.0.0.1"
    grpc_port: int = 8085
    storage_port: int = 4443
    registry_port: int = 5000
    http_port: int = 8090
    project: str = "local-project"
    region: str = "us-central1"
    # Object notifications of every bucket are published here, in Google's format.
    storage_events_topic: str = "localcloud-storage-events"
    # Push backoff bounds when a push subscription sets no retry policy (Google: 100 ms..60 s).
    push_min_backoff: float = 0.1
    push_max_backoff: float = 60.0
    fsync: bool = False
    # Builds running at once (the rest wait QUEUED); 0 means the number of CPUs.
    build_limit: int = 0
    # Cloud Run: the shared ingress (Host: SERVICE.run.localhost), the first service port,
    # how long an idle instance lives, and whether to run without bubblewrap.
    ingress_port: int = 8080
    run_first_port: int = 8100
    run_idle_seconds: float = 300.0
    # Whether a spare of an image's base waits for the next image over it (run/prestart.py).
    run_spares: bool = True
    run_unsandboxed: bool = False
    # "full": instances contained as on Cloud Run (localcloud/run/sandbox.py); "filesystem":
    # only bubblewrap's mounts and PID namespace, the host's network and no limits (the
    # earlier sandbox: for side-by-side benchmarks and machines that cannot do more).
    run_isolation: str = "full"
    # Host loopback ports instances may call besides localcloud's (a local database, a test's
    # receiver); everything else on the host is out of their reach.
    run_host_ports: tuple[int, ...] = ()
    # A revision's log rotates at this size (one previous file kept).
    run_log_max_bytes: int = 10 * 1024 * 1024
    # Eventarc delivery retries (Google: 10 s..600 s).
    eventarc_min_backoff: float = 10.0
    eventarc_max_backoff: float = 600.0
    # Organization policies (see the class docstring).
    org_policy_domain_restricted: bool = False
    org_policy_require_invoker_iam: bool = False
    # The local user: who a call with no credentials from this machine is served for
    # (LOCALCLOUD_PRINCIPAL; empty means the project's owner, core/identity.py).
    principal: str = ""
    # IAM enforcement (LOCALCLOUD_IAM, core/permissions.py): "enforce" refuses every caller
    # without the permission; "audit" lets calls from Cloud Run instances through and logs
    # each denial it would make ("IAM audit: ..."), refusing token holders and the local
    # user as "enforce" does: to find the grants a function of yours lacks before turning
    # enforcement back on. `orch local up` applies Terraform's grants, so the pipeline runs
    # enforced. "off" checks no permission at all (tokens are still verified): for
    # measuring what enforcement costs (benchmarks/iam.py) only, never to run with.
    iam: str = "enforce"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Config:
        env = os.environ if environ is None else environ
        data = env.get("LOCALCLOUD_DATA") or ".localcloud"
        cfg = cls(
            data_dir=Path(data).expanduser().resolve(),
            host=env.get("LOCALCLOUD_HOST") or "127.0.0.1",
            grpc_port=_int(env, "LOCALCLOUD_GRPC_PORT", 8085, 0, 65535),
            storage_port=_int(env, "LOCALCLOUD_STORAGE_PORT", 4443, 0, 65535),
            registry_port=_int(env, "LOCALCLOUD_REGISTRY_PORT", 5000, 0, 65535),
            http_port=_int(env, "LOCALCLOUD_HTTP_PORT", 8090, 0, 65535),
            project=env.get("LOCALCLOUD_PROJECT") or "local-project",
            region=env.get("LOCALCLOUD_REGION") or "us-central1",
            push_min_backoff=_int(env, "LOCALCLOUD_PUSH_MIN_BACKOFF_MS", 100, 0, 600_000) / 1000,
            push_max_backoff=_int(env, "LOCALCLOUD_PUSH_MAX_BACKOFF_MS", 60_000, 0, 600_000) / 1000,
            fsync=_bool(env, "LOCALCLOUD_FSYNC", False),
            build_limit=_int(env, "LOCALCLOUD_BUILD_LIMIT", 0, 0, 256),
            ingress_port=_int(env, "LOCALCLOUD_INGRESS_PORT", 8080, 0, 65535),
            run_first_port=_int(env, "LOCALCLOUD_RUN_FIRST_PORT", 8100, 1, 65535),
            run_idle_seconds=_int(env, "LOCALCLOUD_RUN_IDLE_MS", 300_000, 100, 86_400_000) / 1000,
            run_spares=_bool(env, "LOCALCLOUD_RUN_SPARES", True),
            run_unsandboxed=_bool(env, "LOCALCLOUD_RUN_UNSANDBOXED", False),
            run_isolation=_choice(env, "LOCALCLOUD_RUN_ISOLATION", ("full", "filesystem")),
            run_host_ports=_ports(env, "LOCALCLOUD_RUN_HOST_PORTS"),
            run_log_max_bytes=_int(
                env, "LOCALCLOUD_RUN_LOG_MAX_BYTES", 10 * 1024 * 1024, 4096, 1 << 40
            ),
            eventarc_min_backoff=_int(env, "LOCALCLOUD_EVENTARC_MIN_BACKOFF_MS", 10_000, 0, 600_000)
            / 1000,
            eventarc_max_backoff=_int(
                env, "LOCALCLOUD_EVENTARC_MAX_BACKOFF_MS", 600_000, 0, 600_000
            )
            / 1000,
            org_policy_domain_restricted=_bool(
                env, "LOCALCLOUD_ORG_POLICY_DOMAIN_RESTRICTED", False
            ),
            org_policy_require_invoker_iam=_bool(
                env, "LOCALCLOUD_ORG_POLICY_REQUIRE_INVOKER_IAM", False
            ),
            principal=_principal(env),
            iam=_choice(env, "LOCALCLOUD_IAM", ("enforce", "audit", "off")),
        )
        if cfg.push_max_backoff < cfg.push_min_backoff:
            raise ConfigError(
                "LOCALCLOUD_PUSH_MAX_BACKOFF_MS must not be below LOCALCLOUD_PUSH_MIN_BACKOFF_MS"
            )
        return cfg

    @property
    def ports(self) -> list[Port]:
        return [
            Port("gRPC APIs", self.grpc_port, "LOCALCLOUD_GRPC_PORT"),
            Port("Cloud Storage", self.storage_port, "LOCALCLOUD_STORAGE_PORT"),
            Port("Artifact Registry", self.registry_port, "LOCALCLOUD_REGISTRY_PORT"),
            Port("HTTP (REST APIs, OIDC keys, health)", self.http_port, "LOCALCLOUD_HTTP_PORT"),
            Port("Cloud Run ingress", self.ingress_port, "LOCALCLOUD_INGRESS_PORT"),
        ]

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def storage_address(self) -> str:
        return f"{self.host}:{self.storage_port}"

    @property
    def registry_address(self) -> str:
        return f"{self.host}:{self.registry_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def client_env(self) -> dict[str, str]:
        """The variables that point the official clients (and the orchestrator) here."""
        return {
            "PUBSUB_EMULATOR_HOST": self.grpc_address,
            "STORAGE_EMULATOR_HOST": f"http://{self.storage_address}",
            "LOCALCLOUD_GRPC_HOST": self.grpc_address,
            "LOCALCLOUD_REGISTRY": self.registry_address,
            "LOCALCLOUD_OIDC_ISSUER": self.http_url,
            "GOOGLE_CLOUD_PROJECT": self.project,
        }

"""Start localcloud (and, for comparison, Google's official Pub/Sub emulator) from tests.

Used by this project's tests and benchmarks, and usable by a user's own tests: each
instance gets free loopback ports and its own data directory, runs as a real
``python -m localcloud serve`` process, and is reached through the official clients.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

from localcloud.core import config as config_module
from localcloud.core.config import Config

T = TypeVar("T")


@dataclass
class Instance:
    """A running localcloud: its config, its process and the client environment."""

    config: Config
    process: subprocess.Popen
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return self.config.client_env()

    @property
    def log_path(self) -> Path:
        return self.config.data_dir / "logs" / "localcloud.log"

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: no chance to flush or clean up."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, timeout: float = 60.0) -> Instance:
        """Stop and start again on the same ports and data directory."""
        self.stop()
        return start(
            self.config.data_dir, config=self.config, extra_env=self.extra_env, timeout=timeout
        )

    def service_pids(self, service_id: str) -> list[int]:
        """Host pids of the processes this localcloud runs for a Cloud Run service's
        instances (by their ``K_SERVICE``, and the API address instances are given, which
        tells this localcloud's from another's on the same machine)."""
        wanted = {
            f"K_SERVICE={service_id}".encode(),
            f"LOCALCLOUD_GRPC_HOST={self.config.grpc_address}".encode(),
        }
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError), open(f"/proc/{entry.name}/environ", "rb") as f:
                if wanted <= set(f.read().split(b"\0")):
                    found.append(int(entry.name))
        return found

    @contextlib.contextmanager
    def client_env(self) -> Iterator[None]:
        """Temporarily point this process's clients at the instance."""
        with patched_environ(self.env):
            yield


# The variables that move each of localcloud's listening ports, and the Config fields.
PORTS = {
    "LOCALCLOUD_GRPC_PORT": "grpc_port",
    "LOCALCLOUD_STORAGE_PORT": "storage_port",
    "LOCALCLOUD_REGISTRY_PORT": "registry_port",
    "LOCALCLOUD_HTTP_PORT": "http_port",
    "LOCALCLOUD_INGRESS_PORT": "ingress_port",
    "LOCALCLOUD_RUN_FIRST_PORT": "run_first_port",
}


RUN_PORTS = 100  # LOCALCLOUD_RUN_FIRST_PORT and the 99 ports after it serve services


def free_port(host: str = "127.0.0.1") -> int:
    """A loopback port free now for what a test starts, below the kernel's ephemeral range
    (with room for the run ports after it): a port bind(0) hands out is one any connect()
    on the machine may take as its own before the server binds it (an EADDRINUSE at a test
    localcloud's start, in a busy suite); below the range only an explicit bind can. Not
    for localcloud itself: a user's own services may live there (it keeps bind(0))."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return config_module.free_port(host)
    candidates = range(max(1024, low - 16384), low - RUN_PORTS)
    for port in random.sample(candidates, min(64, len(candidates))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    return config_module.free_port(host)


def port_env(config: Config | None = None) -> dict[str, str]:
    """The variables that put a localcloud on ``config``'s ports, or else on free ones: one
    started by a test never falls back to its fixed default ports (8085, 4443, 8080, ...)."""
    if config is None:
        return {name: str(free_port()) for name in PORTS}
    return {name: str(getattr(config, attr)) for name, attr in PORTS.items()}


@contextlib.contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def create_repository(grpc_address: str, name: str) -> Any | None:
    """Create the Docker repository ``projects/P/locations/L/repositories/R`` with the
    official client (pushing to a repository that does not exist is refused, as on Google
    Cloud); the client, to set its policy with, or None if it existed already."""
    import grpc
    from google.api_core import exceptions
    from google.cloud import artifactregistry_v1
    from google.cloud.artifactregistry_v1.services.artifact_registry.transports import (
        ArtifactRegistryGrpcTransport,
    )

    parent, _, repository = name.rpartition("/repositories/")
    # A subchannel of its own: one shared with a client that saw this address refuse
    # connections while localcloud restarted would still be backing off.
    channel = grpc.insecure_channel(grpc_address, options=[("grpc.use_local_subchannel_pool", 1)])
    client = artifactregistry_v1.ArtifactRegistryClient(
        transport=ArtifactRegistryGrpcTransport(channel=channel)
    )
    try:
        client.create_repository(
            request={
                "parent": parent,
                "repository_id": repository,
                "repository": {"format_": artifactregistry_v1.Repository.Format.DOCKER},
            }
        ).result(timeout=30)
    except exceptions.AlreadyExists:
        client.transport.close()
        return None
    return client


def provide_repository(config: Config, repository: str = "functions") -> str:
    """The project's Artifact Registry repository ``repository``, made as ``orch local up``
    makes ``functions``, with ``roles/artifactregistry.writer`` on it for the Compute Engine
    default account, which builds that name no account of their own run as: Google no
    longer grants that account Editor in new projects, so pushing needs this grant
    (https://cloud.google.com/build/docs/cloud-build-service-account-updates). Done once:
    a data directory that has the repository keeps it, and its policy."""
    from localcloud.core.projects import project_number

    name = f"projects/{config.project}/locations/{config.region}/repositories/{repository}"
    client = create_repository(config.grpc_address, name)
    if client is None:
        return name
    try:
        builder = f"{project_number(config.project)}-compute@developer.gserviceaccount.com"
        policy = client.get_iam_policy(request={"resource": name})
        policy.bindings.add(
            role="roles/artifactregistry.writer", members=[f"serviceAccount:{builder}"]
        )
        client.set_iam_policy(request={"resource": name, "policy": policy})
    finally:
        client.transport.close()
    return name


def grant_default_builder(config: Config) -> None:
    """Grant the Compute Engine default account (the account builds that name none run as)
    ``roles/cloudbuild.builds.builder`` on the project, as Google tells the owner of a new
    project to (https://cloud.google.com/build/docs/cloud-build-service-account-updates):
    builds read their source, push and log as that account, and without a grant it may do
    none of these, here as there. Idempotent."""
    import grpc
    from google.cloud import resourcemanager_v3
    from google.cloud.resourcemanager_v3.services.projects.transports import (
        ProjectsGrpcTransport,
    )

    from localcloud.core.projects import project_number

    member = (
        f"serviceAccount:{project_number(config.project)}-compute@developer.gserviceaccount.com"
    )
    role = "roles/cloudbuild.builds.builder"
    channel = grpc.insecure_channel(
        config.grpc_address, options=[("grpc.use_local_subchannel_pool", 1)]
    )
    client = resourcemanager_v3.ProjectsClient(transport=ProjectsGrpcTransport(channel=channel))
    try:
        resource = f"projects/{config.project}"
        policy = client.get_iam_policy(request={"resource": resource})
        if any(b.role == role and member in b.members for b in policy.bindings):
            return
        policy.bindings.add(role=role, members=[member])
        client.set_iam_policy(request={"resource": resource, "policy": policy})
    finally:
        client.transport.close()


def start(
    data_dir: Path,
    *,
    config: Config | None = None,
    extra_env: dict[str, str] | None = None,
    timeout: float = 60.0,
    repository: bool = True,
) -> Instance:
    """Start ``python -m localcloud serve`` on free ports; return once it is healthy, with
    the ``functions`` repository images are pushed to (``provide_repository``) and the
    default build account granted what builds need (``grant_default_builder``), unless
    ``repository`` is false."""
    if config is None:
        ports: dict[str, Any] = {attr: free_port() for attr in PORTS.values()}
        config = Config(data_dir=Path(data_dir).resolve(), **ports)
    env = {
        **os.environ,
        **(extra_env or {}),
        "LOCALCLOUD_DATA": str(config.data_dir),
        **port_env(config),
    }
    for key in ("PUBSUB_EMULATOR_HOST", "STORAGE_EMULATOR_HOST", "LOCALCLOUD_GRPC_HOST"):
        env.pop(key, None)
    config = Config.from_env(env)  # what the server reads, extra_env included
    log_dir = config.data_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "localcloud.log", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "localcloud", "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
        )
    instance = Instance(config, process, dict(extra_env or {}))
    deadline = time.monotonic() + timeout
    state_file = config.data_dir / "state.json"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = instance.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"localcloud exited with code {process.returncode}:\n{tail}")
        try:
            state = json.loads(state_file.read_text())
            if state.get("pid") == process.pid:
                with urllib.request.urlopen(f"{config.http_url}/healthz", timeout=2) as r:
                    healthy = json.load(r).get("status") == "ok"
                if healthy:
                    if repository:
                        provide_repository(config)
                        grant_default_builder(config)
                    return instance
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    instance.kill()
    raise RuntimeError(
        f"localcloud did not become healthy in {timeout:g}s; see {instance.log_path}"
    )


def wait_for(
    predicate: Callable[[], T | None], timeout: float, what: str, every: float = 0.05
) -> T:
    """Poll ``predicate`` until it returns something true; that value. AssertionError naming
    ``what`` once ``timeout`` seconds pass: a deadline for state to come about, never a
    measure of how fast it did (tests wait on state, not on the clock)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


@dataclass
class OfficialEmulator:
    """Google's Pub/Sub emulator (``gcloud beta emulators pubsub start``)."""

    host: str
    process: subprocess.Popen

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def official_emulator_available() -> str | None:
    """Why the official emulator cannot run here, or None when it can."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return "the Google Cloud CLI (gcloud) is not installed"
    root = Path(os.path.realpath(gcloud)).parent.parent
    if not (root / "platform" / "pubsub-emulator").exists():
        return "the gcloud Pub/Sub emulator component is not installed"
    if shutil.which("java") is None:
        return "Java (needed by the official emulator) is not installed"
    return None


def start_official_emulator(data_dir: Path, timeout: float = 60.0) -> OfficialEmulator:
    reason = official_emulator_available()
    if reason:
        raise RuntimeError(reason)
    port = free_port()
    host = f"127.0.0.1:{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir / "emulator.log", "ab")  # noqa: SIM115
    process = subprocess.Popen(
        [
            "gcloud",
            "beta",
            "emulators",
            "pubsub",
            "start",
            f"--host-port={host}",
            f"--data-dir={data_dir}",
            "--quiet",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    log.close()
    emulator = OfficialEmulator(host, process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the official emulator exited; see {data_dir / 'emulator.log'}")
        try:
            with urllib.request.urlopen(f"http://{host}/", timeout=1) as response:
                if response.status == 200:
                    return emulator
        except OSError:
            pass
        time.sleep(0.2)
    emulator.stop()
    raise RuntimeError(f"the official emulator did not start in {timeout:g}s")


# -- sources for build tests and benchmarks ----------------------------------------------
def zip_tree(files: dict[str, str | bytes]) -> bytes:
    """A zip archive in memory of ``{name: content}``."""
    return zip_entries(list(files.items()))


def zip_entries(entries: list[tuple[zipfile.ZipInfo | str, str | bytes]]) -> bytes:
    """A zip archive in memory of entries in order: names may repeat, and a ``ZipInfo``
    sets modes (a symlink) a plain name cannot."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return buffer.getvalue()


def zip_dir(path: Path) -> bytes:
    """A zip archive in memory of every file under ``path`` (byte code left out)."""
    return zip_tree(
        {
            p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted(path.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts
        }
    )


def write_wheel(directory: Path, name: str, version: str, module_source: str) -> Path:
    """A pure-Python wheel made by hand, so a build's dependency needs no package index."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": module_source.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: localcloud-testing\n"
            b"Root-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


def pack_args(image: str, env: dict[str, str], builder: bool = True) -> list[str]:
    """The ``pack build`` arguments ``gcloud builds submit --pack`` writes."""
    args = ["build", image, "--network", "cloudbuild"]
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    if builder:
        args += ["--builder", "gcr.io/buildpacks/builder:latest"]
    return args


def pack_build(source: tuple[str, str, int], image: str, env: dict[str, str], **fields: Any) -> Any:
    """The Build ``gcloud builds submit --pack image=...,env=...`` sends, from a
    ``(bucket, object, generation)`` source; ``fields`` add or replace Build fields."""
    from google.cloud.devtools import cloudbuild_v1

    bucket, name, generation = source
    return cloudbuild_v1.Build(
        source={"storage_source": {"bucket": bucket, "object_": name, "generation": generation}},
        steps=[
            {
                "name": "gcr.io/k8s-skaffold/pack",
                "entrypoint": "pack",
                "args": pack_args(image, env),
            }
        ],
        images=fields.pop("images", [image]),
        **fields,
    )


def image_name(name: str, project: str = "local-project") -> str:
    """A new image name in the project's ``functions`` repository, starting with ``name``."""
    return f"us-central1-docker.pkg.dev/{project}/functions/{name}-{uuid.uuid4().hex[:6]}"


def run_build(
    clients: Any, build: Any, timeout: float = 180, project: str = "local-project"
) -> Any:
    """Create ``build`` with ``clients.cloud_build`` and wait until it ends; the Build, which
    says how (a failed build fails its operation too: that error is not raised)."""
    from google.api_core import exceptions

    operation = clients.cloud_build.create_build(project_id=project, build=build)
    with contextlib.suppress(exceptions.GoogleAPICallError):
        operation.result(timeout=timeout)
    return clients.cloud_build.get_build(project_id=project, id=operation.metadata.build.id)


def build_function(clients: Any, bucket: Any, directory: Path, target: str, image: str) -> str:
    """Build a function's directory into ``image`` with Cloud Build (its source uploaded to
    ``bucket``); the image by digest."""
    blob = bucket.blob(f"{directory.name}-{uuid.uuid4().hex[:8]}.zip")
    blob.upload_from_string(zip_dir(directory))
    source = (bucket.name, blob.name, blob.generation)
    build = run_build(clients, pack_build(source, image, {"GOOGLE_FUNCTION_TARGET": target}))
    if not build.results.images:
        raise RuntimeError(f"building {directory} failed: {build.status_detail}")
    return f"{image}@{build.results.images[0].digest}"


def pull_image(
    registry_address: str, image: str, digest: str, dest: Path
) -> tuple[dict, dict, list[tuple[dict, Path]]]:
    """Pull ``image`` by digest as a runtime does: (manifest, config, [(layer descriptor,
    the layer's blob downloaded into ``dest``)])."""
    import asyncio

    from localcloud.registry.client import RegistryClient
    from localcloud.registry.names import parse_image

    path = parse_image(image).path

    async def fetch() -> tuple[dict, dict, list[tuple[dict, Path]]]:
        async with RegistryClient(registry_address) as registry:
            body, _media, got = await registry.get_manifest(path, digest)
            if got != digest:
                raise AssertionError(f"asked for {digest}, got {got}")
            manifest = json.loads(body)
            config = json.loads(await registry.get_blob_bytes(path, manifest["config"]["digest"]))
            layers = []
            for i, layer in enumerate(manifest["layers"]):
                blob = await registry.get_blob(path, layer["digest"], dest / f"layer{i}.tar.gz")
                layers.append((layer, blob))
            return manifest, config, layers

    return asyncio.run(fetch())


def run_service(
    image: str,
    env: dict[str, str] | None = None,
    limits: dict[str, str] | None = None,
    **template: Any,
) -> Any:
    """A Cloud Run Service of one container of ``image``; ``template`` sets more fields of
    its RevisionTemplate (scaling, timeout, max_instance_request_concurrency, ...)."""
    from google.cloud import run_v2

    container = run_v2.Container(
        image=image,
        env=[{"name": k, "value": v} for k, v in (env or {}).items()],
        resources={"limits": limits or {}},
    )
    return run_v2.Service(template=run_v2.RevisionTemplate(containers=[container], **template))


def call(
    url: str,
    *,
    token: str | None = None,
    host: str | None = None,
    timeout: float = 60,
    method: str | None = None,
    data: bytes | None = None,
) -> tuple[int, str]:
    """One HTTP request, as a deployed service's client makes it; (status, body)."""
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Recorder:
    """An HTTP server on loopback collecting the JSON documents a deployed function POSTs.

    The test functions (``tests/functions/event_recorder``) report each event they receive
    here, so a test sees what really reached the function.
    """

    def __init__(self, port: int = 0) -> None:
        """``port``: one of localcloud's ``run_host_ports`` when sandboxed functions post
        here (an instance reaches no other port of the host)."""
        self.events: list[dict] = []
        self.arrived = threading.Condition()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with recorder.arrived:
                    recorder.events.append(json.loads(body))
                    recorder.arrived.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.events) < count and time.monotonic() < deadline:
                self.arrived.wait(deadline - time.monotonic())
            return list(self.events)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_public(clients: Any, name: str) -> None:
    """Grant ``roles/run.invoker`` to ``allUsers`` on a Cloud Run service, as a user would."""
    from google.iam.v1 import policy_pb2

    policy = clients.run_services.get_iam_policy(request={"resource": name})
    policy.bindings.append(policy_pb2.Binding(role="roles/run.invoker", members=["allUsers"]))
    clients.run_services.set_iam_policy(request={"resource": name, "policy": policy})

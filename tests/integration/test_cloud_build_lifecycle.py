"""More Cloud Build scenarios through the official ``google-cloud-build`` client: queueing
beyond the concurrency limit, cancelling queued and running builds (and the pip they run),
the pushed image as a runtime would pull it, substitutions, the configs gcloud writes,
invalid input, and what survives a restart.

Expectations from https://cloud.google.com/build/docs/api/reference/rest/v1/projects.builds
and https://cloud.google.com/build/docs/subscribe-build-notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import re
import socket
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.api_core import exceptions
from google.cloud.devtools import cloudbuild_v1
from google.rpc import code_pb2

from localcloud import testing
from localcloud.registry.client import RegistryClient
from localcloud.registry.names import parse_image
from localcloud.testing import pack_args, pack_build, wait_for, write_wheel, zip_tree
from orchestrator.clients import Clients, Environment

FUNCTIONS = Path(__file__).parent.parent / "functions"
PROJECT = "local-project"
S = cloudbuild_v1.Build.Status
HELLO = {"main.py": "def hello(request):\n    return 'hello'\n"}
TARGET = {"GOOGLE_FUNCTION_TARGET": "hello"}
RUNTIME = f"python{sys.version_info[0]}{sys.version_info[1]}"


# -- helpers ----------------------------------------------------------------------------
def with_dependency_tree() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (FUNCTIONS / "with_dependency").iterdir()}


def image_name(name: str) -> str:
    return f"us-central1-docker.pkg.dev/{PROJECT}/functions/{name}-{uuid.uuid4().hex[:6]}"


def run_build(clients: Clients, build, timeout: float = 60):
    operation = clients.cloud_build.create_build(project_id=PROJECT, build=build)
    with contextlib.suppress(exceptions.GoogleAPICallError):
        operation.result(timeout=timeout)
    return clients.cloud_build.get_build(project_id=PROJECT, id=operation.metadata.build.id)


def build_limit() -> int:
    """The session instance's concurrent build limit: LOCALCLOUD_BUILD_LIMIT, else the CPUs."""
    return int(os.environ.get("LOCALCLOUD_BUILD_LIMIT") or 0) or os.cpu_count() or 2


def status_of(clients: Clients, build_id: str) -> int:
    return clients.cloud_build.get_build(project_id=PROJECT, id=build_id).status


def processes_with(marker: str) -> list[int]:
    """Live processes (not zombies) whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


GREETING_MODULE = 'def greet(name):\n    return f"hello, {name}, from a wheel"\n'


def pull(registry_address: str, image: str, digest: str, dest: Path) -> tuple[dict, dict, list]:
    """(manifest, config, [(layer descriptor, path of the downloaded blob)]) by digest."""
    ref = parse_image(image)

    async def fetch():
        async with RegistryClient(registry_address) as registry:
            body, _media, got = await registry.get_manifest(ref.path, digest)
            assert got == digest
            manifest = json.loads(body)
            config = json.loads(
                await registry.get_blob_bytes(ref.path, manifest["config"]["digest"])
            )
            layers = []
            for i, layer in enumerate(manifest["layers"]):
                path = await registry.get_blob(ref.path, layer["digest"], dest / f"layer{i}.tar.gz")
                layers.append((layer, path))
            return manifest, config, layers

    return asyncio.run(fetch())


@contextlib.contextmanager
def hanging_index() -> Iterator[str]:
    """A requirement whose download never answers: pip sits in a socket read (for its
    180 s default timeout), so the build stays WORKING until cancelled or timed out."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)  # never accept(): the kernel completes the handshake, nobody answers
    port = server.getsockname()[1]
    try:
        yield f"hangpkg @ http://127.0.0.1:{port}/hangpkg-0.1-py3-none-any.whl"
    finally:
        server.close()


def hanging_files(requirement: str) -> dict[str, str]:
    return {**HELLO, "requirements.txt": f"{requirement}\n# {uuid.uuid4()}\n"}


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clients(localcloud) -> Clients:
    return Clients(Environment.from_env(localcloud.env))


def _uploader(clients: Clients, prefix: str):
    bucket = clients.storage.create_bucket(f"{prefix}-{uuid.uuid4().hex[:8]}")

    def upload(data: bytes, name: str | None = None) -> tuple[str, str, int]:
        blob = bucket.blob(name or f"{uuid.uuid4().hex[:8]}.zip")
        blob.upload_from_string(data)
        return bucket.name, blob.name, blob.generation

    return upload


@pytest.fixture(scope="module")
def sources(clients):
    return _uploader(clients, "build-more")


@pytest.fixture
def cleanup_builds(clients) -> Iterator[list[str]]:
    """Build ids to cancel at the end whatever happens, so no test leaves a slot taken."""
    ids: list[str] = []
    yield ids
    for build_id in ids:
        with contextlib.suppress(exceptions.GoogleAPICallError):
            clients.cloud_build.cancel_build(project_id=PROJECT, id=build_id)


# -- queueing, cancel, timeout ----------------------------------------------------------
def test_builds_beyond_the_limit_stay_queued_then_run(localcloud, clients, sources):
    """The session instance runs at most os.cpu_count() builds at once (2 on CI); the rest
    wait QUEUED and then run. Each build pip-installs (different requirements)."""
    limit = build_limit()
    count = limit + 2
    tag = f"limit-{uuid.uuid4().hex[:8]}"
    ids = []
    for _ in range(count):
        files = {
            **with_dependency_tree(),
            "requirements.txt": f"localgreeting==0.1.0\n# {uuid.uuid4()}\n",
        }
        build = pack_build(sources(zip_tree(files)), image_name("limit"), TARGET, tags=[tag])
        op = clients.cloud_build.create_build(project_id=PROJECT, build=build)
        ids.append(op.metadata.build.id)

    max_working, saw_queue = 0, False
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        # One ListBuilds is one consistent snapshot of all of them.
        snapshot = list(clients.cloud_build.list_builds(project_id=PROJECT, filter=f'tags="{tag}"'))
        assert {b.id for b in snapshot} == set(ids)
        working = sum(b.status == S.WORKING for b in snapshot)
        max_working = max(max_working, working)
        if working == limit and any(b.status == S.QUEUED for b in snapshot):
            saw_queue = True
        if all(b.status not in (S.QUEUED, S.WORKING) for b in snapshot):
            break
        time.sleep(0.05)
    else:
        pytest.fail("builds did not finish in 90 s")
    final = {b.id: b for b in snapshot}
    assert all(b.status == S.SUCCESS for b in final.values()), [
        (b.id, S(b.status).name, b.status_detail) for b in final.values()
    ]
    assert max_working <= limit
    assert saw_queue, "no build was ever seen QUEUED while the limit was reached"
    # Each installed its own requirements (no cache hit between different files).
    for build_id in ids:
        log = Path(localcloud.config.data_dir, "logs", "builds", f"{build_id}.log").read_text()
        assert re.search(r"dependencies layer \S+ \(installed\)", log), log


def test_cancel_a_queued_build_and_the_pip_of_working_ones(
    localcloud, clients, sources, cleanup_builds
):
    """Fill every slot with builds whose pip hangs; a further build stays QUEUED and can be
    cancelled; cancelling the working ones kills their pip; the slots are free again."""
    limit = build_limit()
    with hanging_index() as requirement:
        blockers = []
        for _ in range(limit):
            op = clients.cloud_build.create_build(
                project_id=PROJECT,
                build=pack_build(
                    sources(zip_tree(hanging_files(requirement))), image_name("block"), TARGET
                ),
            )
            blockers.append(op.metadata.build.id)
            cleanup_builds.append(op.metadata.build.id)
        for build_id in blockers:
            wait_for(lambda b=build_id: processes_with(f"{b[:8]}-"), 30, "pip of a blocker")
            assert status_of(clients, build_id) == S.WORKING

        queued_op = clients.cloud_build.create_build(
            project_id=PROJECT,
            build=pack_build(sources(zip_tree(HELLO)), image_name("queued"), TARGET),
        )
        queued = queued_op.metadata.build.id
        cleanup_builds.append(queued)
        # The build's task opens its log just before it asks for a slot, and a build that
        # gets one is WORKING in the same step: once the log is there, the wait has begun.
        log = Path(localcloud.config.data_dir, "logs", "builds", f"{queued}.log")
        wait_for(log.exists, 30, "the queued build's task to ask for a slot")
        assert status_of(clients, queued) == S.QUEUED

        cancelled = clients.cloud_build.cancel_build(project_id=PROJECT, id=queued)
        assert cancelled.status == S.CANCELLED
        assert cancelled.finish_time
        assert not cancelled.start_time, "the queued build ran before it was cancelled"
        with pytest.raises(exceptions.Cancelled):
            queued_op.result(timeout=10)
        done = clients.operations.get_operation(queued_op.operation.name)
        assert done.done and done.error.code == code_pb2.CANCELLED
        meta = cloudbuild_v1.BuildOperationMetadata.deserialize(done.metadata.value)
        assert meta.build.status == S.CANCELLED  # the operation and the build agree

        # Cancelling a finished build is refused, not INTERNAL.
        with pytest.raises(exceptions.FailedPrecondition):
            clients.cloud_build.cancel_build(project_id=PROJECT, id=queued)

        for build_id in blockers:
            build = clients.cloud_build.cancel_build(project_id=PROJECT, id=build_id)
            assert build.status == S.CANCELLED
            assert build.steps[0].status == S.CANCELLED
            wait_for(lambda b=build_id: not processes_with(f"{b[:8]}-"), 10, "pip to be killed")

    # Both slots are free again: a new build runs at once.
    build = run_build(
        clients, pack_build(sources(zip_tree(HELLO)), image_name("after"), TARGET), timeout=30
    )
    assert build.status == S.SUCCESS, build.status_detail


def test_timeout_kills_pip_and_leaves_no_cache_entry(localcloud, clients, sources, cleanup_builds):
    with hanging_index() as requirement:
        files = hanging_files(requirement)
        op = clients.cloud_build.create_build(
            project_id=PROJECT,
            build=pack_build(
                sources(zip_tree(files)), image_name("timeout"), TARGET, timeout={"seconds": 3}
            ),
        )
        build_id = op.metadata.build.id
        cleanup_builds.append(build_id)
        with pytest.raises(exceptions.GoogleAPICallError):
            op.result(timeout=30)
        build = clients.cloud_build.get_build(project_id=PROJECT, id=build_id)
        assert build.status == S.TIMEOUT
        done = clients.operations.get_operation(op.operation.name)
        assert done.done and done.error.code == code_pb2.DEADLINE_EXCEEDED
        wait_for(lambda: not processes_with(f"{build_id[:8]}-"), 10, "pip to be killed")

    key = hashlib.sha256(RUNTIME.encode() + b"\0" + files["requirements.txt"].encode()).hexdigest()
    cache = Path(localcloud.config.data_dir, "build-cache")
    assert not (cache / "dependencies" / key).exists()
    wait_for(lambda: not list(cache.glob(f".{key[:12]}-*")), 5, "the partial layer to go")


def test_failed_pip_install_is_not_cached(localcloud, clients, sources):
    files = {**HELLO, "requirements.txt": f"no-such-package-xyz==9.9\n# {uuid.uuid4()}\n"}
    first = run_build(clients, pack_build(sources(zip_tree(files)), image_name("nopkg"), TARGET))
    assert first.status == S.FAILURE
    assert "pip install failed" in first.status_detail
    key = hashlib.sha256(RUNTIME.encode() + b"\0" + files["requirements.txt"].encode()).hexdigest()
    cache = Path(localcloud.config.data_dir, "build-cache")
    assert not (cache / "dependencies" / key).exists()
    assert not list(cache.glob(f".{key[:12]}-*"))
    # The same requirements fail again (pip runs again) instead of reusing a broken layer.
    again = run_build(clients, pack_build(sources(zip_tree(files)), image_name("nopkg"), TARGET))
    assert again.status == S.FAILURE and "pip install failed" in again.status_detail


def test_two_builds_with_the_same_new_requirements_at_once_share_one_install(
    localcloud, clients, sources
):
    files = {
        **with_dependency_tree(),
        "requirements.txt": f"localgreeting==0.1.0\n# {uuid.uuid4()}\n",
    }
    ops = [
        clients.cloud_build.create_build(
            project_id=PROJECT,
            build=pack_build(sources(zip_tree(files)), image_name("same"), TARGET),
        )
        for _ in range(2)
    ]
    builds = []
    for op in ops:
        with contextlib.suppress(exceptions.GoogleAPICallError):
            op.result(timeout=60)
        builds.append(clients.cloud_build.get_build(project_id=PROJECT, id=op.metadata.build.id))
    assert [b.status for b in builds] == [S.SUCCESS, S.SUCCESS], [b.status_detail for b in builds]
    logs = [
        Path(localcloud.config.data_dir, "logs", "builds", f"{b.id}.log").read_text()
        for b in builds
    ]
    outcomes = sorted(re.search(r"dependencies layer \S+ \((\w+)\)", log)[1] for log in logs)
    assert outcomes == ["cached", "installed"]
    assert builds[0].results.images[0].digest == builds[1].results.images[0].digest


def _wheel_bytes(tmp: Path, name: str, module: str) -> bytes:
    return write_wheel(tmp, name, "0.1", module).read_bytes()


def test_requirements_may_name_files_of_the_source(localcloud, clients, sources, tmp_path):
    """Google's buildpack runs pip in /workspace, so a requirement can be a path inside the
    source (a vendored wheel): pip must run with the source as its working directory."""
    name = f"vendored{uuid.uuid4().hex[:6]}"
    files = {
        **HELLO,
        f"wheels/{name}-0.1-py3-none-any.whl": _wheel_bytes(tmp_path, name, "V = 1\n"),
        "requirements.txt": f"./wheels/{name}-0.1-py3-none-any.whl\n",
    }
    build = run_build(clients, pack_build(sources(zip_tree(files)), image_name("vendored"), TARGET))
    assert build.status == S.SUCCESS, build.status_detail


def test_a_change_in_an_included_requirements_file_is_not_served_from_cache(
    localcloud, clients, sources
):
    """``-r base.txt`` is part of what gets installed, so it must be part of the cache key."""
    marker = uuid.uuid4().hex
    top = f"-r base.txt\n# {marker}\n"
    first = run_build(
        clients,
        pack_build(
            sources(zip_tree({**HELLO, "requirements.txt": top, "base.txt": "# nothing yet\n"})),
            image_name("base"),
            TARGET,
        ),
    )
    assert first.status == S.SUCCESS, first.status_detail
    tree = {**with_dependency_tree(), "requirements.txt": top, "base.txt": "localgreeting==0.1.0\n"}
    second = run_build(clients, pack_build(sources(zip_tree(tree)), image_name("base"), TARGET))
    assert second.status == S.SUCCESS, second.status_detail
    log = Path(localcloud.config.data_dir, "logs", "builds", f"{second.id}.log").read_text()
    assert re.search(r"dependencies layer \S+ \(installed\)", log), "stale cached layer reused"


# -- the image as a runtime pulls it ----------------------------------------------------
def _check_reproducible_tar(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path, "r:gz") as tar:
        members = tar.getmembers()
    for m in members:
        assert m.mtime == 0, m.name
        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", ""), m.name
        assert not m.name.startswith("/") and ".." not in m.name.split("/"), m.name
        assert "__pycache__" not in m.name and not m.name.endswith(".pyc"), m.name
    with open(path, "rb") as f:
        assert f.read(10)[4:8] == b"\0\0\0\0", "gzip header mtime must be 0"
    return members


@pytest.fixture(scope="module")
def pulled(localcloud, clients, sources, tmp_path_factory):
    """A function with a dependency and a package, built once and pulled by digest."""
    tree = {
        **with_dependency_tree(),
        "pkg/__init__.py": b"",
        "pkg/util.py": b"X = 1\n",
        "a_helper.py": b"Y = 2\n",
    }
    image = image_name("pulled") + ":v1"
    build = run_build(clients, pack_build(sources(zip_tree(tree)), image, TARGET))
    assert build.status == S.SUCCESS, build.status_detail
    (built,) = build.results.images
    assert built.name == image
    return pull(
        localcloud.config.registry_address, image, built.digest, tmp_path_factory.mktemp("pull")
    )


def test_pulled_image_has_source_dependencies_and_a_runnable_config(pulled):
    manifest, config, layers = pulled
    assert manifest["schemaVersion"] == 2
    assert [entry["digest"] for entry, _ in layers] == [m["digest"] for m in manifest["layers"]]
    files: dict[str, tarfile.TarInfo] = {}
    diff_ids = []
    for entry, path in layers:
        assert entry["size"] == path.stat().st_size
        with open(path, "rb") as f:
            diff_ids.append("sha256:" + hashlib.sha256(gzip.decompress(f.read())).hexdigest())
        for member in _check_reproducible_tar(path):
            files[member.name] = member
    assert config["rootfs"]["diff_ids"] == diff_ids

    assert files["workspace/main.py"].isfile()
    assert files["workspace/pkg/util.py"].mode == 0o644
    assert "layers/python/dependencies/lib/localgreeting.py" in files
    assert any(
        n.startswith("layers/python/functions-framework/lib/functions_framework/") for n in files
    )

    env = dict(line.split("=", 1) for line in config["config"]["Env"])
    assert env["PYTHONPATH"].split(":") == [
        "/workspace",
        "/layers/python/dependencies/lib",
        "/layers/python/functions-framework/lib",
    ]
    assert env["FUNCTION_TARGET"] == env["GOOGLE_FUNCTION_TARGET"] == "hello"
    assert env["FUNCTION_SIGNATURE_TYPE"] == "http"
    assert config["config"]["Entrypoint"] == ["python3", "-m", "functions_framework"]
    assert config["config"]["WorkingDir"] == "/workspace"
    assert config["os"] == "linux"


def test_layer_entries_are_sorted_by_name(pulled):
    """layers.py: "Entries are sorted" (as ``tar --sort=name`` and the buildpacks lifecycle
    write them); a parent always sorts before its children."""
    _manifest, _config, layers = pulled
    for _entry, path in layers:
        with tarfile.open(path, "r:gz") as tar:
            names = tar.getnames()
        assert names == sorted(names), f"entries of {path.name} are not sorted: {names[:12]}"


# -- configs gcloud writes, substitutions ------------------------------------------------
def test_run_deploy_source_two_step_config_is_accepted(clients, sources):
    """``gcloud run deploy --source`` / ``builds submit --pack`` without --builder: a
    ``pack config default-builder`` step, then ``pack build`` without --builder."""
    image = image_name("rundeploy")
    bucket, name, generation = sources(zip_tree(HELLO))
    build = cloudbuild_v1.Build(
        source={"storage_source": {"bucket": bucket, "object_": name, "generation": generation}},
        steps=[
            {
                "name": "gcr.io/k8s-skaffold/pack",
                "entrypoint": "pack",
                "args": ["config", "default-builder", "gcr.io/buildpacks/builder:latest"],
            },
            {
                "name": "gcr.io/k8s-skaffold/pack",
                "entrypoint": "pack",
                "args": pack_args(
                    image, {**TARGET, "GOOGLE_FUNCTION_SIGNATURE_TYPE": "http"}, builder=False
                ),
            },
        ],
        images=[image],
    )
    done = run_build(clients, build)
    assert done.status == S.SUCCESS, done.status_detail
    assert [s.status for s in done.steps] == [S.SUCCESS, S.SUCCESS]
    assert done.results.images[0].name == image


def test_substitutions_are_expanded(localcloud, clients, sources, tmp_path):
    template = "us-central1-docker.pkg.dev/$PROJECT_ID/functions/subst-${_NAME}:$_TAG"
    name = uuid.uuid4().hex[:6]
    bucket, obj, generation = sources(zip_tree(HELLO))
    build = cloudbuild_v1.Build(
        source={"storage_source": {"bucket": bucket, "object_": obj, "generation": generation}},
        steps=[
            {
                "name": "gcr.io/k8s-skaffold/pack",
                "entrypoint": "pack",
                "args": pack_args(template, {**TARGET, "BUILT_BY": "$BUILD_ID", "PRICE": "$$5"}),
            }
        ],
        images=[template],
        substitutions={"_NAME": name, "_TAG": "v7"},
    )
    done = run_build(clients, build)
    assert done.status == S.SUCCESS, done.status_detail
    expected = f"us-central1-docker.pkg.dev/{PROJECT}/functions/subst-{name}:v7"
    assert done.results.images[0].name == expected
    _manifest, config, _layers = pull(
        localcloud.config.registry_address, expected, done.results.images[0].digest, tmp_path
    )
    env = dict(line.split("=", 1) for line in config["config"]["Env"])
    assert env["BUILT_BY"] == done.id
    assert env["PRICE"] == "$5"


@pytest.mark.parametrize(
    "files",
    [
        {"app/main.py": HELLO["main.py"], "docs/readme.txt": "x"},
        {"app/main.py": HELLO["main.py"]},  # only one top-level directory
    ],
    ids=["two-top-level-dirs", "one-top-level-dir"],
)
def test_pack_path_selects_a_directory_of_the_source(localcloud, clients, sources, tmp_path, files):
    image = image_name("path")
    build = pack_build(sources(zip_tree(files)), image, TARGET)
    build.steps[0].args.extend(["--path", "app"])
    done = run_build(clients, build)
    assert done.status == S.SUCCESS, done.status_detail
    _manifest, _config, layers = pull(
        localcloud.config.registry_address, image, done.results.images[0].digest, tmp_path
    )
    with tarfile.open(layers[-1][1], "r:gz") as tar:
        assert "workspace/main.py" in tar.getnames()


def _step(args: list[str], name: str = "gcr.io/k8s-skaffold/pack") -> dict:
    return {"name": name, "entrypoint": "pack", "args": args}


SOURCE = {"storage_source": {"bucket": "some-bucket", "object_": "src.zip"}}
GOOD_IMAGE = f"us-central1-docker.pkg.dev/{PROJECT}/functions/ok"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"source": SOURCE, "steps": [_step(pack_args("gcr.io/local-project/app", TARGET))]},
            r"build\.steps\[0\]\.args.*gcr\.io",
        ),
        (
            {
                "source": SOURCE,
                "steps": [
                    _step(["config", "default-builder", "gcr.io/buildpacks/builder:latest"]),
                    _step([*pack_args(GOOD_IMAGE, TARGET), "--publish"]),
                ],
            },
            r"build\.steps\[1\]\.args: pack flag '--publish'",
        ),
        (
            {
                "source": SOURCE,
                "steps": [_step(pack_args(GOOD_IMAGE, TARGET))],
                "images": [GOOD_IMAGE + "-other"],
            },
            r"build\.images\[0\]",
        ),
        ({"steps": [_step(pack_args(GOOD_IMAGE, TARGET))]}, r"build\.source"),
        (
            {
                "source": {"repo_source": {"repo_name": "r", "branch_name": "main"}},
                "steps": [_step(pack_args(GOOD_IMAGE, TARGET))],
            },
            r"build\.source",
        ),
        (
            {
                "source": SOURCE,
                "steps": [_step([*pack_args(GOOD_IMAGE, TARGET), "--env", "NOEQUALS"])],
            },
            r"build\.steps\[0\]\.args: --env",
        ),
        (
            {
                "source": SOURCE,
                "steps": [_step([*pack_args(GOOD_IMAGE, TARGET), "--path", "../up"])],
            },
            r"build\.steps\[0\]\.args: --path",
        ),
        (
            {
                "source": SOURCE,
                "steps": [
                    _step(pack_args(GOOD_IMAGE, TARGET), name="gcr.io/cloud-builders/docker")
                ],
            },
            r"build\.steps\[0\]\.name",
        ),
        (
            {
                "source": SOURCE,
                "steps": [_step(pack_args(GOOD_IMAGE, TARGET))],
                "timeout": {"seconds": 25 * 3600},
            },
            r"timeout",
        ),
        (
            {
                "source": SOURCE,
                "steps": [_step(["build", "us-central1-docker.pkg.dev/$PROJECT_ID/f/$_UNSET"])],
            },
            r"build\.steps\[0\]\.args",
        ),
    ],
    ids=[
        "bad-image-host",
        "unknown-pack-flag",
        "images-not-the-pack-image",
        "no-source",
        "repo-source",
        "env-without-value",
        "path-escapes",
        "docker-step",
        "timeout-over-24h",
        "unset-substitution",
    ],
)
def test_invalid_configs_are_invalid_argument_naming_the_field(clients, fields, expected):
    before = {b.id for b in clients.cloud_build.list_builds(project_id=PROJECT)}
    with pytest.raises(exceptions.InvalidArgument, match=expected):
        clients.cloud_build.create_build(project_id=PROJECT, build=cloudbuild_v1.Build(**fields))
    after = {b.id for b in clients.cloud_build.list_builds(project_id=PROJECT)}
    assert after == before  # nothing was stored


def test_bad_requests_are_client_errors(clients):
    cb = clients.cloud_build
    with pytest.raises(exceptions.InvalidArgument):
        cb.get_build(name="projects/local-project/builds/x")
    with pytest.raises(exceptions.NotFound):
        cb.get_build(project_id=PROJECT, id=str(uuid.uuid4()))
    with pytest.raises(exceptions.NotFound):
        cb.cancel_build(project_id=PROJECT, id=str(uuid.uuid4()))
    with pytest.raises(exceptions.NotFound):
        cb.retry_build(project_id=PROJECT, id=str(uuid.uuid4()))
    with pytest.raises(exceptions.InvalidArgument):
        list(cb.list_builds(project_id=PROJECT, filter='status="NOPE"'))
    with pytest.raises(exceptions.InvalidArgument):
        list(cb.list_builds(project_id=PROJECT, filter='create_time>"2020-01-01T00:00:00Z" OR x'))
    with pytest.raises(exceptions.InvalidArgument):
        cb.list_builds(request={"project_id": PROJECT, "page_token": "!!!not-a-token"})


def test_default_timeout_is_60_minutes(clients, sources):
    """``timeout``: "Default time is 60 minutes." (Build in the v1 reference)."""
    build = run_build(
        clients, pack_build(sources(zip_tree(HELLO)), image_name("deftimeout"), TARGET)
    )
    assert build.status == S.SUCCESS
    assert build.timeout.total_seconds() == 3600


def test_notifications_carry_the_build_json_and_attributes(
    localcloud, local_target, clients, sources
):
    topic = "projects/local-project/topics/cloud-builds"
    with contextlib.suppress(exceptions.AlreadyExists):
        local_target.publisher.create_topic(name=topic)
    sub = local_target.subscription_path("builds-more")
    local_target.subscriber.create_subscription(name=sub, topic=topic)
    try:
        with hanging_index() as requirement:
            op = clients.cloud_build.create_build(
                project_id=PROJECT,
                build=pack_build(
                    sources(zip_tree(hanging_files(requirement))), image_name("notify2"), TARGET
                ),
            )
            build_id = op.metadata.build.id
            wait_for(lambda: status_of(clients, build_id) == S.WORKING, 30, "WORKING")
            # CancelOperation on the build's operation cancels the build (and notifies).
            clients.operations.cancel_operation(op.operation.name)
            assert status_of(clients, build_id) == S.CANCELLED
        final = None
        deadline = time.monotonic() + 20
        while final is None and time.monotonic() < deadline:
            response = local_target.subscriber.pull(
                request={"subscription": sub, "max_messages": 50}, timeout=5
            )
            for m in response.received_messages:
                attrs = m.message.attributes
                if attrs["buildId"] != build_id:
                    continue
                data = json.loads(m.message.data)
                assert data["id"] == build_id and data["status"] == attrs["status"]
                assert data["projectId"] == PROJECT  # Build JSON: camelCase field names
                if attrs["status"] not in ("QUEUED", "WORKING"):
                    final = attrs["status"]
        assert final == "CANCELLED"
    finally:
        local_target.subscriber.delete_subscription(subscription=sub)


# -- another instance: reproducibility across data dirs, restart ------------------------
@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """A second localcloud on its own data dir (the session one must not be restarted)."""
    root = tmp_path_factory.mktemp("own-localcloud")
    wheelhouse = root / "wheelhouse"
    wheelhouse.mkdir()
    write_wheel(wheelhouse, "localgreeting", "0.1.0", GREETING_MODULE)
    holder = {
        "instance": testing.start(
            root / "data", extra_env={"LOCALCLOUD_WHEELHOUSE": str(wheelhouse)}
        )
    }
    yield holder
    holder["instance"].stop()


def _own_clients(instance: testing.Instance) -> Clients:
    return Clients(Environment.from_env(instance.env))


def _own_upload(instance: testing.Instance, data: bytes) -> tuple[str, str, int]:
    """Upload to the other instance's storage (the storage client reads os.environ)."""
    with instance.client_env():
        return _uploader(Clients(Environment.from_env(instance.env)), "own")(data)


@pytest.mark.slow
def test_layers_are_reproducible_across_data_dirs(localcloud, clients, sources, own):
    tree = {**with_dependency_tree(), "sub/x.py": b"Z = 3\n"}
    env = {**TARGET, "SOME": "value"}
    here = run_build(clients, pack_build(sources(zip_tree(tree)), image_name("repro"), env))
    assert here.status == S.SUCCESS, here.status_detail

    other = _own_clients(own["instance"])
    there = run_build(
        other, pack_build(_own_upload(own["instance"], zip_tree(tree)), image_name("repro"), env)
    )
    assert there.status == S.SUCCESS, there.status_detail
    # Same tree, same requirements: same layers (dependencies included), same manifest.
    assert there.results.images[0].digest == here.results.images[0].digest


@pytest.fixture(scope="module")
def restarted(own):
    """On the other instance: one finished build, one whose pip hangs; then SIGKILL and
    start again on the same data dir. Returns the clients and what was created."""
    instance = own["instance"]
    c = _own_clients(instance)
    finished_op = c.cloud_build.create_build(
        project_id=PROJECT,
        build=pack_build(_own_upload(instance, zip_tree(HELLO)), image_name("kept"), TARGET),
    )
    finished_op.result(timeout=60)
    with hanging_index() as requirement:
        running_op = c.cloud_build.create_build(
            project_id=PROJECT,
            build=pack_build(
                _own_upload(instance, zip_tree(hanging_files(requirement))),
                image_name("run"),
                TARGET,
            ),
        )
        running_id = running_op.metadata.build.id
        wait_for(lambda: processes_with(f"{running_id[:8]}-"), 30, "pip of the running build")
        orphans = processes_with(f"{running_id[:8]}-")
        instance.kill()  # no chance to finish anything
        for pid in orphans:  # the killed server's pip child, started by this test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
    again = testing.start(
        instance.config.data_dir, config=instance.config, extra_env=instance.extra_env
    )
    own["instance"] = again
    return _own_clients(again), finished_op, running_op


@pytest.mark.slow
def test_a_finished_build_and_its_operation_survive_a_restart(restarted):
    c, finished_op, _running_op = restarted
    finished_id = finished_op.metadata.build.id
    kept = c.cloud_build.get_build(project_id=PROJECT, id=finished_id)
    assert kept.status == S.SUCCESS and kept.results.images[0].digest
    assert c.cloud_build.get_build(name=kept.name).id == finished_id
    op = c.operations.get_operation(finished_op.operation.name)
    assert op.done and op.response.value
    assert cloudbuild_v1.Build.deserialize(op.response.value).id == finished_id
    listed = [
        b.id for b in c.cloud_build.list_builds(project_id=PROJECT, filter='status="SUCCESS"')
    ]
    assert finished_id in listed


@pytest.mark.slow
def test_a_build_running_at_a_crash_ends_internal_error_with_its_operation_done(restarted):
    c, _finished_op, running_op = restarted
    ended = c.cloud_build.get_build(project_id=PROJECT, id=running_op.metadata.build.id)
    assert ended.status == S.INTERNAL_ERROR
    assert ended.finish_time
    op = c.operations.get_operation(running_op.operation.name)
    meta = cloudbuild_v1.BuildOperationMetadata.deserialize(op.metadata.value)
    problems = [
        what
        for what, ok in [
            ("the operation is not done", op.done),
            ("the operation has no INTERNAL error", op.error.code == code_pb2.INTERNAL),
            (
                "the operation's metadata still shows the old status",
                meta.build.status == S.INTERNAL_ERROR,
            ),
            ("the pack step is still WORKING", ended.steps[0].status != S.WORKING),
        ]
        if not ok
    ]
    assert not problems, problems


@pytest.mark.slow
def test_a_build_running_at_a_graceful_stop_is_not_reported_as_user_cancelled(restarted, own):
    """Builder.start's contract: a build localcloud stopped under it ends INTERNAL_ERROR
    ("localcloud stopped while this build ran; retry it"); nobody cancelled it."""
    instance = own["instance"]
    c = _own_clients(instance)
    with hanging_index() as requirement:
        op = c.cloud_build.create_build(
            project_id=PROJECT,
            build=pack_build(
                _own_upload(instance, zip_tree(hanging_files(requirement))),
                image_name("stop"),
                TARGET,
            ),
        )
        build_id = op.metadata.build.id
        wait_for(lambda: processes_with(f"{build_id[:8]}-"), 30, "pip of the running build")
        own["instance"] = instance.restart()  # SIGTERM, then start again
    c = _own_clients(own["instance"])
    assert not processes_with(f"{build_id[:8]}-")
    done = c.operations.get_operation(op.operation.name)
    assert done.done
    build = c.cloud_build.get_build(project_id=PROJECT, id=build_id)
    assert build.status == S.INTERNAL_ERROR, (S(build.status).name, build.status_detail)

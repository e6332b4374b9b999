"""What a build puts in the image it pushes, through the official ``google-cloud-build``
client: the dependencies pip installs (once: the cache, and what must not come from it),
and the image as a runtime pulls it, with reproducible layers on any data directory, each
carrying the byte code of its modules (compiled at build time, so an instance does not).

Expectations from https://cloud.google.com/build/docs/api/reference/rest/v1/projects.builds.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import json
import re
import sys
import tarfile
import uuid
from pathlib import Path

import pytest
from google.api_core import exceptions
from google.cloud.devtools import cloudbuild_v1

from localcloud.testing import (
    call,
    image_name,
    pack_build,
    pull_image,
    run_build,
    write_wheel,
    zip_tree,
)

FUNCTIONS = Path(__file__).parent.parent / "functions"
PROJECT = "local-project"
S = cloudbuild_v1.Build.Status
HELLO = {"main.py": "def hello(request):\n    return 'hello'\n"}
TARGET = {"GOOGLE_FUNCTION_TARGET": "hello"}
RUNTIME = f"python{sys.version_info[0]}{sys.version_info[1]}"


def with_dependency_tree() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (FUNCTIONS / "with_dependency").iterdir()}


# -- dependencies -----------------------------------------------------------------------
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
CACHE_TAG = sys.implementation.cache_tag
UNCHECKED_HASH = 0b01  # PEP 552 flags: hash-based (bit 0), source not checked (bit 1 clear)


def _check_reproducible_tar(path: Path) -> list[tarfile.TarInfo]:
    """Checks every entry's metadata, and that each ``.pyc`` is the unchecked-hash byte code
    of a source beside it, in its ``__pycache__``; the members."""
    files: dict[str, bytes] = {}
    with tarfile.open(path, "r:gz") as tar:
        members = tar.getmembers()
        for m in members:
            assert m.mtime == 0, m.name
            assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "", ""), m.name
            assert not m.name.startswith("/") and ".." not in m.name.split("/"), m.name
            if m.name.endswith((".py", ".pyc")) and m.isfile():
                handle = tar.extractfile(m)
                assert handle is not None
                files[m.name] = handle.read()
    for name, data in files.items():
        if not name.endswith(".pyc"):
            continue
        source = importlib.util.source_from_cache(name)  # refuses a .pyc outside __pycache__
        assert name.endswith(f".{CACHE_TAG}.pyc"), name
        assert data[:4] == importlib.util.MAGIC_NUMBER, name
        assert int.from_bytes(data[4:8], "little") == UNCHECKED_HASH, name
        assert data[8:16] == importlib.util.source_hash(files[source]), name
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
    return pull_image(
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


def test_every_layer_carries_the_byte_code_of_its_modules(pulled):
    """Compiled at build time (unchecked-hash, checked by _check_reproducible_tar), for the
    source, the dependencies and functions-framework alike."""
    _manifest, _config, layers = pulled
    names: set[str] = set()
    for _entry, path in layers:
        names |= {m.name for m in _check_reproducible_tar(path)}
    for module in (
        "workspace/main",
        "workspace/a_helper",
        "workspace/pkg/util",
        "layers/python/dependencies/lib/localgreeting",
        "layers/python/functions-framework/lib/functions_framework/__init__",
        "layers/python/functions-framework/lib/flask/app",
    ):
        assert importlib.util.cache_from_source(module + ".py") in names, module


def test_layer_entries_are_sorted_by_name(pulled):
    """layers.py: "Entries are sorted" (as ``tar --sort=name`` and the buildpacks lifecycle
    write them); a parent always sorts before its children."""
    _manifest, _config, layers = pulled
    for _entry, path in layers:
        with tarfile.open(path, "r:gz") as tar:
            names = tar.getnames()
        assert names == sorted(names), f"entries of {path.name} are not sorted: {names[:12]}"


@pytest.mark.slow
def test_layers_are_reproducible_across_data_dirs(clients, sources, other_localcloud):
    tree = {**with_dependency_tree(), "sub/x.py": b"Z = 3\n"}
    env = {**TARGET, "SOME": "value"}
    here = run_build(clients, pack_build(sources(zip_tree(tree)), image_name("repro"), env))
    assert here.status == S.SUCCESS, here.status_detail

    there = run_build(
        other_localcloud.clients(),
        pack_build(other_localcloud.upload(zip_tree(tree)), image_name("repro"), env),
    )
    assert there.status == S.SUCCESS, there.status_detail
    # Same tree, same requirements: same layers (dependencies included), same manifest.
    assert there.results.images[0].digest == here.results.images[0].digest


# A set constant of strings: marshal writes sets in hash order before Python 3.11 (which
# sorts them), so there another hash seed would change the bytes.
REPRODUCIBLE = {
    **HELLO,
    "choices.py": "def kind(x):\n    return x in {"
    + ", ".join(f"'k{i}'" for i in range(40))
    + "}\n",
}


def test_byte_code_is_the_same_in_every_build_of_the_same_source(clients, sources):
    """An upload's own ``__pycache__`` (stale, another Python's) is replaced, never kept:
    two builds of the same source give the same image whatever byte code came with it."""
    stale = {
        f"__pycache__/main.{CACHE_TAG}.pyc": b"stale byte code",
        "__pycache__/choices.cpython-39.pyc": b"another Python's",
    }
    images = []
    for tree in (REPRODUCIBLE, {**REPRODUCIBLE, **stale}):
        build = run_build(clients, pack_build(sources(zip_tree(tree)), image_name("pyc"), TARGET))
        assert build.status == S.SUCCESS, build.status_detail
        images.append(build.results.images[0].digest)
    assert images[0] == images[1]


# Records which module files the interpreter opens from the moment main is imported: a
# module imported from its byte code opens only its .pyc; one compiled at start opens its
# .py as well (after trying a .pyc that is not there).
PROBE = """import json
import sys

OPENED = []


def _audit(event, args):
    if event == "open" and str(args[0]).endswith((".py", ".pyc")):
        OPENED.append(str(args[0]))


sys.addaudithook(_audit)

import localgreeting  # noqa: E402  (the dependencies layer)
from pkg import util  # noqa: E402  (the source layer)


def hello(request):
    flask = sys.modules["flask"]
    return json.dumps({"opened": OPENED, "flask_cached": flask.__cached__,
                       "flask_pyc_exists": __import__("os").path.exists(flask.__cached__)})
"""


def test_an_instance_imports_the_byte_code_of_its_layers(clients, sources, deploy):
    tree = {
        "main.py": PROBE,
        "requirements.txt": "localgreeting==0.1.0\n",
        "pkg/__init__.py": "",
        "pkg/util.py": "X = 1\n",
    }
    image = image_name("probe")
    build = run_build(clients, pack_build(sources(zip_tree(tree)), image, TARGET))
    assert build.status == S.SUCCESS, build.status_detail
    service = deploy(f"{image}@{build.results.images[0].digest}", public=True)
    status, body = call(service.uri)
    assert status == 200, body
    report = json.loads(body)
    opened = report["opened"]
    for module in ("pkg/util", "localgreeting"):
        pyc = importlib.util.cache_from_source(f"{module}.py")
        assert any(p.endswith(pyc) for p in opened), (module, opened)
        assert not any(p.endswith(f"/{module}.py") for p in opened), (module, opened)
    # functions-framework (Flask...) was imported before main: its byte code is there.
    assert report["flask_cached"].endswith(f"flask/__pycache__/__init__.{CACHE_TAG}.pyc")
    assert report["flask_pyc_exists"], report

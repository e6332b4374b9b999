"""A Node.js functions buildpack: a source tree in, an OCI image out, as Google's builds it.

Google's builder picks Node.js when ``GOOGLE_RUNTIME`` names it (``nodejs20``), or, with no
runtime given, when the source has a ``package.json`` and nothing Python detects first (the
builder tries Python's groups before Node.js's: builders/gcp/base/google.22.builder.toml in
GoogleCloudPlatform/buildpacks). Then, as its nodejs/npm and nodejs/functions_framework
buildpacks do (https://cloud.google.com/docs/buildpacks/nodejs):

- ``package.json`` must be JSON (an object), else the build fails naming it;
- ``node_modules`` in the source is ignored: dependencies are installed afresh;
- dependencies: ``npm ci`` when ``package-lock.json`` (or ``npm-shrinkwrap.json``) is there,
  else ``npm install``, production dependencies only (``--omit=dev``, ``NODE_ENV=production``),
  into a layer cached by the hash of package.json, the lock file and the runtime, so a
  source-only change installs nothing; a failing npm fails the build with npm's words;
- the main file (package.json ``main``, else ``index.js``, else ``function.js``) must exist
  and pass ``node --check``;
- ``@google-cloud/functions-framework`` is added in a layer of its own, shared by every image
  of the runtime, when the function does not depend on it, with the function's
  ``node_modules`` on ``NODE_PATH``;
- the config runs the framework's ``main.js`` with node, ``FUNCTION_TARGET`` and
  ``FUNCTION_SIGNATURE_TYPE`` from ``GOOGLE_FUNCTION_TARGET``/``GOOGLE_FUNCTION_SIGNATURE_TYPE``
  (Google's buildpack sets these variables rather than flags), PORT from the environment.

The version: ``GOOGLE_NODEJS_VERSION``, then ``GOOGLE_RUNTIME_VERSION``, then package.json
``engines.node`` (semver ranges, checked with npm's own semver), then the major version in
``GOOGLE_RUNTIME``. It must be met by a node on this machine (``node<major>`` or ``node`` on
PATH), which the Cloud Run runtime later runs the image with (the ``localcloud.runtime``
label, ``nodejs<major>``); otherwise the build fails naming the runtime, as the Python
buildpack's ``select_python`` does: another Node.js than Google Cloud's would be tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcloud.cloudbuild.buildpack import (
    SIGNATURES,
    BuildError,
    Image,
    LayerCache,
    Log,
    oci_image,
)
from localcloud.cloudbuild.confined import Tools, base_env
from localcloud.cloudbuild.layers import Layer, write_layer
from localcloud.run.sandbox import SandboxError

FRAMEWORK = "@google-cloud/functions-framework"
FRAMEWORK_VERSION = "5.0.5"
LAYER_FORMAT = 1  # bump when what a Node.js layer holds changes
WORKSPACE = "/workspace"
MODULES = f"{WORKSPACE}/node_modules"
FRAMEWORK_DIR = "/layers/nodejs/functions-framework"
NPM_FLAGS = ("--omit=dev", "--no-audit", "--no-fund")
LOCK_FILES = ("npm-shrinkwrap.json", "package-lock.json")  # npm prefers the shrinkwrap
VERSION_VARS = ("GOOGLE_NODEJS_VERSION", "GOOGLE_RUNTIME_VERSION")
_RUNTIME = re.compile(r"nodejs(\d{1,2})?")
_NODE_VERSION = re.compile(r"v(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class Node:
    """The node an image is built with and later run with."""

    runtime: str  # nodejs<major>: the image's localcloud.runtime label
    executable: str
    version: str  # "20.20.2"
    origin: str  # what asked for this version, for the build log


def wanted(source: Path, env: dict[str, str]) -> bool:
    """Whether Google's builder would build ``source`` as a Node.js function."""
    runtime = env.get("GOOGLE_RUNTIME", "")
    if runtime:
        return runtime.startswith("nodejs")
    if not (source / "package.json").is_file():
        return False
    # Python's runtime buildpack, tried first, takes any source with a .py file
    # (cmd/python/runtime/main.go); node_modules is not the function's source here.
    return not any("node_modules" not in p.relative_to(source).parts for p in source.rglob("*.py"))


def read_package_json(source: Path) -> dict[str, Any]:
    """package.json as Google's buildpack reads it; BuildError naming it when it is not."""
    path = source / "package.json"
    if not path.is_file():
        raise BuildError(
            "missing package.json: a Node.js function's source must have package.json at its root"
        )
    try:
        doc = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BuildError(f"package.json is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BuildError("package.json is not valid JSON: it must hold an object")
    return doc


def _host_version(executable: str) -> str:
    """The version ``executable`` reports ("20.20.2"), "" when it does not run."""
    try:
        done = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    match = _NODE_VERSION.fullmatch(done.stdout.strip())
    return ".".join(match.groups()) if done.returncode == 0 and match else ""


def host_nodes(major: str | None = None) -> list[tuple[str, str]]:
    """``(executable, version)`` of each node on PATH worth trying, ``node<major>`` first."""
    names = ([f"node{major}"] if major else []) + ["node"]
    found: list[tuple[str, str]] = []
    for name in names:
        path = shutil.which(name)
        if path is None:
            continue
        real = os.path.realpath(path)
        version = _host_version(real)
        if version and all(real != seen for seen, _ in found):
            found.append((real, version))
    return found


def _satisfies(node: str, version: str, constraint: str) -> bool | None:
    """Whether ``version`` meets the semver range ``constraint``, asked of the semver package
    npm ships (npm's own reading of ``engines``); None when that package is not there,
    ValueError when ``constraint`` is no range."""
    npm = shutil.which("npm")
    if npm is None:
        return None
    semver = Path(os.path.realpath(npm)).parents[1] / "node_modules" / "semver"
    if not semver.is_dir():
        return None
    script = (
        "const s = require(process.argv[1]);"
        "const r = s.validRange(process.argv[3]);"
        "process.stdout.write(r === null ? 'invalid' : String(s.satisfies(process.argv[2], r)))"
    )
    done = subprocess.run(
        [node, "-e", script, str(semver), version, constraint],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.stdout == "invalid":
        raise ValueError(constraint)
    return done.stdout == "true"


def select_node(env: dict[str, str], package: dict[str, Any]) -> Node:
    """The host's node for the version the build asks for; BuildError naming the runtime
    when this machine has none, never another version in its place."""
    runtime = env.get("GOOGLE_RUNTIME", "")
    major: str | None = None
    if runtime:
        match = _RUNTIME.fullmatch(runtime)
        if match is None:
            raise BuildError(
                f"GOOGLE_RUNTIME={runtime!r} is not a Node.js runtime (nodejs or nodejsNN, "
                "such as nodejs20)"
            )
        major = match.group(1)
    constraint, origin = "", ""
    for var in VERSION_VARS:
        if env.get(var, "").strip():
            constraint, origin = env[var].strip(), var
            break
    else:
        engines = package.get("engines")
        node = engines.get("node") if isinstance(engines, dict) else None
        if isinstance(node, str) and node.strip():
            constraint, origin = node.strip(), "package.json engines.node"
    nodes = host_nodes(major)
    if major is not None:
        nodes = [(exe, ver) for exe, ver in nodes if ver.split(".")[0] == major]
        if not nodes:
            have = ", ".join(f"v{ver}" for _, ver in host_nodes()) or "none"
            raise BuildError(
                f"nodejs{major}: no Node.js {major} on this machine (its node: {have}; "
                f"from GOOGLE_RUNTIME={runtime})"
            )
    if not nodes:
        raise BuildError("no node on this machine: install Node.js to build Node.js functions")
    if constraint:
        for exe, ver in nodes:
            try:
                met = _satisfies(exe, ver, constraint)
            except ValueError:
                raise BuildError(
                    f"{origin}={constraint!r} is not a semver version or range (e.g. 20.x.x)"
                ) from None
            if met is None:
                raise BuildError(
                    f"cannot check {origin}={constraint!r}: npm's semver package is not on "
                    "this machine"
                )
            if met:
                return Node(f"nodejs{ver.split('.')[0]}", exe, ver, f"{origin}={constraint}")
        have = ", ".join(f"v{ver}" for _, ver in nodes)
        name = f"nodejs{major}" if major else "Node.js"
        raise BuildError(
            f"{name}: no Node.js on this machine meets {origin}={constraint!r} (it has {have})"
        )
    exe, ver = nodes[0]
    origin = f"GOOGLE_RUNTIME={runtime}" if major else "the builder's default"
    return Node(f"nodejs{ver.split('.')[0]}", exe, ver, origin)


def main_file(source: Path, package: dict[str, Any]) -> str:
    """The file Google's functions buildpack loads: package.json ``main``, else index.js,
    else function.js; BuildError naming it when it is not there."""
    main = package.get("main")
    if main is not None and not isinstance(main, str):
        raise BuildError("package.json main must be a string")
    name = main or ("index.js" if (source / "index.js").is_file() else "function.js")
    path = (source / name).resolve()
    if not path.is_relative_to(source.resolve()) or not path.is_file():
        raise BuildError(
            f"{name} does not exist: it is the function's main file (package.json main)"
        )
    return name


def depends_on_framework(package: dict[str, Any]) -> bool:
    deps = package.get("dependencies")
    return isinstance(deps, dict) and FRAMEWORK in deps


def lock_file(source: Path) -> str | None:
    return next((name for name in LOCK_FILES if (source / name).is_file()), None)


def dependencies_key(source: Path, node: Node, npm_version: str) -> str:
    """What Google's npm buildpack keys its cache with (package.json, the lock file,
    NODE_ENV) plus the runtime and npm's version."""
    digest = hashlib.sha256(f"{LAYER_FORMAT}\0{node.runtime}\0{npm_version}\0production".encode())
    for name in ("package.json", *LOCK_FILES):
        path = source / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _copy_source(source: Path, dest: Path) -> Path:
    """``source`` without its top-level ``node_modules``, which Google's builder removes."""
    shutil.copytree(
        source,
        dest,
        symlinks=True,
        ignore=lambda d, names: ["node_modules"] if Path(d) == source else [],
    )
    return dest


def _npm_env(node: Node) -> dict[str, str]:
    """npm runs with the selected node first on PATH (npm and lifecycle scripts call
    ``node``), production settings, and no update notices in the log."""
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("npm_config_")}
    env["PATH"] = os.path.dirname(node.executable) + os.pathsep + env.get("PATH", "")
    env.update(NODE_ENV="production", NPM_CONFIG_UPDATE_NOTIFIER="false")
    return env


def _npm_for(node: Node) -> str:
    """The npm a build with ``node`` runs (the one beside it first, as on its PATH), by its
    real path: the same one is run, read in the sandbox and asked its version."""
    npm = shutil.which("npm", path=_npm_env(node)["PATH"])
    if npm is None:
        raise BuildError("npm does not run on this machine: install npm to build Node.js functions")
    return os.path.realpath(npm)


def _node_paths(node: Node) -> list[str]:
    """What a confined node reads beyond the system directories: its install, and npm's."""
    paths = [os.path.dirname(os.path.dirname(node.executable))]  # as run/sandbox.find_node
    with contextlib.suppress(BuildError):
        npm = _npm_for(node)  # its package: .../node_modules/npm/bin/npm-cli.js
        paths.append(str(Path(npm).parents[1]))
    return paths


async def _confined(
    tools: Tools, node: Node, command: list[str], cwd: Path, log: Log | None, npm_cache: bool
) -> tuple[int, list[str]]:
    """``command`` in ``cwd`` in the build sandbox (``confined.py``), the selected node first
    on PATH; ``cwd`` is writable, with npm's cache, when ``npm_cache``, else read-only."""
    env = base_env([os.path.dirname(node.executable)])
    env.update(NODE_ENV="production", NPM_CONFIG_UPDATE_NOTIFIER="false")
    writable: list[Path] = []
    try:
        readable = [] if tools.unsandboxed else await asyncio.to_thread(_node_paths, node)
        if npm_cache:
            cache = tools.cache("npm")
            env["NPM_CONFIG_CACHE"] = str(cache)
            writable += [cwd, cache]
        else:
            readable.append(str(cwd))
        return await tools.run(command, cwd, env, writable=writable, readable=readable, log=log)
    except SandboxError as exc:
        raise BuildError(str(exc)) from None


async def npm(node: Node, args: list[str], cwd: Path, log: Log, tools: Tools) -> None:
    """Run npm in ``cwd``, confined (it runs the packages' lifecycle scripts), streaming its
    output to the build log; BuildError with its last lines when it fails."""
    found = await asyncio.to_thread(_npm_for, node)
    log("$ " + " ".join(["npm", *args]))
    code, lines = await _confined(tools, node, [found, *args], cwd, log, True)
    if code != 0:
        tail = "\n".join(lines[-12:])
        raise BuildError(f"npm {args[0]} failed (exit code {code}):\n{tail}")
    modules = cwd / "node_modules"
    if modules.is_symlink():  # a lifecycle script's: the layer would hold that host path
        raise BuildError("npm left node_modules as a link out of the project")


def _npm_version(node: Node) -> str:
    """npm's version, part of the dependency layer's key. Asked once per node and npm
    install (by path and the npm package's modification time): starting npm costs about a
    quarter of a second, on every Node.js build otherwise."""
    real = _npm_for(node)
    try:
        stamp = os.stat(os.path.join(os.path.dirname(os.path.dirname(real)), "package.json"))
        changed = stamp.st_mtime_ns
    except OSError:
        changed = 0
    return _asked_npm_version(node, real, changed)


@functools.cache
def _asked_npm_version(node: Node, npm: str, changed: int) -> str:
    try:
        done = subprocess.run(
            [npm, "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=_npm_env(node),
        )
    except (OSError, subprocess.TimeoutExpired):
        done = None
    if done is None or done.returncode != 0:
        raise BuildError("npm does not run on this machine: install npm to build Node.js functions")
    return done.stdout.strip()


async def _syntax_check(tools: Tools, node: Node, source: Path, main: str) -> None:
    """``node --check`` on the main file, as Google's buildpack does before it builds."""
    command = [node.executable, "--check", main]
    code, lines = await _confined(tools, node, command, source, None, False)
    if code != 0:
        tail = "\n".join(lines[-8:])
        raise BuildError(f"syntax error in {main}:\n{tail}")


async def build(
    source: Path,
    env: dict[str, str],
    cache: LayerCache,
    workdir: Path,
    log: Log,
    builder: str | None = None,
) -> Image:
    """Build the image for the Node.js function in ``source`` with the build's ``env``."""
    del builder  # which Node.js versions each builder image ships is not checked here
    package = await asyncio.to_thread(read_package_json, source)
    main = await asyncio.to_thread(main_file, source, package)
    signature = env.get("GOOGLE_FUNCTION_SIGNATURE_TYPE", "http")
    if signature not in SIGNATURES:
        raise BuildError(
            f"GOOGLE_FUNCTION_SIGNATURE_TYPE={signature!r} is not one of {', '.join(SIGNATURES)}"
        )
    node = await asyncio.to_thread(select_node, env, package)
    target = env.get("GOOGLE_FUNCTION_TARGET", "")
    log(
        f"runtime {node.runtime} (node v{node.version} {node.executable}, from {node.origin}), "
        f"main file {main}, function target {target or '(none)'}, signature {signature}"
    )
    await _syntax_check(cache.tools, node, source, main)
    npm_version = await asyncio.to_thread(_npm_version, node)
    if (source / "node_modules").exists():
        log("ignoring node_modules in the source: dependencies are installed from package.json")

    lock = lock_file(source)
    key = await asyncio.to_thread(dependencies_key, source, node, npm_version)

    async def make_deps(tmp: Path) -> Layer:
        app = await asyncio.to_thread(_copy_source, source, tmp / "app")
        if lock:
            await npm(node, ["ci", *NPM_FLAGS], app, log, cache.tools)
        else:
            log("no package-lock.json: npm install resolves the versions")
            await npm(node, ["install", *NPM_FLAGS], app, log, cache.tools)
        modules = app / "node_modules"
        modules.mkdir(exist_ok=True)
        return await asyncio.to_thread(
            write_layer, modules, MODULES, tmp / "layer.tar.gz", "dependencies"
        )

    deps, hit = await cache.get_or_make("nodejs-dependencies", key, make_deps)
    log(
        f"dependencies layer {deps.digest[:19]} "
        f"({'cached: nothing installed' if hit else 'installed'})"
    )
    layers = [deps]

    image_env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "NODE_ENV": "production",
        "GOOGLE_FUNCTION_SIGNATURE_TYPE": signature,
        **env,
        "GOOGLE_RUNTIME": node.runtime,
    }
    if depends_on_framework(package):
        log(f"the function depends on {FRAMEWORK}: it runs the one it installed")
        program = await asyncio.to_thread(_framework_program, deps, MODULES)
    else:

        async def make_framework(tmp: Path) -> Layer:
            prefix = tmp / "prefix"
            prefix.mkdir()
            manifest = {
                "name": "functions-framework-layer",
                "private": True,
                "dependencies": {FRAMEWORK: FRAMEWORK_VERSION},
            }
            (prefix / "package.json").write_text(json.dumps(manifest))
            await npm(node, ["install", *NPM_FLAGS], prefix, log, cache.tools)
            return await asyncio.to_thread(
                write_layer,
                prefix / "node_modules",
                f"{FRAMEWORK_DIR}/node_modules",
                tmp / "layer.tar.gz",
                f"{FRAMEWORK} {FRAMEWORK_VERSION}",
            )

        framework, hit = await cache.get_or_make(
            "nodejs-framework",
            f"{node.runtime}-{FRAMEWORK_VERSION}-v{LAYER_FORMAT}",
            make_framework,
        )
        log(
            f"{FRAMEWORK} {FRAMEWORK_VERSION} layer {framework.digest[:19]} "
            f"({'cached' if hit else 'built'})"
        )
        layers.insert(0, framework)
        program = await asyncio.to_thread(
            _framework_program, framework, f"{FRAMEWORK_DIR}/node_modules"
        )
        # As Google's buildpack does: the framework, outside the function's node_modules,
        # still finds the function's packages.
        image_env["NODE_PATH"] = MODULES

    src_tree = await asyncio.to_thread(
        _copy_source, source, Path(tempfile.mkdtemp(dir=workdir)) / "src"
    )
    src = await asyncio.to_thread(
        write_layer, src_tree, WORKSPACE.strip("/"), workdir / "source.tar.gz", "source"
    )
    log(f"source layer {src.digest[:19]} ({src.size} bytes)")
    layers.append(src)

    if target:
        image_env["GOOGLE_FUNCTION_TARGET"] = target
        image_env["FUNCTION_TARGET"] = target
    image_env["FUNCTION_SIGNATURE_TYPE"] = signature
    return oci_image(
        layers,
        image_env,
        ["node", program],
        node.runtime,
        target,
        signature,
        "localcloud nodejs buildpack",
    )


def _framework_program(layer: Layer, modules: str) -> str:
    """The framework's program (its package.json ``bin``) in ``layer``, whose
    ``node_modules`` is at image path ``modules``."""
    name = f"{modules.strip('/')}/{FRAMEWORK}/package.json"
    with tarfile.open(layer.path, "r:gz") as tar:
        try:
            handle = tar.extractfile(name)
        except KeyError:
            handle = None
        if handle is None:
            raise BuildError(f"package.json lists {FRAMEWORK} but npm did not install it")
        doc = json.loads(handle.read())
    bin_ = doc.get("bin")
    target = bin_.get("functions-framework") if isinstance(bin_, dict) else bin_
    if not isinstance(target, str):
        raise BuildError(f"{FRAMEWORK} {doc.get('version')} has no functions-framework program")
    return os.path.normpath(f"{modules}/{FRAMEWORK}/{target}")

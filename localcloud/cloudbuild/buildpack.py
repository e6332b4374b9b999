"""A Python functions buildpack: a source tree in, an OCI image (layers + config) out.

It does what Google's Python functions buildpacks do, without a container engine:

- detect: ``main.py`` is required when ``GOOGLE_FUNCTION_TARGET`` is set; every ``.py``
  file must compile (a syntax error fails the build with the file and line);
- a functions-framework layer, shared by every image of the same runtime;
- a dependencies layer from ``requirements.txt``, cached by the hash of its contents and
  the runtime, so a source-only change installs nothing;
- the source layer under ``/workspace``;
- in each layer, byte code compiled reproducibly by the image's own interpreter
  (``bytecode.py``), so an instance imports without compiling;
- a config whose entrypoint runs functions-framework with ``GOOGLE_FUNCTION_TARGET`` and
  ``GOOGLE_FUNCTION_SIGNATURE_TYPE``, the runtime as a label, and the build's env.

The Python version comes from the variables Google's buildpack reads (``select_python``):
dependencies are installed with the host's interpreter of that version, and the Cloud Run
runtime later runs the image with that same interpreter (the ``localcloud.runtime`` label).
A version this machine has no interpreter for fails the build, naming it: building on the
host's Python instead would test another Python than the one Google Cloud runs. Layers are
cached under the data directory; concurrent builds of the same key wait for one another.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from localcloud.cloudbuild.bytecode import compile_tree
from localcloud.cloudbuild.confined import Tools, base_env
from localcloud.cloudbuild.layers import OCI_LAYER_GZIP, Layer, write_layer
from localcloud.run.sandbox import SandboxError, describe_python

LOG = logging.getLogger(__name__)

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
FRAMEWORK = "functions-framework"
FRAMEWORK_VERSION = "3.10.2"  # matches requirements.txt; bump both together
LAYER_FORMAT = 3  # bump when what a layer contains changes (3: byte code, bytecode.py)
WORKSPACE = "/workspace"
DEPS_DIR = "/layers/python/dependencies"
FRAMEWORK_DIR = "/layers/python/functions-framework"
SIGNATURES = ("http", "cloudevent", "event", "typed")

Log = Callable[[str], None]


class BuildError(Exception):
    """The user's build failed; the message says why in terms they can act on."""


@dataclass
class Image:
    layers: list[Layer]
    config: bytes
    manifest: bytes
    runtime: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def config_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.config).hexdigest()


# Google's Python buildpack takes the version from GOOGLE_PYTHON_VERSION, then
# GOOGLE_RUNTIME_VERSION, then a .python-version file, else the newest it has; GOOGLE_RUNTIME
# only picks the language (https://cloud.google.com/docs/buildpacks/python,
# https://cloud.google.com/docs/buildpacks/service-specific-configs).
VERSION_VARS = ("GOOGLE_PYTHON_VERSION", "GOOGLE_RUNTIME_VERSION")
VERSION_FILE = ".python-version"
_VERSION = re.compile(r"3\.(\d{1,2})(?:\.(\d{1,3}|x|\*))?")
_RUNTIME = re.compile(r"python(?:3(\d{1,2})?)?")
# The Python versions each of Google's builder images ships
# (https://cloud.google.com/docs/buildpacks/builders); a builder not listed here (``latest``
# moves) is not checked.
BUILDER_PYTHONS = {
    "gcr.io/buildpacks/builder:google-22": ("3.10", "3.11", "3.12", "3.13"),
    "gcr.io/buildpacks/builder:google-24": ("3.13", "3.14"),
    "gcr.io/buildpacks/builder:v1": ("3.7", "3.8", "3.9", "3.10", "3.11"),
}


@dataclass(frozen=True)
class Python:
    """The interpreter an image is built for and later run with."""

    runtime: str  # the runtime id, python3XY: the image's localcloud.runtime label
    executable: str
    origin: str  # what asked for this version, for the build log


def runtime_of(env: dict[str, str]) -> str | None:
    """The version ``GOOGLE_RUNTIME`` implies (python3XY), None for the bare language."""
    runtime = env.get("GOOGLE_RUNTIME", "")
    if not runtime:
        return None
    match = _RUNTIME.fullmatch(runtime)
    if match is None:
        raise BuildError(
            f"GOOGLE_RUNTIME={runtime!r}: localcloud builds Python and Node.js functions "
            "only (python, python3 or python3XY such as python311; nodejs or nodejsNN)"
        )
    return f"python3{match.group(1)}" if match.group(1) else None


def requested_version(source: Path, env: dict[str, str]) -> tuple[str, str | None, str] | None:
    """``(minor, patch or None, origin)`` the build asks for, in Google's order of precedence;
    localcloud then falls back on the version in ``GOOGLE_RUNTIME`` (python311 -> 3.11)."""
    text, origin = "", ""
    for var in VERSION_VARS:
        if env.get(var, "").strip():
            text, origin = env[var].strip(), var
            break
    else:
        file = source / VERSION_FILE
        if file.is_file():
            text, origin = file.read_text(errors="replace").strip(), VERSION_FILE
            if not text:
                raise BuildError(f"{VERSION_FILE} exists but does not specify a version")
    if not text:
        runtime = runtime_of(env)
        return (f"3.{runtime[7:]}", None, f"GOOGLE_RUNTIME={runtime}") if runtime else None
    match = _VERSION.fullmatch(text)
    if match is None:
        raise BuildError(
            f"{origin}={text!r} is not a Python version localcloud can pick: use 3.X, 3.X.x "
            "or 3.X.Y (e.g. 3.11.x)"
        )
    patch = match.group(2) if match.group(2) and match.group(2).isdigit() else None
    return f"3.{match.group(1)}", patch, f"{origin}={text}"


def _version_of(executable: str) -> str:
    """The full version ``executable`` reports, "" when it does not run: a ``python3.X`` on
    PATH can be a version manager's shim for a version that is not selected."""
    if executable == sys.executable:
        return ".".join(map(str, sys.version_info[:3]))
    try:
        done = subprocess.run(
            [executable, "-c", "import sys; print('.'.join(map(str, sys.version_info[:3])))"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def select_python(source: Path, env: dict[str, str], builder: str | None = None) -> Python:
    """The host's interpreter for the version the build asks for (the host's own Python when
    it asks for none); BuildError naming the runtime when this machine has none, because a
    silent fallback would build and run the function on another Python than on Google Cloud.
    """
    runtime_of(env)  # refuses a non-Python GOOGLE_RUNTIME even when a version is given
    asked = requested_version(source, env)
    host = f"{sys.version_info[0]}.{sys.version_info[1]}"
    minor, patch, origin = asked or (host, None, "the builder's default")
    runtime = f"python{minor.replace('.', '')}"
    offered = BUILDER_PYTHONS.get(builder or "")
    if asked and offered is not None and minor not in offered:
        raise BuildError(
            f"{runtime}: builder {builder} has no Python {minor} (it has "
            f"{', '.join(offered)}; from {origin})"
        )
    executable = sys.executable if minor == host else shutil.which(f"python{minor}")
    found = _version_of(executable) if executable else ""
    if executable is None or not found.startswith(f"{minor}."):
        raise BuildError(f"{runtime}: no python{minor} on this machine (from {origin})")
    if patch is not None and found != f"{minor}.{patch}":
        raise BuildError(
            f"{runtime}: no Python {minor}.{patch} on this machine, its python{minor} is "
            f"{found} (from {origin}; ask for {minor}.x instead)"
        )
    return Python(runtime, executable, origin)


def detect(source: Path, env: dict[str, str]) -> None:
    """Google's detection rules, plus a compile check so syntax errors fail the build."""
    if env.get("GOOGLE_FUNCTION_TARGET") and not (source / "main.py").is_file():
        raise BuildError(
            "missing main.py: a Python function's source must have main.py at its root "
            f"(GOOGLE_FUNCTION_TARGET={env['GOOGLE_FUNCTION_TARGET']})"
        )
    signature = env.get("GOOGLE_FUNCTION_SIGNATURE_TYPE", "http")
    if signature not in SIGNATURES:
        raise BuildError(
            f"GOOGLE_FUNCTION_SIGNATURE_TYPE={signature!r} is not one of {', '.join(SIGNATURES)}"
        )
    for path in sorted(source.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(source).as_posix()
        try:
            compile(path.read_bytes(), rel, "exec", dont_inherit=True)
        except SyntaxError as exc:
            raise BuildError(
                f"syntax error in {rel}, line {exc.lineno}: {exc.msg}"
                + (f"\n    {exc.text.rstrip()}" if exc.text else "")
            ) from None
        except ValueError as exc:  # e.g. null bytes
            raise BuildError(f"cannot compile {rel}: {exc}") from None


_LOCAL = ("-e", "--editable", "file:", "./", "../", "/")


def requirements_key(source: Path, requirements: Path, runtime: str) -> str | None:
    """The cache key of a requirements file and every file it includes (``-r``/``-c``),
    or None when it installs from local paths, whose contents the key cannot see."""
    digest = hashlib.sha256(f"{LAYER_FORMAT}\0{runtime}".encode())
    seen: set[Path] = set()
    pending = [requirements]
    root = source.resolve()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        try:
            text = path.read_text(errors="replace")
        except OSError as exc:
            raise BuildError(f"cannot read {path.name}: {exc.strerror}") from None
        digest.update(path.resolve().relative_to(root).as_posix().encode() + b"\0" + text.encode())
        for raw in text.splitlines():
            line = raw.split(" #", 1)[0].strip()
            if line.startswith(("-r ", "--requirement ", "-c ", "--constraint ")):
                name = line.split(None, 1)[1]
                included = (path.parent / name).resolve()
                if not included.is_relative_to(root):
                    raise BuildError(f"{path.name} includes {name}, which is outside the source")
                pending.append(included)
            elif line.startswith(_LOCAL) or "@ file:" in line:
                return None
    return digest.hexdigest()


class LayerCache:
    """Layers keyed by what they were made from, shared by all builds on this data dir."""

    def __init__(
        self, root: Path, wheelhouse: Path | None = None, tools: Tools | None = None
    ) -> None:
        self.root = root
        self.wheelhouse = wheelhouse
        self.tools = tools or Tools(root / "tools")  # how pip and npm run (confined.py)
        self._locks: dict[str, asyncio.Lock] = {}
        root.mkdir(parents=True, exist_ok=True)

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def get_or_make(
        self, kind: str, key: str, make: Callable[[Path], object]
    ) -> tuple[Layer, bool]:
        """The cached layer for ``(kind, key)``, or ``make(dir)`` it; (layer, was_cached)."""
        slot = self.root / kind / key
        meta = slot / "layer.json"
        async with self._lock(f"{kind}/{key}"):
            if meta.exists():
                return Layer.load(meta), True
            tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=self.root))
            try:
                layer = await make(tmp)  # type: ignore[misc]
                final = Path(str(layer.path).replace(str(tmp), str(slot)))
                layer = Layer(
                    str(final), layer.digest, layer.diff_id, layer.size, layer.description
                )
                layer.save(tmp / "layer.json")
                slot.parent.mkdir(parents=True, exist_ok=True)
                if slot.exists():
                    shutil.rmtree(slot)
                tmp.rename(slot)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
            return layer, False


async def pip_install(
    python: str,
    args: list[str],
    target: Path,
    log: Log,
    cache: LayerCache,
    cwd: Path | None = None,
) -> None:
    """pip install into ``target``, in the build sandbox (``confined.py``): pip runs the
    setup.py of whatever it builds from source. ``cwd`` (the source, whose requirements
    may name its own directories) is writable too: pip builds a local directory in place."""
    tools, readable = cache.tools, []
    if not tools.unsandboxed:  # the base install: a venv's python is only a pointer to it
        try:
            install = await asyncio.to_thread(describe_python, python)
        except SandboxError as exc:
            raise BuildError(str(exc)) from None
        python, readable = install.executable, [install.prefix]
    cmd = [
        python,
        "-m",
        "pip",
        "install",
        "--target",
        str(target),
        "--no-compile",
        "--disable-pip-version-check",
        "--no-input",
        "--no-warn-script-location",
        "--progress-bar",
        "off",
    ]
    if cache.wheelhouse is not None:
        cmd += ["--find-links", str(cache.wheelhouse)]
        readable.append(str(cache.wheelhouse))
    cmd += args
    log("$ " + " ".join(cmd))
    env = base_env()
    env.update({k: v for k, v in os.environ.items() if k.startswith("PIP_")})
    env.pop("PIP_TARGET", None)
    env["PIP_CACHE_DIR"] = str(tools.cache("pip"))
    target.mkdir(parents=True, exist_ok=True)
    writable = [target, Path(env["PIP_CACHE_DIR"]), *([cwd] if cwd else [])]
    try:
        code, lines = await tools.run(
            cmd, cwd or target, env, writable=writable, readable=readable, log=log
        )
    except SandboxError as exc:
        raise BuildError(str(exc)) from None
    if code != 0:
        tail = "\n".join(lines[-12:])
        raise BuildError(f"pip install failed (exit code {code}):\n{tail}")


async def build(
    source: Path,
    env: dict[str, str],
    cache: LayerCache,
    workdir: Path,
    log: Log,
    builder: str | None = None,
) -> Image:
    """Build the image for ``source`` with the build's ``env`` (the pack ``--env`` values),
    on the Python ``builder`` (the pack step's ``--builder``) would use. A Node.js function
    (``GOOGLE_RUNTIME=nodejs..``, or a package.json and no Python) goes to nodejs.py."""
    from localcloud.cloudbuild import nodejs  # it imports this module

    if await asyncio.to_thread(nodejs.wanted, source, env):
        return await nodejs.build(source, env, cache, workdir, log, builder)
    await asyncio.to_thread(detect, source, env)  # compiling big files must not stall the loop
    chosen = await asyncio.to_thread(select_python, source, env, builder)
    runtime, python = chosen.runtime, chosen.executable
    target = env.get("GOOGLE_FUNCTION_TARGET", "")
    signature = env.get("GOOGLE_FUNCTION_SIGNATURE_TYPE", "http")
    log(
        f"runtime {runtime} ({python}, from {chosen.origin}), "
        f"function target {target or '(none)'}, signature {signature}"
    )

    async def make_framework(tmp: Path) -> Layer:
        lib = tmp / "lib"
        await pip_install(python, [f"{FRAMEWORK}=={FRAMEWORK_VERSION}"], lib, log, cache)
        await compile_tree(python, lib, f"{FRAMEWORK_DIR}/lib", log)
        return await asyncio.to_thread(
            write_layer,
            lib,
            f"{FRAMEWORK_DIR}/lib",
            tmp / "layer.tar.gz",
            f"{FRAMEWORK} {FRAMEWORK_VERSION}",
            True,
        )

    framework, hit = await cache.get_or_make(
        "framework", f"{runtime}-{FRAMEWORK_VERSION}-v{LAYER_FORMAT}", make_framework
    )
    log(f"functions-framework layer {framework.digest[:19]} ({'cached' if hit else 'built'})")
    layers = [framework]

    requirements = source / "requirements.txt"
    if requirements.is_file():
        key = requirements_key(source, requirements, runtime)

        async def make_deps(tmp: Path) -> Layer:
            lib = tmp / "lib"
            lib.mkdir()
            await pip_install(python, ["-r", str(requirements)], lib, log, cache, cwd=source)
            await compile_tree(python, lib, f"{DEPS_DIR}/lib", log)
            return await asyncio.to_thread(
                write_layer, lib, f"{DEPS_DIR}/lib", tmp / "layer.tar.gz", "dependencies", True
            )

        if key is None:  # local paths: what they name is part of the source, never cached
            deps = await make_deps(Path(tempfile.mkdtemp(dir=workdir)))
            hit = False
        else:
            deps, hit = await cache.get_or_make("dependencies", key, make_deps)
        log(f"dependencies layer {deps.digest[:19]} ({'cached' if hit else 'installed'})")
        layers.insert(0, deps)
    else:
        log("no requirements.txt: no dependencies layer")

    # The source is this build's own unpacked copy: compiling writes only into it.
    await compile_tree(python, source, WORKSPACE, log)
    src = await asyncio.to_thread(
        write_layer, source, WORKSPACE.strip("/"), workdir / "source.tar.gz", "source", True
    )
    log(f"source layer {src.digest[:19]} ({src.size} bytes)")
    layers.append(src)

    image_env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": ":".join([WORKSPACE, f"{DEPS_DIR}/lib", f"{FRAMEWORK_DIR}/lib"]),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "GOOGLE_FUNCTION_SIGNATURE_TYPE": signature,
        **env,
        # The runtime the image was built for, whatever form the build asked it in: Cloud
        # Run's runtime reads it (or the label below) to pick the same interpreter.
        "GOOGLE_RUNTIME": runtime,
    }
    if target:
        image_env.update(GOOGLE_FUNCTION_TARGET=target, FUNCTION_TARGET=target)
    image_env["FUNCTION_SIGNATURE_TYPE"] = signature
    return oci_image(
        layers,
        image_env,
        ["python3", "-m", "functions_framework"],
        runtime,
        target,
        signature,
        "localcloud buildpack",
    )


def oci_image(
    layers: list[Layer],
    image_env: dict[str, str],
    entrypoint: list[str],
    runtime: str,
    target: str,
    signature: str,
    builder: str,
) -> Image:
    """The OCI config and manifest of a function image, the same for every language's
    buildpack: its env, entrypoint and ``localcloud.*`` labels, serialized reproducibly."""
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": [f"{k}={v}" for k, v in sorted(image_env.items())],
            "Entrypoint": entrypoint,
            "WorkingDir": WORKSPACE,
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": {
                "localcloud.runtime": runtime,
                "localcloud.function-target": target,
                "localcloud.signature-type": signature,
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created_by": f"{builder}: {layer.description}"} for layer in layers],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": "sha256:" + hashlib.sha256(config_bytes).hexdigest(),
            "size": len(config_bytes),
        },
        "layers": [
            {"mediaType": OCI_LAYER_GZIP, "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return Image(layers, config_bytes, manifest_bytes, runtime, image_env)

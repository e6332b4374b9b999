"""A Python functions buildpack: a source tree in, an OCI image (layers + config) out.

It does what Google's Python functions buildpacks do, without a container engine:

- detect: ``main.py`` is required when ``GOOGLE_FUNCTION_TARGET`` is set; every ``.py``
  file must compile (a syntax error fails the build with the file and line);
- a functions-framework layer, shared by every image of the same runtime;
- a dependencies layer from ``requirements.txt``, cached by the hash of its contents and
  the runtime, so a source-only change installs nothing;
- the source layer under ``/workspace``;
- a config whose entrypoint runs functions-framework with ``GOOGLE_FUNCTION_TARGET`` and
  ``GOOGLE_FUNCTION_SIGNATURE_TYPE``, the runtime as a label, and the build's env.

Dependencies are installed with the host's Python of the image's runtime version (the
runtime later runs the image with that same interpreter). Layers are cached under the
data directory; concurrent builds of the same key wait for one another.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from localcloud.cloudbuild.layers import OCI_LAYER_GZIP, Layer, write_layer

LOG = logging.getLogger(__name__)

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
FRAMEWORK = "functions-framework"
FRAMEWORK_VERSION = "3.10.2"  # matches requirements.txt; bump both together
LAYER_FORMAT = 2  # bump when layers.py changes what a layer contains
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


def runtime_of(env: dict[str, str]) -> str:
    runtime = env.get("GOOGLE_RUNTIME") or f"python{sys.version_info[0]}{sys.version_info[1]}"
    if not runtime.startswith("python3") or not runtime[6:].isdigit():
        raise BuildError(f"GOOGLE_RUNTIME={runtime!r} is not a Python runtime (e.g. python311)")
    return runtime


def interpreter(runtime: str) -> str:
    """The host's Python for ``python3XY``; the build fails if this machine has none."""
    version = f"3.{runtime[7:]}"
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        return sys.executable
    found = shutil.which(f"python{version}")
    if found is None:
        raise BuildError(
            f"runtime {runtime} needs python{version}, which this machine does not have"
        )
    return found


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

    def __init__(self, root: Path, wheelhouse: Path | None = None) -> None:
        self.root = root
        self.wheelhouse = wheelhouse
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
    wheelhouse: Path | None,
    cwd: Path | None = None,
) -> None:
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
    if wheelhouse is not None:
        cmd += ["--find-links", str(wheelhouse)]
    cmd += args
    log("$ " + " ".join(cmd))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_TARGET")}
    process = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=cwd
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            log(line)
        code = await process.wait()
    except asyncio.CancelledError:
        process.kill()
        await process.wait()
        raise
    if code != 0:
        tail = "\n".join(lines[-12:])
        raise BuildError(f"pip install failed (exit code {code}):\n{tail}")


async def build(
    source: Path, env: dict[str, str], cache: LayerCache, workdir: Path, log: Log
) -> Image:
    """Build the image for ``source`` with the build's ``env`` (the pack ``--env`` values)."""
    runtime = runtime_of(env)
    await asyncio.to_thread(detect, source, env)  # compiling big files must not stall the loop
    python = interpreter(runtime)
    target = env.get("GOOGLE_FUNCTION_TARGET", "")
    signature = env.get("GOOGLE_FUNCTION_SIGNATURE_TYPE", "http")
    log(
        f"runtime {runtime} ({python}), function target {target or '(none)'}, signature {signature}"
    )

    async def make_framework(tmp: Path) -> Layer:
        lib = tmp / "lib"
        await pip_install(python, [f"{FRAMEWORK}=={FRAMEWORK_VERSION}"], lib, log, cache.wheelhouse)
        return await asyncio.to_thread(
            write_layer,
            lib,
            f"{FRAMEWORK_DIR}/lib",
            tmp / "layer.tar.gz",
            f"{FRAMEWORK} {FRAMEWORK_VERSION}",
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
            await pip_install(
                python, ["-r", str(requirements)], lib, log, cache.wheelhouse, cwd=source
            )
            return await asyncio.to_thread(
                write_layer, lib, f"{DEPS_DIR}/lib", tmp / "layer.tar.gz", "dependencies"
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

    src = await asyncio.to_thread(
        write_layer, source, WORKSPACE.strip("/"), workdir / "source.tar.gz", "source"
    )
    log(f"source layer {src.digest[:19]} ({src.size} bytes)")
    layers.append(src)

    image_env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": ":".join([WORKSPACE, f"{DEPS_DIR}/lib", f"{FRAMEWORK_DIR}/lib"]),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "GOOGLE_RUNTIME": runtime,
        "GOOGLE_FUNCTION_SIGNATURE_TYPE": signature,
        **env,
    }
    if target:
        image_env.update(GOOGLE_FUNCTION_TARGET=target, FUNCTION_TARGET=target)
    image_env["FUNCTION_SIGNATURE_TYPE"] = signature
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": [f"{k}={v}" for k, v in sorted(image_env.items())],
            "Entrypoint": ["python3", "-m", "functions_framework"],
            "WorkingDir": WORKSPACE,
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": {
                "localcloud.runtime": runtime,
                "localcloud.function-target": target,
                "localcloud.signature-type": signature,
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created_by": f"localcloud buildpack: {layer.description}"} for layer in layers
        ],
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

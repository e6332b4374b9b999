"""Which Cloud Build configs localcloud runs: the buildpacks step, as gcloud generates it.

``gcloud builds submit --pack`` and ``gcloud run deploy --source`` produce (see
``googlecloudsdk/command_lib/builds/submit_util.py``)::

    steps:
    - name: gcr.io/k8s-skaffold/pack          # optional, when no --builder is given
      entrypoint: pack
      args: [config, default-builder, gcr.io/buildpacks/builder:latest]
    - name: gcr.io/k8s-skaffold/pack
      entrypoint: pack
      args: [build, IMAGE, --network, cloudbuild, --env, K=V, ..., --builder, B, --path, P]
    images: [IMAGE]

with a Cloud Storage source. Anything else is refused at creation with INVALID_ARGUMENT,
naming the step and what is not supported, because there is no container engine here to
run arbitrary builder images.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from localcloud.core.errors import InvalidArgument
from localcloud.registry.names import ImageNameError, parse_image

PACK_BUILDERS = frozenset({"gcr.io/k8s-skaffold/pack", "gcr.io/k8s-skaffold/pack:latest"})
SUPPORTED = (
    "localcloud builds support only the buildpacks step as gcloud writes it: "
    "name gcr.io/k8s-skaffold/pack, entrypoint pack, args [build IMAGE --env K=V ... "
    "--builder B --path P] (see docs/compatibility.md)"
)
_SUBST = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclass
class PackPlan:
    image: str
    env: dict[str, str] = field(default_factory=dict)
    builder: str = "gcr.io/buildpacks/builder:latest"
    path: str = "."
    step_index: int = 0


def substitute(text: str, values: dict[str, str]) -> str:
    """Cloud Build substitutions: ``$VAR``/``${VAR}``, ``$$`` for a literal dollar."""

    def repl(match: re.Match) -> str:
        if match.group(1) == "$":
            return "$"
        name = match.group(2) or match.group(3)
        return values.get(name, match.group(0))

    return _SUBST.sub(repl, text)


def plan(build: Any, values: dict[str, str]) -> PackPlan:
    """Check ``build`` (a Build proto) and say what to do; INVALID_ARGUMENT otherwise."""
    if not build.source.HasField("storage_source") or not build.source.storage_source.bucket:
        raise InvalidArgument(
            "build.source: localcloud builds need a Cloud Storage source "
            "(source.storage_source.bucket and object)"
        )
    if not build.source.storage_source.object_:
        raise InvalidArgument("build.source.storage_source.object is required")
    if not build.steps:
        raise InvalidArgument("build.steps: at least one step is required; " + SUPPORTED)
    result: PackPlan | None = None
    for i, step in enumerate(build.steps):
        where = f"build.steps[{i}]"
        if step.name not in PACK_BUILDERS:
            raise InvalidArgument(f"{where}.name {step.name!r} is not supported: {SUPPORTED}")
        args = [substitute(a, values) for a in step.args]
        if step.entrypoint not in ("", "pack"):
            raise InvalidArgument(f"{where}.entrypoint {step.entrypoint!r}: {SUPPORTED}")
        if args[:2] == ["config", "default-builder"] and len(args) == 3:
            continue
        if not args or args[0] != "build":
            raise InvalidArgument(f"{where}.args {args[:3]!r}: {SUPPORTED}")
        if result is not None:
            raise InvalidArgument(f"{where}: only one `pack build` step is supported")
        result = _parse_pack_build(args, where)
        result.step_index = i
    if result is None:
        raise InvalidArgument("build.steps: no `pack build` step; " + SUPPORTED)
    for i, image in enumerate(build.images):
        if substitute(image, values) != result.image:
            raise InvalidArgument(
                f"build.images[{i}] {image!r} is not the image the pack step builds "
                f"({result.image!r})"
            )
    return result


def _parse_pack_build(args: list[str], where: str) -> PackPlan:
    if len(args) < 2 or args[1].startswith("-"):
        raise InvalidArgument(
            f"{where}.args: `pack build` needs the image name as its first argument"
        )
    try:
        parse_image(args[1])
    except ImageNameError as exc:
        raise InvalidArgument(f"{where}.args: {exc}") from None
    out = PackPlan(image=args[1])
    rest = args[2:]
    i = 0
    while i < len(rest):
        flag = rest[i]
        name, eq, inline = flag.partition("=")
        if name not in ("--env", "-e", "--builder", "-B", "--path", "-p", "--network"):
            raise InvalidArgument(f"{where}.args: pack flag {flag!r} is not supported; {SUPPORTED}")
        if eq:
            value = inline
            i += 1
        else:
            if i + 1 >= len(rest):
                raise InvalidArgument(f"{where}.args: pack flag {flag} needs a value")
            value = rest[i + 1]
            i += 2
        if name in ("--env", "-e"):
            key, has_value, val = value.partition("=")
            if not key or not has_value:
                raise InvalidArgument(f"{where}.args: --env {value!r} must be KEY=VALUE")
            out.env[key] = val
        elif name in ("--builder", "-B"):
            out.builder = value
        elif name in ("--path", "-p"):
            if value.startswith("/") or ".." in value.split("/"):
                raise InvalidArgument(f"{where}.args: --path {value!r} must stay inside the source")
            out.path = value
    return out

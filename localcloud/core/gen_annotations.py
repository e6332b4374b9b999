"""Regenerates ``api_annotations.json``, the APIs' own request rules, from googleapis.

Why a generated file: the client libraries localcloud speaks through (proto-plus GAPIC
packages) rebuild their descriptors from Python classes and drop every option, so
``google.api.field_behavior`` and ``google.api.resource`` are not in the descriptors they
install (only ``google.longrunning`` and ``google.iam.v1`` keep theirs). The rules come
from the same ``.proto`` files those libraries are generated from, compiled with protoc,
so nothing in ``validate.py`` is written by hand per method.

The same file carries each method's HTTP bindings (``http``), from which ``localcloud/rest``
serves every method as HTTP/JSON: the ``google.api.http`` option of each method, and for the
mixins an API serves under its own paths (``google.longrunning.Operations``,
``google.iam.v1.IAMPolicy``) the ``http: rules:`` of each API's service configuration
(``YAMLS``, e.g. ``google/pubsub/v1/pubsub_v1.yaml``), which replace the mixin's own rule as
they do at Google (https://cloud.google.com/endpoints/docs/grpc-service-config/reference/rpc/google.api#http).
Each binding taken from a service configuration names that file in its ``source``.

Run it (developers only; needs ``grpcio-tools``, which localcloud itself never imports)::

    python -m localcloud.core.gen_annotations PATH/TO/googleapis [COMMIT]

``PROTOC`` may name another protoc command line (``python -m grpc_tools.protoc`` of another
environment) when grpcio-tools is not installed beside localcloud.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from google.api import annotations_pb2, field_behavior_pb2, http_pb2, resource_pb2
from google.protobuf import descriptor_pb2

# The APIs localcloud serves, plus what their references name (locations, projects).
SOURCES = [
    "google/pubsub/v1/pubsub.proto",
    "google/cloud/workflows/v1/workflows.proto",
    "google/cloud/workflows/executions/v1/executions.proto",
    "google/devtools/cloudbuild/v1/cloudbuild.proto",
    "google/cloud/run/v2/service.proto",
    "google/cloud/run/v2/revision.proto",
    "google/cloud/eventarc/v1/eventarc.proto",
    "google/longrunning/operations.proto",
    "google/iam/v1/iam_policy.proto",
    "google/iam/admin/v1/iam.proto",
    "google/cloud/resourcemanager/v3/projects.proto",
    "google/devtools/artifactregistry/v1/service.proto",
    "google/cloud/functions/v2/functions.proto",
    "google/cloud/common_resources.proto",
]
PACKAGES = (
    "google.pubsub.v1",
    "google.cloud.workflows.v1",
    "google.cloud.workflows.executions.v1",
    "google.devtools.cloudbuild.v1",
    "google.cloud.run.v2",
    "google.cloud.eventarc.v1",
    "google.longrunning",
    "google.iam.v1",
    "google.iam.admin.v1",
    "google.cloud.resourcemanager.v3",
    "google.devtools.artifactregistry.v1",
    "google.cloud.functions.v2",
)
# The service configurations whose ``http: rules:`` bind the mixins under each API's paths.
YAMLS = [
    "google/pubsub/v1/pubsub_v1.yaml",
    "google/cloud/workflows/v1/workflows_v1.yaml",
    "google/cloud/workflows/executions/v1/workflowexecutions_v1.yaml",
    "google/devtools/cloudbuild/v1/cloudbuild_v1.yaml",
    "google/cloud/run/v2/run_v2.yaml",
    "google/cloud/eventarc/v1/eventarc_v1.yaml",
    "google/iam/admin/v1/iam.yaml",
    "google/cloud/resourcemanager/v3/cloudresourcemanager_v3.yaml",
    "google/devtools/artifactregistry/v1/artifactregistry_v1.yaml",
    "google/cloud/functions/v2/cloudfunctions_v2.yaml",
]
VERBS = ("get", "put", "post", "delete", "patch")
OUT = Path(__file__).with_name("api_annotations.json")


def _compile(root: Path) -> descriptor_pb2.FileDescriptorSet:
    protoc = shlex.split(os.environ.get("PROTOC", f"{sys.executable} -m grpc_tools.protoc"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.binpb"
        subprocess.run(
            [*protoc, f"-I{root}", "--include_imports", f"--descriptor_set_out={out}", *SOURCES],
            check=True,
        )
        fds = descriptor_pb2.FileDescriptorSet()
        # Parsed here, where field_behavior_pb2 and resource_pb2 are imported, so the
        # options' extensions are read as such rather than kept as unknown fields.
        fds.ParseFromString(out.read_bytes())
        return fds


def _add_resource(resources: dict[str, list[str]], desc: resource_pb2.ResourceDescriptor) -> None:
    patterns = resources.setdefault(desc.type, [])
    patterns.extend(p for p in desc.pattern if p not in patterns)


def _bindings(rule: http_pb2.HttpRule, source: str = "") -> list[dict[str, str]]:
    """A rule and its ``additional_bindings`` as ``{method, path, body, response_body}``."""
    out = []
    for one in (rule, *rule.additional_bindings):
        pattern = one.WhichOneof("pattern")
        if pattern is None:
            continue
        if pattern == "custom":
            verb, path = one.custom.kind.upper(), one.custom.path
        else:
            verb, path = pattern.upper(), getattr(one, pattern)
        entry = {"method": verb, "path": path, "body": one.body}
        if one.response_body:
            entry["response_body"] = one.response_body
        if source:
            entry["source"] = source
        out.append(entry)
    return out


def _yaml_rules(root: Path) -> dict[str, list[dict[str, str]]]:
    """The service configurations' bindings per method (``Service/Method``), every API's
    together (GetOperation is served under Cloud Build's paths and Workflows' alike)."""
    rules: dict[str, list[dict[str, str]]] = {}
    for name in YAMLS:
        config = yaml.safe_load((root / name).read_text())
        for raw in (config.get("http") or {}).get("rules") or []:
            rule = http_pb2.HttpRule()
            for verb in VERBS:
                if verb in raw:
                    setattr(rule, verb, raw[verb])
            rule.body = raw.get("body", "")
            for extra in raw.get("additional_bindings") or []:
                more = rule.additional_bindings.add()
                for verb in VERBS:
                    if verb in extra:
                        setattr(more, verb, extra[verb])
                more.body = extra.get("body", "")
            service, _, method = raw["selector"].rpartition(".")
            known = rules.setdefault(f"{service}/{method}", [])
            for binding in _bindings(rule, name):
                if not any(
                    (b["method"], b["path"]) == (binding["method"], binding["path"]) for b in known
                ):
                    known.append(binding)
    return rules


def http_rules(
    fds: descriptor_pb2.FileDescriptorSet, configured: dict[str, list[dict[str, str]]]
) -> dict[str, list[dict[str, str]]]:
    """Every method's bindings: the service configurations' where they name the method,
    else its own ``google.api.http`` option."""
    rules: dict[str, list[dict[str, str]]] = {}
    for file in fds.file:
        if file.package not in PACKAGES:
            continue
        for service in file.service:
            for method in service.method:
                key = f"{file.package}.{service.name}/{method.name}"
                own = _bindings(method.options.Extensions[annotations_pb2.http])
                if key in configured or own:
                    rules[key] = configured.get(key, own)
    return rules


def extract(fds: descriptor_pb2.FileDescriptorSet) -> dict[str, Any]:
    fields: dict[str, dict[str, dict[str, Any]]] = {}
    messages: dict[str, str] = {}
    resources: dict[str, list[str]] = {}  # a message's own google.api.resource wins
    defined: dict[str, list[str]] = {}  # file-level resource_definition, the fallback
    local: dict[str, list[str]] = {}  # the current file's definitions

    def walk(prefix: str, message: descriptor_pb2.DescriptorProto, keep: bool) -> None:
        full = f"{prefix}.{message.name}"
        res = message.options.Extensions[resource_pb2.resource]
        if res.type:
            _add_resource(resources, res)
            if keep:
                messages[full] = res.type
        for field in message.field:
            opts = field.options
            behavior = [
                field_behavior_pb2.FieldBehavior.Name(b)
                for b in opts.Extensions[field_behavior_pb2.field_behavior]
            ]
            ref = opts.Extensions[resource_pb2.resource_reference]
            entry: dict[str, Any] = {}
            if behavior:
                entry["behavior"] = behavior
            if ref.type:
                entry["type"] = ref.type
                # A file may define another API's resource its own way (Eventarc names a
                # Cloud Run service by its bare id, pattern "*"): that holds in that file.
                if ref.type in local:
                    entry["patterns"] = local[ref.type]
            if ref.child_type:
                entry["child_type"] = ref.child_type
            if entry and keep:
                fields.setdefault(full, {})[field.name] = entry
        for nested in message.nested_type:
            walk(full, nested, keep)

    for file in fds.file:
        local.clear()
        for desc in file.options.Extensions[resource_pb2.resource_definition]:
            _add_resource(local, desc)
            _add_resource(defined, desc)
        keep = file.package in PACKAGES
        for message in file.message_type:
            walk(file.package, message, keep)
    for kind, patterns in defined.items():
        resources.setdefault(kind, patterns)
    # The request field an HTTP rule maps the body to: over REST that field is always
    # present (an empty body is an empty message), so its presence cannot be required.
    bodies: dict[str, str] = {}
    for file in fds.file:
        if file.package not in PACKAGES:
            continue
        for service in file.service:
            for method in service.method:
                body = method.options.Extensions[annotations_pb2.http].body
                if body and body != "*":
                    bodies[f"{file.package}.{service.name}/{method.name}"] = body
    return {
        "bodies": dict(sorted(bodies.items())),
        "fields": dict(sorted(fields.items())),
        "messages": dict(sorted(messages.items())),
        "resources": dict(sorted(resources.items())),
    }


def main(argv: list[str]) -> None:
    root = Path(argv[1])
    commit = argv[2] if len(argv) > 2 else "unknown"
    fds = _compile(root)
    data = {"source": f"googleapis/googleapis@{commit}", **extract(fds)}
    data["http"] = dict(sorted(http_rules(fds, _yaml_rules(root)).items()))
    # One entry a line: a regeneration's diff shows which message's rules changed.
    lines = ["{", f' "source": {json.dumps(data["source"])},']
    sections = [k for k in data if k != "source"]
    for i, key in enumerate(sections):
        lines.append(f" {json.dumps(key)}: {{")
        items = list(data[key].items())
        for j, (name, value) in enumerate(items):
            comma = "," if j < len(items) - 1 else ""
            lines.append(f"  {json.dumps(name)}: {json.dumps(value, sort_keys=True)}{comma}")
        lines.append(" }," if i < len(sections) - 1 else " }")
    lines.append("}")
    OUT.write_text("\n".join(lines) + "\n")
    print(
        f"wrote {OUT}: {len(data['fields'])} messages, {len(data['resources'])} resources, "
        f"{len(data['http'])} methods' HTTP bindings"
    )


if __name__ == "__main__":
    main(sys.argv)

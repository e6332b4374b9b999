"""terraform/: formatted, every reference resolves, and it cannot drift from local.

Offline checks of the Terraform that runs the orchestrator on Google Cloud (no account, no
provider download): ``terraform fmt``; every ``var.``/``local.``/``data.``/resource
reference declared; the names come from ``pipeline/orchestrator/pipeline.json``, the list that
``orch local up`` provisions from too; the functions' entry points exist in
``pipeline/orchestrator/functions.py``; the workflow passes localcloud's Workflows validation and gets
every environment variable it reads; the settings handed to the functions and to ``orch``
are ``pipeline/orchestrator/config.py``'s. Where the PyPI package ``cdktn-provider-google`` is
installed, every argument and block is also checked against the google provider's schema.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is in requirements-dev.txt")

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"
PIPELINE = ROOT / "pipeline" / "orchestrator" / "pipeline.json"
MAIN = ROOT / "pipeline" / "orchestrator" / "functions.py"
ENTRY = ROOT / "pipeline" / "main.py"

# Names Terraform provides in every module, and the meta-arguments of resources.
BUILTIN_ROOTS = {"each", "count", "path", "self", "terraform"}
META_ARGUMENTS = {
    "count",
    "for_each",
    "depends_on",
    "lifecycle",
    "provider",
    "provisioner",
    "connection",
}
# Variables Cloud Workflows sets in every execution.
WORKFLOWS_BUILTIN_ENV = {
    "GOOGLE_CLOUD_PROJECT_ID",
    "GOOGLE_CLOUD_PROJECT_NUMBER",
    "GOOGLE_CLOUD_LOCATION",
    "GOOGLE_CLOUD_WORKFLOW_ID",
    "GOOGLE_CLOUD_WORKFLOW_REVISION_ID",
    "GOOGLE_CLOUD_WORKFLOW_EXECUTION_ID",
}


# ------------------------------------------------------------------------ parsing helpers


def unquote(text: str) -> str:
    """python-hcl2 keeps the quotes of labels and string literals: ``'"name"'``."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def is_block(value: Any) -> bool:
    return isinstance(value, dict) and value.get("__is_block__") is True


def blocks(value: Any) -> list[dict[str, Any]]:
    """The blocks under one key (a block type appears as a list of bodies)."""
    if isinstance(value, list):
        return [item for item in value if is_block(item)]
    return []


def clean(value: Any) -> Any:
    """Drop python-hcl2's ``__comments__`` (and any other ``__x__`` key but ``__is_block__``)."""
    if isinstance(value, dict):
        return {
            k: clean(v)
            for k, v in value.items()
            if k == "__is_block__" or not (k.startswith("__") and k.endswith("__"))
        }
    if isinstance(value, list):
        return [clean(item) for item in value]
    return value


@dataclasses.dataclass
class Module:
    files: dict[str, dict[str, Any]]
    variables: dict[str, dict[str, Any]]
    locals: dict[str, Any]
    resources: dict[tuple[str, str], dict[str, Any]]
    data: dict[tuple[str, str], dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    modules: dict[str, dict[str, Any]]


@cache
def module() -> Module:
    files = {}
    for path in sorted(TERRAFORM.glob("*.tf")):
        with path.open() as handle:
            files[path.name] = clean(hcl2.load(handle))
    assert files, "terraform/ has no .tf files"
    mod = Module(files, {}, {}, {}, {}, {}, {})

    def add(table: dict, key: Any, body: Any, what: str, where: str) -> None:
        assert key not in table, f"{what} {key} is declared twice (again in {where})"
        table[key] = body

    for name, doc in files.items():
        for block in doc.get("variable", []):
            for label, body in block.items():
                add(mod.variables, unquote(label), body, "variable", name)
        for block in doc.get("locals", []):
            for key, value in block.items():
                if key != "__is_block__":
                    add(mod.locals, key, value, "local", name)
        for kind, table in (("resource", mod.resources), ("data", mod.data)):
            for block in doc.get(kind, []):
                for rtype, named in block.items():
                    for rname, body in named.items():
                        if rname != "__is_block__":
                            add(table, (unquote(rtype), unquote(rname)), body, kind, name)
        for kind, table in (("output", mod.outputs), ("module", mod.modules)):
            for block in doc.get(kind, []):
                for label, body in block.items():
                    add(table, unquote(label), body, kind, name)
    return mod


def strings(value: Any) -> list[str]:
    """Every string (expression or literal) anywhere in a parsed value."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings(k) + strings(v)]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return []


@cache
def pipeline() -> dict[str, Any]:
    return json.loads(PIPELINE.read_text())


def expression(value: Any) -> str:
    """The text of a ``${...}`` expression attribute."""
    assert isinstance(value, str), value
    match = re.fullmatch(r"\$\{(.*)\}", value, re.S)
    assert match, f"not an expression: {value!r}"
    return match.group(1).strip()


# ------------------------------------------------------------------------ formatting


def test_terraform_fmt_check() -> None:
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform is not installed here: `terraform fmt -check` not run")
    proc = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"terraform fmt would change:\n{proc.stdout}{proc.stderr}"


# ------------------------------------------------------------------------ references

REF_VAR = re.compile(r"(?<![\w.])var\.([A-Za-z_][\w-]*)")
REF_LOCAL = re.compile(r"(?<![\w.])local\.([A-Za-z_][\w-]*)")
REF_DATA = re.compile(r"(?<![\w.])data\.([a-z][\w]*)\.([A-Za-z_][\w-]*)")
REF_MODULE = re.compile(r"(?<![\w.])module\.([A-Za-z_][\w-]*)")
REF_RESOURCE = re.compile(
    r"(?<![\w.\-/])((?:google|google-beta|archive|random|null|time|terraform)_[a-z0-9_]+)"
    r"\.([A-Za-z_][\w-]*)"
)


def references() -> list[tuple[str, str, str]]:
    """(file, kind, name) of every reference in the module's expressions."""
    found = []
    for name, doc in module().files.items():
        for text in strings(doc):
            found += [(name, "var", m.group(1)) for m in REF_VAR.finditer(text)]
            found += [(name, "local", m.group(1)) for m in REF_LOCAL.finditer(text)]
            found += [(name, "data", f"{m[1]}.{m[2]}") for m in REF_DATA.finditer(text)]
            found += [(name, "module", m.group(1)) for m in REF_MODULE.finditer(text)]
            found += [(name, "resource", f"{m[1]}.{m[2]}") for m in REF_RESOURCE.finditer(text)]
    return found


def test_every_reference_resolves() -> None:
    mod = module()
    declared = {
        "var": set(mod.variables),
        "local": set(mod.locals),
        "data": {f"{t}.{n}" for t, n in mod.data},
        "module": set(mod.modules),
        "resource": {f"{t}.{n}" for t, n in mod.resources},
    }
    refs = references()
    assert {kind for _, kind, _ in refs} >= {"var", "local", "data", "resource"}
    missing = sorted(
        {f"{f}: {kind} {name}" for f, kind, name in refs if name not in declared[kind]}
    )
    assert not missing, "undeclared references:\n" + "\n".join(missing)


def test_every_variable_is_described_validated_or_typed_and_used() -> None:
    mod = module()
    used = {name for _, kind, name in references() if kind == "var"}
    for name, body in mod.variables.items():
        assert unquote(body.get("description", "")).strip(), f"variable {name} has no description"
        assert "type" in body, f"variable {name} has no type"
        assert name in used, f"variable {name} is declared but never used"
    for name in ("project_id", "region", "name_prefix"):
        assert blocks(mod.variables[name].get("validation")), f"variable {name} has no validation"
    assert "default" not in mod.variables["project_id"], "project_id must be asked for"


def test_every_local_and_data_source_is_used() -> None:
    mod = module()
    refs = references()
    used_locals = {name for _, kind, name in refs if kind == "local"}
    assert set(mod.locals) - used_locals == set()
    used_data = {name for _, kind, name in refs if kind == "data"}
    assert {f"{t}.{n}" for t, n in mod.data} - used_data == set()


def test_outputs_have_descriptions() -> None:
    for name, body in module().outputs.items():
        assert unquote(body.get("description", "")).strip(), f"output {name} has no description"


# ------------------------------------------------------------------------ the shared names


def test_pipeline_json_is_the_source_of_the_names() -> None:
    """Terraform reads pipeline.json (the file `orch local up` reads) and derives every
    topic, function, trigger and account from it, so cloud and local cannot drift apart."""
    mod = module()
    loads = expression(mod.locals["pipeline"])
    match = re.fullmatch(r'jsondecode\(file\("\$\{path\.module\}/([^"]+)"\)\)', loads)
    assert match, f"local.pipeline must be jsondecode(file(...)) of pipeline.json: {loads}"
    assert (TERRAFORM / match.group(1)).resolve() == PIPELINE.resolve()

    # The collections iterate over pipeline.json's.
    assert expression(mod.locals["topics"]) == "local.pipeline.topics"
    for local_name, key in (
        ("functions", "functions"),
        ("triggers", "triggers"),
        ("service_accounts", "service_accounts"),
    ):
        text = expression(mod.locals[local_name])
        assert re.search(rf"\bin local\.pipeline\.{key}\s*:", text), (local_name, text)
        assert "${local.prefix}-" in text, f"local.{local_name} names must be PREFIX-KEY"
    assert "local.pipeline.name_prefix" in expression(mod.locals["prefix"])
    assert "local.pipeline.sources_bucket_suffix" in mod.locals["sources_bucket"]

    # The resources iterate over those collections or take the single names from the file.
    for_each = {
        ("google_pubsub_topic", "topic"): "local.topics",
        ("google_cloudfunctions2_function", "function"): "local.functions",
        ("google_service_account", "function"): "local.functions",
        ("google_service_account", "account"): "local.service_accounts",
        ("google_eventarc_trigger", "intake"): "local.triggers",
    }
    for key, collection in for_each.items():
        assert key in mod.resources, f"missing resource {key}"
        assert expression(mod.resources[key]["for_each"]) == collection, key
    single = {
        ("google_storage_bucket", "sources"): ("name", "local.sources_bucket"),
        ("google_artifact_registry_repository", "functions"): (
            "repository_id",
            "local.pipeline.repository",
        ),
        ("google_workflows_workflow", "deploy"): ("name", "local.pipeline.workflow"),
        ("google_pubsub_subscription", "dead_letter"): (
            "name",
            "local.pipeline.dead_letter_subscription",
        ),
    }
    for key, (attribute, value) in single.items():
        assert expression(mod.resources[key][attribute]) == value, key
    source = mod.resources[("google_workflows_workflow", "deploy")]["source_contents"]
    assert "local.pipeline.workflow_file" in source
    subscription = mod.resources[("google_pubsub_subscription", "dead_letter")]
    assert 'google_pubsub_topic.topic["dead_letter"]' in subscription["topic"]


def test_the_names_are_the_ones_local_provisioning_uses() -> None:
    """The names Terraform derives (PREFIX-KEY) are the ones orchestrator.config gives the
    local provisioner, for the default prefix and project."""
    from orchestrator.config import Settings, service_account_email

    p = pipeline()
    prefix = p["name_prefix"]
    settings = Settings.defaults("my-project")
    assert settings.prefix == prefix
    assert settings.sources_bucket == "my-project" + p["sources_bucket_suffix"]
    assert {settings.requests_topic, settings.status_topic, settings.dead_letter_topic} == set(
        p["topics"].values()
    )
    assert (settings.repository, settings.workflow) == (p["repository"], p["workflow"])
    for key in p["functions"]:
        assert settings.function_service(key) == f"{prefix}-{key}"
    assert settings.runtime_service_account == service_account_email(
        f"{prefix}-{p['service_accounts']['runtime']}", "my-project"
    )
    provision = ROOT / "orch" / "provision.py"
    if provision.exists():
        text = provision.read_text()
        for key in ("functions", "triggers", "service_accounts", "dead_letter_subscription"):
            assert f'self.p["{key}"]' in text, f"provision.py does not read pipeline {key}"


def test_every_trigger_targets_a_function_and_a_known_source() -> None:
    p = pipeline()
    targets = module().locals["trigger_targets"]
    assert isinstance(targets, dict)
    for key, trigger in p["triggers"].items():
        assert trigger["function"] in p["functions"], key
        assert p["functions"][trigger["function"]]["signature_type"] == "cloudevent", key
        assert trigger["on"] in targets, f"trigger {key}: terraform has no target {trigger['on']}"
    # Every CloudEvent function has a trigger; every HTTP function is a workflow step.
    triggered = {t["function"] for t in p["triggers"].values()}
    for key, fn in p["functions"].items():
        if fn["signature_type"] == "cloudevent":
            assert key in triggered, f"function {key} receives no events"
        else:
            assert fn.get("workflow_env"), f"HTTP function {key} has no workflow_env"


def test_service_account_ids_fit_iam_limits() -> None:
    """IAM account ids are 6-30 characters: the name_prefix validation (at most 11) must
    keep the longest PREFIX-KEY within that."""
    p = pipeline()
    keys = list(p["functions"]) + list(p["service_accounts"].values())
    assert len(set(keys)) == len(keys), "a function and a role account would share an id"
    validation = blocks(module().variables["name_prefix"]["validation"])[0]
    assert "{0,9}" in validation["condition"], "name_prefix's validation allows 11 characters"
    longest = max(len(k) for k in keys)
    assert 11 + 1 + longest <= 30, f"a prefix of 11 makes a {12 + longest}-character id"
    assert 1 + 1 + min(len(k) for k in keys) >= 6
    assert re.fullmatch(r"[a-z][a-z0-9-]{0,9}[a-z0-9]|[a-z]", p["name_prefix"])


def test_iam_covers_every_function() -> None:
    p = pipeline()
    mod = module()
    for table in ("function_project_roles", "function_act_as"):
        assert {unquote(k) for k in mod.locals[table]} == set(p["functions"]), f"local.{table}"
    for key, accounts in mod.locals["function_act_as"].items():
        assert {unquote(a) for a in accounts} <= set(p["service_accounts"]), key
    for key, roles in mod.locals["function_project_roles"].items():
        assert all(role.startswith('"roles/') for role in roles), key


# ------------------------------------------------------------------------ the settings


def test_function_env_and_orch_config_are_the_orchestrator_settings() -> None:
    from orchestrator.config import ENV_VARS, Settings

    mod = module()
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(mod.locals["settings"]) == fields
    env_vars = {field: unquote(var) for field, var in mod.locals["env_vars"].items()}
    assert env_vars == ENV_VARS
    assert expression(mod.locals["function_env"]).startswith("{for field, value in local.settings")
    service = blocks(
        mod.resources[("google_cloudfunctions2_function", "function")]["service_config"]
    )
    assert expression(service[0]["environment_variables"]) == "local.function_env"
    # `terraform output -json orch_config` is the config file Settings.from_env reads.
    assert expression(mod.outputs["orch_config"]["value"]) == "local.settings"
    # Topic settings are ids (what Settings expects), not projects/P/topics/T paths.
    for field in ("requests_topic", "status_topic", "dead_letter_topic"):
        assert expression(mod.locals["settings"][field]).startswith("local.topics."), field


def test_functions_take_entry_point_timeout_and_own_account_from_pipeline() -> None:
    mod = module()
    fn = mod.resources[("google_cloudfunctions2_function", "function")]
    assert expression(fn["name"]) == "each.value.name"
    build = blocks(fn["build_config"])[0]
    assert expression(build["entry_point"]) == "each.value.entry_point"
    storage = blocks(blocks(build["source"])[0]["storage_source"])[0]
    assert "google_storage_bucket_object.orchestrator" in storage["object"]
    service = blocks(fn["service_config"])[0]
    assert expression(service["timeout_seconds"]) == "each.value.timeout_seconds"
    assert "google_service_account.function[each.key]" in service["service_account_email"]
    archive = mod.data[("archive_file", "orchestrator")]
    assert (
        TERRAFORM / unquote(archive["source_dir"]).replace("${path.module}/", "")
    ).resolve() == (ROOT / "pipeline")
    assert any("__pycache__" in pattern for pattern in archive["excludes"])
    obj = mod.resources[("google_storage_bucket_object", "orchestrator")]
    assert "data.archive_file.orchestrator.output_md5" in obj["name"]
    # Private: nothing grants allUsers or allAuthenticatedUsers.
    for doc in mod.files.values():
        assert not any("allUsers" in s or "allAuthenticatedUsers" in s for s in strings(doc))


# ------------------------------------------------------------------------ the code it deploys


def test_every_entry_point_is_a_top_level_function_of_main() -> None:
    tree = ast.parse(MAIN.read_text(), filename=str(MAIN))
    defined = {
        node.name: node
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    for key, fn in pipeline()["functions"].items():
        entry = fn["entry_point"]
        assert entry in defined, f"function {key}: main.py defines no top-level {entry}()"
        # Cloud Run functions know a CloudEvent function by its registration, as the
        # cloudevent functions have no event_trigger of their own (Eventarc delivers).
        decorators = {ast.unparse(d) for d in defined[entry].decorator_list}
        if fn["signature_type"] == "cloudevent":
            assert decorators & {"functions_framework.cloud_event", "cloud_event"}, (
                f"{entry} must be registered with @functions_framework.cloud_event"
            )
    assert (ROOT / "pipeline" / "requirements.txt").exists()
    # main.py, what functions-framework loads, re-exports every entry point.
    assert "from orchestrator.functions import *" in ENTRY.read_text()
    exported = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "__all__"
    )
    assert set(exported) == {fn["entry_point"] for fn in pipeline()["functions"].values()}


def test_workflow_passes_localcloud_validation_and_gets_its_env() -> None:
    p = pipeline()
    path = ROOT / p["workflow_file"]
    if not path.exists():
        pytest.skip(f"{p['workflow_file']} does not exist yet")
    from localcloud.workflows import definition
    from localcloud.workflows.runtime import Runtime

    runtime = Runtime(None, None, None)  # only its function names are needed
    known = set(runtime.functions({})) | set(runtime.blocking(""))
    source = path.read_text()
    definition.parse(source, known)  # raises DefinitionError naming every problem

    read = set(re.findall(r"""sys\.get_env\(\s*["']([A-Za-z0-9_]+)["']""", source))
    given = {fn["workflow_env"] for fn in p["functions"].values() if fn.get("workflow_env")}
    workflow = module().resources[("google_workflows_workflow", "deploy")]
    env_text = workflow["user_env_vars"]
    assert "fn.workflow_env" in env_text and "STATUS_TOPIC" in env_text
    given |= {"STATUS_TOPIC"}
    missing = read - given - WORKFLOWS_BUILTIN_ENV
    assert not missing, f"the workflow reads variables Terraform does not set: {sorted(missing)}"
    assert given - {"STATUS_TOPIC"} <= read, "a step URL is set but the workflow never reads it"


# ------------------------------------------------------------------------ provider schema


def _pascal(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


@cache
def _schema_classes(package_dir: str, module_name: str) -> dict[str, tuple[set, set]] | None:
    """Class name -> (argument names, required argument names) of one cdktn module,
    read with ast (the generated code is not imported: that would need the jsii runtime)."""
    path = Path(package_dir) / module_name / "__init__.py"
    if not path.exists():
        return None
    tree = ast.parse(path.read_text())
    classes = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    args = item.args.kwonlyargs
                    names = {a.arg.rstrip("_") for a in args} - META_ARGUMENTS - {"provisioners"}
                    required = {
                        a.arg.rstrip("_")
                        for a, default in zip(args, item.args.kw_defaults, strict=True)
                        if default is None
                    } - META_ARGUMENTS
                    classes[node.name] = (names, required)
    return classes


def _check_body(
    body: dict, classes: dict, cls: str, where: str, problems: list[str], prefix: str = ""
) -> None:
    """Check one block body against class ``cls``; its nested blocks are ``PREFIX + Name``
    (the prefix is the class itself, but the resource's own name for its ``Config``)."""
    names, required = classes[cls]
    prefix = prefix or cls
    present = set()
    for key, value in body.items():
        if key == "__is_block__" or key in META_ARGUMENTS:
            continue
        if key == "dynamic":
            for dyn in value if isinstance(value, list) else []:
                for label, spec in dyn.items():
                    if label == "__is_block__":
                        continue
                    label = unquote(label)
                    present.add(label)
                    sub = prefix + _pascal(label)
                    if label not in names or sub not in classes:
                        problems.append(f"{where}: no block {label!r}")
                        continue
                    for content in blocks(spec.get("content")):
                        _check_body(content, classes, sub, f"{where}.{label}", problems)
            continue
        present.add(key)
        if key not in names:
            problems.append(f"{where}: no argument {key!r}")
            continue
        for nested in blocks(value):
            sub = prefix + _pascal(key)
            if sub not in classes:
                problems.append(f"{where}: {key!r} is an argument, not a block")
                break
            _check_body(nested, classes, sub, f"{where}.{key}", problems)
    for name in sorted(required - present):
        problems.append(f"{where}: missing required {name!r}")


def test_arguments_match_the_google_provider_schema() -> None:
    spec = importlib.util.find_spec("cdktn_provider_google")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(
            "cdktn-provider-google (the google provider's schema, ~70 MB) is not installed: "
            "argument names unchecked here; `terraform validate` after `terraform init` checks them"
        )
    package_dir = next(iter(spec.submodule_search_locations))
    mod = module()
    problems: list[str] = []
    checked = 0
    for kind, table in (("resource", mod.resources), ("data", mod.data)):
        for (rtype, rname), body in table.items():
            if not rtype.startswith("google_"):
                continue  # archive_file, terraform_data: not the google provider's
            module_name = rtype.removeprefix("google_")
            if kind == "data":
                module_name = "data_google_" + module_name
            classes = _schema_classes(package_dir, module_name)
            if classes is None:
                problems.append(f"{kind} {rtype}: not in the google provider")
                continue
            base = _pascal(module_name)
            _check_body(body, classes, base + "Config", f"{rtype}.{rname}", problems, base)
            checked += 1
    for doc in mod.files.values():
        for block in doc.get("provider", []):
            for label, body in block.items():
                if unquote(label) == "google":
                    classes = _schema_classes(package_dir, "provider")
                    assert classes is not None
                    _check_body(body, classes, "GoogleProvider", "provider.google", problems)
    assert checked
    assert not problems, "\n".join(problems)

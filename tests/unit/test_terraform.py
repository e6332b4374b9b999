"""terraform/: formatted, every reference resolves, and it cannot drift from local.

Offline checks of the Terraform that runs the orchestrator on Google Cloud (no account, no
provider download): ``terraform fmt``; every ``var.``/``local.``/``data.``/resource
reference declared; the names come from ``pipeline/orchestrator/pipeline.json``, the list that
``orch local up`` provisions from too; the functions' entry points exist in
``pipeline/orchestrator/functions.py``; the workflow passes localcloud's Workflows validation and gets
every environment variable it reads; the settings handed to the functions and to ``orch``
are ``pipeline/orchestrator/config.py``'s; least privilege (the builder account and its
grants, who may write where, lifecycle rules that never delete locks, the staging cleanup
prefix, service agents created before they are granted). The grants are
``pipeline/orchestrator/grants.json``'s: Terraform's expansion of that file (evaluated by
``terraform console`` where Terraform is installed) equals ``orch/grants.py``'s, which
``orch local up`` applies; no grant is written in HCL beside it, the ``moved`` blocks keep old
addresses, and README's table is rendered from it. Where the PyPI
package ``cdktn-provider-google`` (and ``-google-beta``) is installed, every argument and
block is also checked against the provider's schema.
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
        # moved blocks name the addresses grants had before: gone on purpose.
        doc = {k: v for k, v in doc.items() if k != "moved"}
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


# ------------------------------------------------------------------------ the grants

RUNTIME_GRANT = ("google_project_iam_member", "runtime")  # var.runtime_roles: not in the file


def grants_file() -> Any:
    from orch.grants import load

    return load()


def grants() -> dict[tuple[str, str], dict[str, Any]]:
    """Every IAM grant resource (``*_iam_member``) by (type, name)."""
    return {key: body for key, body in module().resources.items() if key[0].endswith("_iam_member")}


def iam_grants_block() -> str:
    """The source of iam.tf's first ``locals`` block: grants.json expanded, as data only."""
    text = (TERRAFORM / "iam.tf").read_text()
    found = re.search(r"^locals \{\n.*?^\}\n", text, re.S | re.M)
    assert found, "iam.tf has no locals block"
    return found.group(0)


def terraform_grants(tmp_path: Path) -> dict[str, Any]:
    """``local.iam_grants`` as Terraform computes it: iam.tf's data block, with locals.tf's
    ``local.pipeline``, in a module that needs no provider, so ``terraform console`` runs
    offline. The module sits in a copy of the layout (terraform/ beside pipeline/) so the
    block's own ``path.module`` paths are read unchanged."""
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform is not installed here: iam.tf's expansion not evaluated")
    (tmp_path / "pipeline").symlink_to(ROOT / "pipeline")
    work = tmp_path / "terraform"
    work.mkdir()
    block = iam_grants_block()
    assert "local.pipeline" in block and "grants.json" in block
    (work / "main.tf").write_text(
        "locals {\n"
        '  pipeline = jsondecode(file("${path.module}/../pipeline/orchestrator/pipeline.json"))\n'
        "}\n\n" + block
    )
    proc = subprocess.run(
        [terraform, "console"],
        input="jsonencode(local.iam_grants)\n",
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(json.loads(proc.stdout))


def test_terraform_expands_grants_json_exactly_as_local_provisioning_does(tmp_path) -> None:
    """The drift test: the grants Terraform makes (local.iam_grants, computed by Terraform
    itself) are the ones orch/grants.py reads for `orch local up`, key for key."""
    mine = {
        g.key: {
            "who": g.who,
            "role": g.role,
            "kind": g.kind,
            "target": g.target,
            "condition": None
            if g.condition is None
            else {
                "title": g.condition.title,
                "description": g.condition.description,
                "expression": g.condition.expression,
            },
        }
        for g in grants_file().grants
    }
    assert terraform_grants(tmp_path) == mine


def test_every_grant_resource_is_made_from_grants_json() -> None:
    """One resource per target kind, for_each over the file's grants of that kind, member,
    role and target from the grant: no grant is spelled out in HCL beside the file (only
    the runtime account's var.runtime_roles, a user's choice)."""
    from orch.grants import BUCKETS, RESOURCE_TYPES

    mod = module()
    assert expression(mod.locals["grants_file"]) == (
        'jsondecode(file("${path.module}/../pipeline/orchestrator/grants.json"))'
    )
    assert set(grants()) == {(rtype, "grant") for rtype in RESOURCE_TYPES.values()} | {
        RUNTIME_GRANT
    }
    kinds = re.search(r"for kind in \[([^\]]*)\]", mod.locals["grants_on"])
    assert kinds and [unquote(k.strip()) for k in kinds.group(1).split(",")] == list(RESOURCE_TYPES)
    assert "grant.kind == kind" in mod.locals["grants_on"]
    for kind, rtype in RESOURCE_TYPES.items():
        body = mod.resources[(rtype, "grant")]
        assert expression(body["for_each"]) == f"local.grants_on.{kind}", rtype
        assert expression(body["member"]) == "local.grant_members[each.value.who]", rtype
        assert expression(body["role"]) == (
            "lookup(local.grant_roles, each.value.role, each.value.role)"
        ), rtype
    project = mod.resources[("google_project_iam_member", "grant")]
    condition = project["dynamic"][0]['"condition"']
    assert expression(condition["for_each"]) == (
        "each.value.condition == null ? [] : [each.value.condition]"
    )
    assert "{function_sources_bucket}" in condition["content"][0]["expression"]
    assert "local.function_sources_bucket" in condition["content"][0]["expression"]
    targets = {
        "bucket": ("bucket", "local.grant_buckets[each.value.target]"),
        "topic": ("topic", "google_pubsub_topic.topic[each.value.target].name"),
        "account": (
            "service_account_id",
            "google_service_account.account[each.value.target].name",
        ),
        "service": ("name", "google_cloudfunctions2_function.function[each.value.target].name"),
        "subscription": (
            "subscription",
            "google_eventarc_trigger.intake[each.value.target].transport[0].pubsub[0].subscription",
        ),
        "repository": ("repository", "google_artifact_registry_repository.functions.name"),
    }
    for kind, (attribute, value) in targets.items():
        assert expression(mod.resources[(RESOURCE_TYPES[kind], "grant")][attribute]) == value
    assert set(mod.locals["grant_buckets"]) == set(BUCKETS)
    for bucket, name in mod.locals["grant_buckets"].items():
        assert expression(name) == f"google_storage_bucket.{bucket}.name"
    custom = mod.resources[("google_project_iam_custom_role", "custom")]
    assert expression(custom["for_each"]) == "local.grants_file.custom_roles"
    assert expression(custom["permissions"]) == "each.value.permissions"
    assert "google_project_iam_custom_role.custom" in mod.locals["grant_roles"]


def test_grant_members_are_accounts_terraform_makes_or_service_agents() -> None:
    """Every `who` of the file resolves to an account this configuration creates or to a
    service agent created before it is granted; no grant spells out an email."""
    members = module().locals["grant_members"]
    for text in (
        '{for key, account in google_service_account.function : "function:${key}" => '
        "account.member}",
        '{for key, account in google_service_account.account : "account:${key}" => account.member}',
        '"agent:pubsub" = local.pubsub_service_agent',
        '"agent:storage" = local.gcs_service_agent',
    ):
        assert text in members, text
    assert "@" not in members
    for rtype, rname in grants():
        assert "@" not in module().resources[(rtype, rname)]["member"]


def test_moved_blocks_keep_every_old_grant_in_place() -> None:
    """Every grant that had its own resource before grants.json is moved to its instance:
    each `to` is a grant the file makes (a typo would leave the old address to destroy),
    and no address is moved twice."""
    keys = {g.key for g in grants_file().grants}
    moved = [block for doc in module().files.values() for block in doc.get("moved", [])]
    # Grants added to the file later (api: functions's) are new resources: no old address.
    assert moved
    sources = [expression(block["from"]) for block in moved]
    assert len(set(sources)) == len(sources)
    targets = [expression(block["to"]) for block in moved]
    assert len(set(targets)) == len(targets)
    for target in targets:
        rtype, _, rest = target.partition(".")
        if rtype == "google_project_iam_custom_role":
            assert re.fullmatch(r'custom\["(\w+)"\]', rest), target
            assert re.fullmatch(r'custom\["(\w+)"\]', rest)[1] in grants_file().custom_roles
            continue
        found = re.fullmatch(r'grant\["([^"]+)"\]', rest)
        assert found, target
        assert found[1] in keys, f"moved to a grant grants.json does not make: {target}"
        kind = next(g.kind for g in grants_file().grants if g.key == found[1])
        from orch.grants import RESOURCE_TYPES

        assert RESOURCE_TYPES[kind] == rtype, target


def test_grants_cover_every_function_and_name_what_pipeline_json_defines() -> None:
    """Every function writes its records and publishes status; the intake functions (and
    only they) start the workflow and read sources; the workflow invokes exactly the step
    functions and the trigger account exactly the intake functions; Pub/Sub may dead-letter
    from every intake trigger's subscription."""
    p = pipeline()
    by_key = {g.key: g for g in grants_file().grants}
    for key in p["functions"]:
        for needed in (
            f"function:{key} roles/storage.objectUser bucket:records",
            f"function:{key} roles/pubsub.publisher topic:status",
            f"function:{key} roles/workflows.viewer project",
        ):
            assert needed in by_key, needed
    intake = {t["function"] for t in p["triggers"].values()}
    steps = {key for key, fn in p["functions"].items() if fn.get("workflow_env")}

    def holders(role: str, on: str) -> set[str]:
        return {g.who for g in by_key.values() if g.role == role and g.on == on}

    assert holders("roles/workflows.invoker", "project") == {f"function:{k}" for k in intake}
    assert holders("roles/storage.objectViewer", "bucket:sources") == {
        f"function:{k}" for k in intake
    } | {"account:build"}
    invoked = {
        g.who: set()
        for g in by_key.values()
        if g.role == "roles/run.invoker" and g.kind == "service"
    }
    for g in by_key.values():
        if g.role == "roles/run.invoker" and g.kind == "service":
            invoked[g.who].add(g.target)
    assert invoked == {"account:workflow": steps, "account:trigger": intake}
    subscriptions = {g.target for g in by_key.values() if g.kind == "subscription"}
    assert subscriptions == set(p["triggers"])


def test_grants_json_is_checked_naming_the_field() -> None:
    """A typo in grants.json fails with the field it is in, not as a grant to nobody."""
    from orch.grants import GrantsError, parse

    p = pipeline()
    good = {"who": ["function:build"], "role": "roles/run.invoker", "on": ["project"], "why": "x"}
    for broken, field in (
        ({**good, "who": ["function:biuld"]}, r"grants\[0\]\.who: 'function:biuld'"),
        ({**good, "on": ["bucket:logs"]}, r"grants\[0\]\.on: 'bucket:logs'"),
        ({**good, "role": "run.invoker"}, r"grants\[0\]\.role"),
        ({**good, "role": "custom:nope"}, r"grants\[0\]\.role: no custom role"),
        ({**good, "why": ""}, r"grants\[0\]\.why"),
        ({**good, "who": "function:build"}, r"grants\[0\]\.who must be a non-empty list"),
        (
            {**good, "on": ["topic:status"], "condition": {"title": "t", "expression": "e"}},
            r"grants\[0\]\.condition",
        ),
        ({**good, "whom": []}, r"unknown fields \['whom'\]"),
    ):
        with pytest.raises(GrantsError, match=field):
            parse({"grants": [broken]}, p)
    with pytest.raises(GrantsError, match="more than once"):
        parse({"grants": [good, good]}, p)


# ------------------------------------------------------------------------ least privilege


def grants_of(who: str) -> dict[tuple[str, str], Any]:
    """(role, on) -> grant of one member in grants.json."""
    return {(g.role, g.on): g for g in grants_file().grants if g.who == who}


def literal(value: str) -> str:
    """A quoted literal or a ``${local.X}`` whose value is a quoted literal."""
    if value.startswith("${local."):
        return literal(module().locals[expression(value).removeprefix("local.")])
    assert value.startswith('"'), f"not a literal: {value!r}"
    return unquote(value)


def render(template: str) -> str:
    """The value of a string template that reads only pipeline.json (``local.pipeline.K``,
    optionally through ``trimsuffix(..., "/")``): enough to evaluate the names built from it."""
    p = pipeline()

    def one(match: re.Match[str]) -> str:
        inner = match.group(1).strip()
        trim = re.fullmatch(r'trimsuffix\(local\.pipeline\.(\w+),\s*"([^"]*)"\)', inner)
        if trim:
            return str(p[trim.group(1)]).removesuffix(trim.group(2))
        plain = re.fullmatch(r"local\.pipeline\.(\w+)", inner)
        assert plain, f"cannot evaluate ${{{inner}}} offline"
        return str(p[plain.group(1)])

    return re.sub(r"\$\{([^{}]*)\}", one, unquote(template))


def test_builds_run_as_the_builder_account_not_a_project_default() -> None:
    """Defect 9 and 1: every build (users' and the functions' own) runs as PREFIX-builder,
    which gets exactly what a build needs; nothing names the legacy
    NUMBER@cloudbuild.gserviceaccount.com or the Compute Engine default account, which
    only some projects have (or grant build roles to)."""
    mod = module()
    assert "build" in pipeline()["service_accounts"]
    assert "cloud_build_service_account" not in mod.variables
    for doc in mod.files.values():
        for text in strings(doc):
            for legacy in ("cloudbuild.gserviceaccount.com", "developer.gserviceaccount.com"):
                assert legacy not in text, f"{legacy} in {text!r}"
    assert "cloudbuild.gserviceaccount.com" not in (ROOT / "orch" / "grants.py").read_text()

    fn = mod.resources[("google_cloudfunctions2_function", "function")]
    build = blocks(fn["build_config"])[0]
    # Both take the full resource names: projects/P/serviceAccounts/EMAIL and
    # projects/P/locations/L/repositories/R.
    assert expression(build["service_account"]) == 'google_service_account.account["build"].id'
    assert (
        expression(build["docker_repository"]) == "google_artifact_registry_repository.functions.id"
    )
    # The functions are built once the builder's grants (buckets, project, repository) exist.
    needed = {
        "google_storage_bucket_iam_member.grant",
        "google_project_iam_member.grant",
        "google_artifact_registry_repository_iam_member.grant",
    }
    assert needed <= {expression(d) for d in fn["depends_on"]}, "functions built before grants"

    builder = grants_of("account:build")
    assert set(builder) == {
        ("roles/storage.objectViewer", "bucket:sources"),
        ("roles/storage.objectViewer", "bucket:code"),
        ("roles/storage.objectViewer", "project"),
        ("roles/artifactregistry.writer", "repository"),
        # api: functions: Cloud Functions' builds push to gcf-artifacts (condition below).
        ("roles/artifactregistry.writer", "project"),
        # Cloud Build's documented role for a user-created logs bucket, on that bucket only.
        ("roles/storage.admin", "bucket:build_logs"),
        ("roles/logging.logWriter", "project"),
    }
    # The project-level storage grant is limited to Cloud Run functions' sources bucket:
    # unconditioned, it would read the records and every other bucket of the project.
    condition = builder[("roles/storage.objectViewer", "project")].condition
    assert condition is not None, "the builder's project-level objectViewer has no condition"
    assert "projects/_/buckets/{function_sources_bucket}" in condition.expression
    assert (
        "gcf-v2-sources-${local.project_number}-${var.region}"
        in mod.locals["function_sources_bucket"]
    )
    # So is the project-level repository grant, to the gcf-artifacts repository; only
    # those two grants are conditioned.
    condition = builder[("roles/artifactregistry.writer", "project")].condition
    assert condition is not None, "the builder's project-level artifactregistry.writer"
    assert '"/repositories/gcf-artifacts"' in condition.expression
    assert sorted(g.key for g in grants_file().grants if g.condition) == [
        "account:build roles/artifactregistry.writer project",
        "account:build roles/storage.objectViewer project",
    ]

    # The build function submits builds as the builder and reads their logs.
    build_fn = grants_of("function:build")
    assert ("roles/iam.serviceAccountUser", "account:build") in build_fn
    assert ("roles/storage.objectViewer", "bucket:build_logs") in build_fn


def test_records_live_in_their_own_bucket_and_functions_only_read_sources() -> None:
    """Every function reads and writes records in the records bucket; the sources bucket is
    read only, by the intake functions (the archive) and the builder."""
    on_sources = {g.role for g in grants_file().grants if g.on == "bucket:sources"}
    assert on_sources == {"roles/storage.objectViewer"}, "something may write to the sources bucket"
    assert {t["function"] for t in pipeline()["triggers"].values()} == {
        key for key, fn in pipeline()["functions"].items() if fn["signature_type"] == "cloudevent"
    }
    functions_write = {
        g.on for g in grants_file().grants if g.who.startswith("function:") and g.kind == "bucket"
    }
    assert functions_write == {"bucket:records", "bucket:sources", "bucket:build_logs"}
    assert {
        g.role
        for g in grants_file().grants
        if g.who.startswith("function:") and g.on in ("bucket:sources", "bucket:build_logs")
    } == {"roles/storage.objectViewer"}


def test_records_and_build_logs_expire_but_never_locks() -> None:
    """Old deployments' records and build logs are deleted by lifecycle rules; a service's
    lock and trigger locations (read by its next deployment, however late) never are."""
    from orchestrator import records

    mod = module()
    bucket = mod.resources[("google_storage_bucket", "records")]
    rules = blocks(bucket["lifecycle_rule"])
    assert len(rules) == 1
    assert blocks(rules[0]["action"])[0]["type"] == '"Delete"'
    condition = blocks(rules[0]["condition"])[0]
    assert expression(condition["age"]) == "var.record_retention_days"
    assert expression(condition["matches_prefix"]) == "local.deployment_record_prefixes"
    listed = re.fullmatch(r"\$\{distinct\(\[(.*)\]\)\}", mod.locals["deployment_record_prefixes"])
    assert listed, mod.locals["deployment_record_prefixes"]
    prefixes = [render(item.strip()) for item in listed.group(1).split(",")]
    assert prefixes and all(prefix.endswith("deployments/") for prefix in prefixes)

    def deleted(name: str) -> bool:
        return any(name.startswith(prefix) for prefix in prefixes)

    assert deleted(records.claim_name("d1")) and deleted(records.step_name("d1", "build"))
    assert not deleted(records.lock_name("hello"))
    assert not deleted(records.locations_name("hello"))
    validation = blocks(mod.variables["record_retention_days"]["validation"])[0]
    assert ">= 7" in validation["condition"], "records must outlive Pub/Sub's 7-day redelivery"

    logs = mod.resources[("google_storage_bucket", "build_logs")]
    rule = blocks(logs["lifecycle_rule"])[0]
    assert expression(blocks(rule["condition"])[0]["age"]) == "var.build_log_retention_days"
    assert blocks(rule["action"])[0]["type"] == '"Delete"'
    # A retention policy can keep Cloud Build from writing its logs.
    assert "retention_policy" not in logs


def test_staging_cleanup_deletes_only_staging_images() -> None:
    """Defect 9: the prefix is ``staging/``; ``staging`` also matched the published images
    of any service named staging-*."""
    from orchestrator.config import Settings

    repo = module().resources[("google_artifact_registry_repository", "functions")]
    deleting = [
        blocks(policy["condition"])[0]
        for policy in blocks(repo["cleanup_policies"])
        if policy["action"] == '"DELETE"'
        and "package_name_prefixes" in blocks(policy["condition"])[0]
    ]
    assert len(deleting) == 1
    prefixes = [render(text) for text in deleting[0]["package_name_prefixes"]]
    settings = Settings.defaults("my-project")
    staging = settings.staging_image("hello")
    package = staging.split(f"/{settings.repository}/", 1)[1]  # staging/hello
    assert any(package.startswith(prefix) for prefix in prefixes), (package, prefixes)
    for service in ("staging-site", "staging", "stagingarea"):
        published = settings.image(service).split(f"/{settings.repository}/", 1)[1]
        assert not any(published.startswith(prefix) for prefix in prefixes), published


def test_service_agents_exist_before_they_are_granted() -> None:
    """Defect 9: enabling an API does not always create its service agent, so every agent
    this configuration grants (or Eventarc needs) is created by
    google_project_service_identity (google-beta), and grants name it through that."""
    mod = module()
    identity = mod.resources[("google_project_service_identity", "agent")]
    assert identity["provider"] == "google-beta"
    assert expression(identity["for_each"]) == "local.service_agents"
    assert "${google_project_service.api}" in identity["depends_on"]
    agents = {key: unquote(value) for key, value in mod.locals["service_agents"].items()}
    assert agents == {"pubsub": "pubsub.googleapis.com", "eventarc": "eventarc.googleapis.com"}
    assert expression(mod.locals["pubsub_service_agent"]) == (
        'google_project_service_identity.agent["pubsub"].member'
    )
    # Cloud Storage's agent: the data source's API call is the one that creates it.
    assert "data.google_storage_project_service_account.gcs" in mod.locals["gcs_service_agent"]
    trigger = mod.resources[("google_eventarc_trigger", "intake")]
    assert "${google_project_service_identity.agent}" in trigger["depends_on"]

    # Grants name agents by agent:NAME in grants.json, resolved through those (see
    # test_grant_members_are_accounts_terraform_makes_or_service_agents).
    agents = {g.who for g in grants_file().grants if g.who.startswith("agent:")}
    assert agents == {"agent:pubsub", "agent:storage"}

    providers = {
        unquote(label)
        for doc in mod.files.values()
        for block in doc.get("provider", [])
        for label in block
        if label != "__is_block__"
    }
    assert {"google", "google-beta"} <= providers
    required = [
        block
        for doc in mod.files.values()
        for terraform in doc.get("terraform", [])
        for block in terraform.get("required_providers", [])
    ]
    assert any("google-beta" in block for block in required), "google-beta is not required"


def test_bind_triggers_may_read_only_a_buckets_metadata() -> None:
    """Defect 5: bind-triggers reads a bucket's location (storage.buckets.get), through a
    custom role holding that one permission; so does build, for api: functions (the
    function's storage trigger is created with it)."""
    custom = grants_file().custom_roles
    assert list(custom) == ["bucketLocationReader"]
    assert custom["bucketLocationReader"].permissions == ("storage.buckets.get",)
    assert ("custom:bucketLocationReader", "project") in grants_of("function:bind-triggers")
    assert {g.who for g in grants_file().grants if g.role.startswith("custom:")} == {
        "function:build",
        "function:bind-triggers",
    }
    role = module().resources[("google_project_iam_custom_role", "custom")]
    assert role["role_id"] == '"${replace(local.prefix, "-", "_")}_${each.key}"'


def test_readme_table_is_the_grants_file() -> None:
    """terraform/README.md's table of who gets what is grants.json's, row for row
    (regenerate it with `python -m orch.grants`)."""
    from orch.grants import readme_table

    readme = (TERRAFORM / "README.md").read_text()
    table = readme_table()
    assert table in readme, "terraform/README.md's IAM table differs from `python -m orch.grants`"
    header = table.splitlines()[0]
    assert readme.count(header) == 1


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
    # Resources with `provider = google-beta` are checked against the beta provider's schema
    # (cdktn-provider-google-beta, whose modules keep the google_ prefix), when installed.
    beta_spec = importlib.util.find_spec("cdktn_provider_google_beta")
    beta_dir = (
        next(iter(beta_spec.submodule_search_locations))
        if beta_spec is not None and beta_spec.submodule_search_locations
        else None
    )
    mod = module()
    problems: list[str] = []
    checked = 0
    for kind, table in (("resource", mod.resources), ("data", mod.data)):
        for (rtype, rname), body in table.items():
            if not rtype.startswith("google_"):
                continue  # archive_file, terraform_data: not the google provider's
            if body.get("provider") == "google-beta":
                if beta_dir is None:
                    continue  # unchecked without the beta schema; terraform validate checks it
                module_name = rtype if kind == "resource" else "data_" + rtype
                where_dir, provider_name = beta_dir, "google-beta"
            else:
                module_name = rtype.removeprefix("google_")
                if kind == "data":
                    module_name = "data_google_" + module_name
                where_dir, provider_name = package_dir, "google"
            classes = _schema_classes(where_dir, module_name)
            if classes is None:
                problems.append(f"{kind} {rtype}: not in the {provider_name} provider")
                continue
            base = _pascal(module_name)
            _check_body(body, classes, base + "Config", f"{rtype}.{rname}", problems, base)
            checked += 1
    for doc in mod.files.values():
        for block in doc.get("provider", []):
            for label, body in block.items():
                if label == "__is_block__":
                    continue
                name = unquote(label)
                if name == "google":
                    classes = _schema_classes(package_dir, "provider")
                    assert classes is not None
                    _check_body(body, classes, "GoogleProvider", "provider.google", problems)
                elif name == "google-beta" and beta_dir is not None:
                    classes = _schema_classes(beta_dir, "provider")
                    assert classes is not None
                    _check_body(body, classes, "GoogleBetaProvider", f"provider.{name}", problems)
    assert checked
    assert not problems, "\n".join(problems)

"""The pipeline's IAM grants (``pipeline/orchestrator/grants.json``), read once for three readers.

Terraform makes them (``terraform/iam.tf`` decodes the same file), ``orch local up`` applies
them to localcloud (``orch/provision.py``), and ``terraform/README.md``'s table is rendered
from them (``python -m orch.grants`` prints it). The file is checked here, as data, so a typo
fails with the field it is in rather than as a grant silently made to nobody; the expansion
(``function:*`` to every function, each who x on pair to one grant keyed ``WHO ROLE ON``) is
the one ``local.iam_grants`` in iam.tf computes, which ``tests/unit/test_terraform.py``
compares by running Terraform on it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

GRANTS_FILE = Path(__file__).resolve().parent.parent / "pipeline" / "orchestrator" / "grants.json"

# Target kinds, and the Terraform resource type that makes grants on each.
RESOURCE_TYPES = {
    "project": "google_project_iam_member",
    "bucket": "google_storage_bucket_iam_member",
    "topic": "google_pubsub_topic_iam_member",
    "repository": "google_artifact_registry_repository_iam_member",
    "account": "google_service_account_iam_member",
    "service": "google_cloud_run_v2_service_iam_member",
    "subscription": "google_pubsub_subscription_iam_member",
}
BUCKETS = ("sources", "records", "build_logs", "code")
AGENTS = {"pubsub": "Pub/Sub service agent", "storage": "Cloud Storage service agent"}
ROLE = re.compile(r"^roles/[A-Za-z0-9_.]+$")
CUSTOM_ID = re.compile(r"^[A-Za-z0-9_.]{3,50}$")  # PREFIX_ + this stays within IAM's 64
FUNCTION_SOURCES = "{function_sources_bucket}"


class GrantsError(ValueError):
    """grants.json says something no grant can mean; the message names the field."""


@dataclass(frozen=True)
class Condition:
    title: str
    description: str
    expression: str  # may hold FUNCTION_SOURCES

    def render(self, function_sources_bucket: str) -> Condition:
        return Condition(
            self.title,
            self.description,
            self.expression.replace(FUNCTION_SOURCES, function_sources_bucket),
        )


@dataclass(frozen=True)
class Grant:
    """One member, one role, one target: a ``*_iam_member`` resource instance."""

    who: str  # function:KEY | account:KEY | agent:NAME
    role: str  # roles/... | custom:ID
    on: str  # project | repository | KIND:KEY
    condition: Condition | None
    why: str

    @property
    def key(self) -> str:
        """Terraform's for_each key, and the name provisioning reports the grant by."""
        return f"{self.who} {self.role} {self.on}"

    @property
    def kind(self) -> str:
        return self.on.split(":", 1)[0]

    @property
    def target(self) -> str | None:
        return self.on.split(":", 1)[1] if ":" in self.on else None


@dataclass(frozen=True)
class CustomRole:
    id: str
    title: str
    description: str
    permissions: tuple[str, ...]

    def role_id(self, prefix: str) -> str:
        """The role id Terraform creates: ``PREFIX_ID`` (role ids allow no hyphen)."""
        return f"{prefix.replace('-', '_')}_{self.id}"


@dataclass(frozen=True)
class Grants:
    custom_roles: dict[str, CustomRole]
    entries: tuple[dict[str, Any], ...]  # the file's grants as written (one README row each)
    grants: tuple[Grant, ...]  # expanded


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise GrantsError(f"{where} must be a non-empty list of strings, not {value!r}")
    return value


def _text(entry: dict[str, Any], field: str, where: str) -> str:
    value = entry.get(field)
    if not isinstance(value, str) or not value.strip():
        raise GrantsError(f"{where}.{field} must be a non-empty string, not {value!r}")
    return value


def parse(data: dict[str, Any], pipeline: dict[str, Any]) -> Grants:
    """The grants ``data`` declares, checked against the names ``pipeline`` (pipeline.json)
    defines: every function, account, topic, trigger and custom role named must exist."""
    functions = set(pipeline["functions"])
    accounts = set(pipeline["service_accounts"])
    topics = set(pipeline["topics"])
    triggers = set(pipeline["triggers"])

    raw_roles = data.get("custom_roles", {})
    if not isinstance(raw_roles, dict):
        raise GrantsError("custom_roles must be an object of role id -> role")
    roles: dict[str, CustomRole] = {}
    for role_id, spec in raw_roles.items():
        where = f"custom_roles.{role_id}"
        if not CUSTOM_ID.match(role_id):
            raise GrantsError(f"{where}: a role id is 3 to 50 letters, digits, '_' or '.'")
        roles[role_id] = CustomRole(
            role_id,
            _text(spec, "title", where),
            _text(spec, "description", where),
            tuple(_strings(spec.get("permissions"), f"{where}.permissions")),
        )

    entries = data.get("grants")
    if not isinstance(entries, list) or not entries:
        raise GrantsError("grants must be a non-empty list")
    expanded: list[Grant] = []
    for index, entry in enumerate(entries):
        where = f"grants[{index}]"
        if not isinstance(entry, dict):
            raise GrantsError(f"{where} must be an object")
        unknown = set(entry) - {"who", "role", "on", "condition", "why"}
        if unknown:
            raise GrantsError(f"{where} has unknown fields {sorted(unknown)}")
        role = _text(entry, "role", where)
        if role.startswith("custom:"):
            if role.removeprefix("custom:") not in roles:
                raise GrantsError(f"{where}.role: no custom role {role!r} in custom_roles")
        elif not ROLE.match(role):
            raise GrantsError(f"{where}.role: {role!r} is neither roles/NAME nor custom:ID")
        why = _text(entry, "why", where)
        if "|" in why or "\n" in why:
            raise GrantsError(f"{where}.why: one line without '|' (it is a README table cell)")
        members: list[str] = []
        for who in _strings(entry.get("who"), f"{where}.who"):
            kind, _, name = who.partition(":")
            if who == "function:*":
                members += [f"function:{key}" for key in pipeline["functions"]]
            elif (
                (kind == "function" and name in functions)
                or (kind == "account" and name in accounts)
                or (kind == "agent" and name in AGENTS)
            ):
                members.append(who)
            else:
                raise GrantsError(
                    f"{where}.who: {who!r} is not function:KEY, function:*, account:KEY or "
                    f"agent:{'|'.join(AGENTS)} with a key pipeline.json defines"
                )
        targets = _strings(entry.get("on"), f"{where}.on")
        known = {
            "bucket": set(BUCKETS),
            "topic": topics,
            "account": accounts,
            "service": functions,
            "subscription": triggers,
        }
        for on in targets:
            kind, _, name = on.partition(":")
            if on in ("project", "repository"):
                continue
            if name not in known.get(kind, ()):
                raise GrantsError(
                    f"{where}.on: {on!r} is not project, repository, or KIND:KEY with "
                    f"KIND one of {sorted(known)} and a KEY pipeline.json defines"
                )
        condition = None
        if "condition" in entry:
            spec = entry["condition"]
            if targets != ["project"] or not isinstance(spec, dict):
                raise GrantsError(f"{where}.condition: an object, on project grants only")
            condition = Condition(
                _text(spec, "title", f"{where}.condition"),
                spec.get("description", ""),
                _text(spec, "expression", f"{where}.condition"),
            )
        for who in members:
            for on in targets:
                expanded.append(Grant(who, role, on, condition, why))
    keys = [g.key for g in expanded]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise GrantsError(f"grants: declared more than once: {twice}")
    return Grants(roles, tuple(entries), tuple(expanded))


@cache
def load() -> Grants:
    from orchestrator.config import pipeline

    return parse(json.loads(GRANTS_FILE.read_text()), pipeline())


# ------------------------------------------------------------------ README


def _who(who: str, pipeline: dict[str, Any]) -> str:
    kind, _, name = who.partition(":")
    if who == "function:*":
        return "every function's account (`PREFIX-KEY`)"
    if kind == "function":
        return f"`PREFIX-{name}`"
    if kind == "account":
        return f"`PREFIX-{pipeline['service_accounts'][name]}`"
    return AGENTS[name]


def _on(on: str, pipeline: dict[str, Any], condition: Condition | None) -> str:
    kind, _, name = on.partition(":")
    if on == "project":
        return f"project, with a condition: {condition.title}" if condition else "project"
    if on == "repository":
        return f"`{pipeline['repository']}` repository"
    if kind == "bucket":
        return f"{name.replace('_', ' ')} bucket"
    if kind == "topic":
        return f"`{pipeline['topics'][name]}` topic"
    if kind == "account":
        return f"`PREFIX-{pipeline['service_accounts'][name]}`"
    if kind == "service":
        return f"`PREFIX-{name}` function"
    return f"the `PREFIX-{name}` trigger's subscription"


def readme_table(grants: Grants | None = None) -> str:
    """terraform/README.md's table of who gets what: a row per entry of the file, then the
    runtime account's roles, which are a Terraform variable."""
    from orchestrator.config import pipeline

    p = pipeline()
    grants = grants or load()
    rows = ["| who | role | on | why |", "|---|---|---|---|"]
    for entry in grants.entries:
        condition = None
        if "condition" in entry:
            condition = Condition(entry["condition"]["title"], "", "")
        role = entry["role"]
        if role.startswith("custom:"):
            custom = grants.custom_roles[role.removeprefix("custom:")]
            permissions = ", ".join(f"`{x}`" for x in custom.permissions)
            role_cell = f"`PREFIX_{custom.id}` (custom: {permissions} only)"
        else:
            role_cell = f"`{role}`"
        rows.append(
            "| "
            + " | ".join(
                [
                    ", ".join(_who(w, p) for w in entry["who"]),
                    role_cell,
                    ", ".join(_on(o, p, condition) for o in entry["on"]),
                    entry["why"],
                ]
            )
            + " |"
        )
    rows.append(
        "| `PREFIX-runtime` | `runtime_roles` (none by default) | project | what your deployed "
        "functions themselves may do (a Terraform variable, not in grants.json) |"
    )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(readme_table(), end="")

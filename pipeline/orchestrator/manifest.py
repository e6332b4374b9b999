"""The function manifest: ``function.yaml``, object metadata and deploy-request fields.

A deployment's settings come from three places, weakest first: the optional
``function.yaml`` at the archive root, the source object's Cloud Storage metadata, and the
fields of a deploy request. All three are checked against one JSON Schema,
``pipeline/orchestrator/schemas/deploy.schema.json``, so the rules live in one file that terraform
docs, editors and this module share. Every problem becomes a :class:`ManifestError` whose
message names the key and the value, because the person reading it is the one who uploaded
the archive and needs to know what to change, not where the code failed.

Choices made here (the design leaves them open):

- ``env`` from a stronger source is merged key by key into a weaker one (like
  ``gcloud run deploy --update-env-vars``); every other field is replaced, ``triggers``
  included.
- ``runtime`` is one the pinned builder has (``runtimes.py``: python310..python313,
  nodejs12..nodejs24), and it pins the language's version on Google Cloud too
  (``GOOGLE_PYTHON_VERSION``, ``GOOGLE_NODEJS_VERSION``). It must be the language of the
  source (``main.py`` for Python, ``package.json`` for Node.js, at the archive root). Not
  given, a Python source gets ``None``, meaning "the builder's Python", as the design
  says; a Node.js source gets ``nodejs22`` (``runtimes.DEFAULT_RUNTIMES``), so a resolved
  manifest always says which language it deploys; a source with both files must name one.
- ``api: functions`` deploys through the Cloud Functions API v2 (``functions_api.py``),
  which asks more of a manifest than Cloud Run does, checked here so the upload is refused
  before anything is built: a ``runtime`` (CreateFunction requires one), a service name of
  at least 4 characters (a function id is 4 to 63), at most one trigger (a function has one
  ``event_trigger``; use ``api: run`` for several), a signature type that matches it
  (Cloud Functions sets ``GOOGLE_FUNCTION_SIGNATURE_TYPE`` itself: ``cloudevent`` with a
  trigger, ``http`` without) and, with a trigger, a timeout of at most 540 s (event-driven
  functions' limit, https://cloud.google.com/functions/docs/configuring/timeout).
- ``Source.parse`` follows gsutil: a trailing ``#DIGITS`` is the generation; any other ``#``
  is part of the object name.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import os
import re
import unicodedata
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import IO, Any

import yaml

from orchestrator import runtimes
from orchestrator.bounds import InputTooComplex, check_yaml, clip, loads_json

MANIFEST_NAME = "function.yaml"
MAX_MANIFEST_BYTES = 64 * 1024
# A deploy request names an archive and settings that must fit Workflows' 32 KiB execution
# argument (https://cloud.google.com/workflows/quotas); twice that is room for the JSON.
MAX_REQUEST_BYTES = 64 * 1024
MAX_GENERATION = 2**63 - 1  # Cloud Storage generations are int64

DEFAULTS: dict[str, Any] = {
    "signature_type": "http",
    "runtime": None,
    "min_instances": 0,
    "max_instances": 10,
    "concurrency": 80,
    "timeout_seconds": 300,
    "allow_unauthenticated": False,
    "api": "run",
}

# Cloud Run's rule for service names (https://cloud.google.com/run/docs/deploying#service).
SERVICE_RE = re.compile(r"[a-z]([-a-z0-9]{0,47}[a-z0-9])?")
SERVICE_MAX = 49
SERVICE_RULE = (
    "a Cloud Run service name uses lowercase letters, digits and '-', starts with a letter, "
    "does not end with '-', and has at most 49 characters"
)
BUCKET_RE = re.compile(r"[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9]")

STORAGE_EVENT_TYPES = {
    "finalized": "google.cloud.storage.object.v1.finalized",
    "deleted": "google.cloud.storage.object.v1.deleted",
    "metadataUpdated": "google.cloud.storage.object.v1.metadataUpdated",
}
PUBSUB_EVENT_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"


class ManifestError(ValueError):
    """A manifest, override or source that cannot be used, said so a person can fix it.

    ``field`` is the dotted path of the offending key (``"triggers[0].pubsub.topic"``), or
    ``None`` when the problem is the document as a whole (bad YAML, not a mapping).
    ``problems`` lists every problem found, the first of which is ``field``'s.
    """

    def __init__(
        self, message: str, field: str | None = None, problems: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.field = field
        self.problems = problems or (message,)


# --------------------------------------------------------------------------- schema


@cache
def schema() -> dict[str, Any]:
    """The deploy schema document (root = manifest, ``$defs/deployRequest`` = request)."""
    text = resources.files("orchestrator.schemas").joinpath("deploy.schema.json").read_text("utf-8")
    return json.loads(text)


@cache
def _validator(kind: str) -> Any:
    """A validator for ``$defs/<kind>`` that resolves ``$ref`` against the whole document."""
    from jsonschema import Draft202012Validator

    root = schema()
    return Draft202012Validator(root).evolve(schema=root["$defs"][kind])


def _resolve_ref(ref: str) -> dict[str, Any]:
    node: Any = schema()
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _known_keys(node: Mapping[str, Any]) -> list[str]:
    keys = list(node.get("properties", {}))
    if "$ref" in node:
        keys += _known_keys(_resolve_ref(node["$ref"]))
    return keys


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _join(base: str, key: str) -> str:
    return f"{base}.{key}" if base else key


def _describe(error: Any) -> list[tuple[str | None, str, str]]:
    """Turn one jsonschema error into (field, where, message) a person can act on.

    ``field`` is the offending key's path; ``where`` prefixes the message and is the
    enclosing object for problems that already quote the key ("unknown key 'servce'").
    """
    where = _path(error.absolute_path)
    validator = error.validator
    schema_path = list(error.absolute_schema_path)
    if validator in ("additionalProperties", "unevaluatedProperties"):
        known = _known_keys(error.schema)
        out: list[tuple[str | None, str, str]] = []
        for key in sorted(k for k in error.instance if k not in known):
            hint = difflib.get_close_matches(str(key), known, n=1)
            suffix = f" (did you mean '{hint[0]}'?)" if hint else ""
            out.append((_join(where, str(key)), where, f"unknown key '{key}'{suffix}"))
        # jsonschema < 4.18 also reports known keys whose value failed as "unevaluated";
        # their own error says what is wrong, so only truly unknown keys are reported here.
        return out
    if "propertyNames" in schema_path:
        name = error.instance
        if validator == "not":
            return [(_join(where, name), where, f"'{name}' is reserved: Cloud Run sets it")]
        rule = error.schema.get("description", "a valid name")
        return [(_join(where, name), where, f"'{name}' is not {rule}")]
    if validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return [(_join(where, k), where, f"missing required key '{k}'") for k in missing]
    if validator in ("minProperties", "maxProperties") and "triggers" in schema_path:
        keys = ", ".join(f"'{k}'" for k in error.instance) or "none"
        message = f"a trigger has exactly one of 'pubsub' or 'storage' (got {keys})"
        return [(where, where, message)]
    if validator == "maxProperties":
        count = len(error.instance)
        limit = error.validator_value
        message = f"{count:,} entries; at most {limit:,} are allowed"
        if where == "env":
            message += " (Cloud Run's limit on environment variables)"
        return [(where, where, message)]
    if validator == "maxLength" and isinstance(error.instance, str):
        size = len(error.instance)
        return [(where, where, f"{size:,} characters; at most {error.validator_value:,}")]
    if validator == "uniqueItems":
        return [(where, where, "the same trigger is listed twice")]
    if validator == "pattern":
        rule = error.schema.get("description", f"matching {error.validator_value}")
        return [(where, where, f"{error.instance!r} is not {rule}")]
    if validator == "enum" and "description" in error.schema:
        shown = clip(repr(error.instance), 100)
        return [(where, where, f"{shown} is not {error.schema['description']}")]
    if validator == "type":
        wanted = error.validator_value
        article = "an" if str(wanted)[0] in "aeiou" else "a"
        shown = clip(repr(error.instance), 100)
        return [(where or None, where, f"expected {article} {wanted}, got {shown}")]
    return [(where or None, where, clip(error.message, 300))]


def _check(kind: str, document: Any, origin: str) -> None:
    """Validate ``document`` against ``$defs/<kind>``; raise one error listing all problems."""
    errors = sorted(  # document order: keys by name, list items by index, parents first
        _validator(kind).iter_errors(document),
        key=lambda e: ([(isinstance(p, int), p) for p in e.absolute_path], e.validator),
    )
    problems: list[tuple[str | None, str, str]] = []
    for error in errors:
        for item in _describe(error):
            if item not in problems:
                problems.append(item)
    if not problems and errors:  # never pass an invalid document for want of a message
        problems = [(None, _path(e.absolute_path), e.message) for e in errors]
    if not problems:
        return
    texts = tuple(f"{where}: {message}" if where else message for _, where, message in problems)
    raise ManifestError(f"{origin}: " + "; ".join(texts), problems[0][0], texts)


def validate_manifest(document: Any, origin: str = MANIFEST_NAME) -> None:
    """Check manifest fields (function.yaml, metadata or request overrides) against the schema."""
    _check("manifest", document, origin)


def validate_request(document: Any, origin: str = "deploy request") -> None:
    """Check a deploy request (``source`` plus manifest fields) against the schema."""
    _check("deployRequest", document, origin)


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Trigger:
    """One event trigger besides HTTP: a Pub/Sub topic or a Cloud Storage bucket event."""

    kind: str  # "pubsub" | "storage"
    topic: str | None = None
    bucket: str | None = None
    event: str | None = None

    @classmethod
    def from_dict(cls, item: Mapping[str, Any]) -> Trigger:
        """From the manifest form ``{pubsub: {topic}}`` / ``{storage: {bucket, event}}``."""
        if "pubsub" in item:
            return cls("pubsub", topic=item["pubsub"]["topic"])
        spec = item["storage"]
        return cls("storage", bucket=spec["bucket"], event=spec.get("event", "finalized"))

    def to_dict(self) -> dict[str, Any]:
        """The manifest form, so a resolved manifest can travel as JSON (workflow args)."""
        if self.kind == "pubsub":
            return {"pubsub": {"topic": self.topic}}
        return {"storage": {"bucket": self.bucket, "event": self.event}}

    @property
    def event_type(self) -> str:
        """The CloudEvents type Eventarc filters on for this trigger."""
        if self.kind == "pubsub":
            return PUBSUB_EVENT_TYPE
        return STORAGE_EVENT_TYPES[self.event or "finalized"]

    def trigger_id(self, service: str) -> str:
        """A stable Eventarc trigger id for this trigger on ``service``.

        Redeploying the same manifest must find (not duplicate) its triggers, and two
        triggers of one service must not collide, so the id is the readable service name
        plus a hash of service and trigger content, cut to Eventarc's 63 characters.
        """
        content = json.dumps([service, self.to_dict()], sort_keys=True)
        digest = hashlib.sha256(content.encode()).hexdigest()[:10]
        suffix = f"-{self.kind}-{digest}"
        prefix = re.sub(r"[^a-z0-9-]+", "-", service.lower()).strip("-")
        prefix = prefix[: 63 - len(suffix)].rstrip("-")
        if not prefix or not prefix[0].isalpha():
            prefix = ("t-" + prefix)[: 63 - len(suffix)].rstrip("-")
        return prefix + suffix


@dataclass(frozen=True)
class Manifest:
    """A resolved manifest: every field set, every rule checked."""

    service: str
    entry_point: str
    signature_type: str
    runtime: str | None
    env: dict[str, str]
    min_instances: int
    max_instances: int
    concurrency: int
    timeout_seconds: int
    allow_unauthenticated: bool
    triggers: tuple[Trigger, ...] = ()
    api: str = "run"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, in the manifest's own shape (valid against the schema)."""
        out: dict[str, Any] = {
            "service": self.service,
            "entry_point": self.entry_point,
            "signature_type": self.signature_type,
            "env": dict(self.env),
            "min_instances": self.min_instances,
            "max_instances": self.max_instances,
            "concurrency": self.concurrency,
            "timeout_seconds": self.timeout_seconds,
            "allow_unauthenticated": self.allow_unauthenticated,
            "triggers": [t.to_dict() for t in self.triggers],
        }
        if self.runtime is not None:
            out["runtime"] = self.runtime
        if self.api != "run":  # the default stays implicit: older records read the same
            out["api"] = self.api
        return out


@dataclass(frozen=True)
class Source:
    """A source archive in Cloud Storage, optionally pinned to one generation."""

    bucket: str
    object: str
    generation: int | None = None

    def uri(self) -> str:
        """``gs://bucket/object`` with ``#generation`` when pinned (gsutil's notation)."""
        base = f"gs://{self.bucket}/{self.object}"
        return base if self.generation is None else f"{base}#{self.generation}"

    @classmethod
    def parse(cls, text: str) -> Source:
        """Parse ``gs://BUCKET/OBJECT[#GENERATION]``, naming the part that is wrong."""
        if not isinstance(text, str):
            raise ManifestError(f"source: expected a gs:// URI, got {text!r}", "source")
        if not text.startswith("gs://"):
            raise ManifestError(
                f"source: {text!r} is not a Cloud Storage URI: expected gs://BUCKET/OBJECT",
                "source",
            )
        rest = text[len("gs://") :]
        bucket, slash, name = rest.partition("/")
        if not bucket:
            raise ManifestError(f"source: {text!r} names no bucket", "source")
        if not BUCKET_RE.fullmatch(bucket) or ".." in bucket or bucket.startswith("goog"):
            raise ManifestError(
                f"source: {bucket!r} is not a valid bucket name: 3 to 222 characters of "
                "lowercase letters, digits, '-', '_' and '.', starting and ending with a "
                "letter or digit",
                "source",
            )
        generation: int | None = None
        match = re.fullmatch(r"(.*)#(\d+)", name, re.DOTALL)
        if match:
            name, generation = match.group(1), int(match.group(2))
            if generation <= 0:
                raise ManifestError(
                    f"source: generation {generation} in {text!r} is not a positive number",
                    "source",
                )
            if generation > MAX_GENERATION:
                raise ManifestError(
                    f"source: generation {generation} is larger than any Cloud Storage "
                    f"generation (at most {MAX_GENERATION}, a signed 64-bit number)",
                    "source",
                )
        if not slash or not name:
            raise ManifestError(
                f"source: {text!r} names no object: expected gs://BUCKET/OBJECT", "source"
            )
        if "\r" in name or "\n" in name:
            raise ManifestError("source: object names cannot contain line breaks", "source")
        if len(name.encode()) > 1024:
            raise ManifestError("source: object name is longer than 1024 bytes", "source")
        return cls(bucket, name, generation)


# --------------------------------------------------------------------------- reading


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys: PyYAML would silently keep the last one."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if isinstance(key, (str, int, float, bool)) and key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (line {mark.line + 1})", mark
            )
        if isinstance(key, (str, int, float, bool)):
            seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def load_manifest_yaml(text: str | bytes) -> dict[str, Any]:
    """Parse function.yaml; an empty file is an empty manifest.

    Only the shape is checked here (a mapping with string keys); the schema is applied by
    :func:`resolve`, which knows what overrides it.
    """
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"{MANIFEST_NAME}: {len(raw)} bytes is more than the limit of {MAX_MANIFEST_BYTES}"
        )
    try:
        check_yaml(raw, MANIFEST_NAME)
        data = yaml.load(raw, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except InputTooComplex as exc:
        raise ManifestError(str(exc)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ManifestError(
            f"{MANIFEST_NAME}: invalid YAML{where}: {exc.problem or exc.context}"
        ) from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{MANIFEST_NAME}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ManifestError(
            f"{MANIFEST_NAME}: expected a mapping of keys to values, got {type(data).__name__}"
        )
    for key in data:
        if not isinstance(key, str):
            raise ManifestError(
                f"{MANIFEST_NAME}: key {key!r} is not a string (quote it in YAML)", str(key)
            )
    return data


def read_manifest_from_zip(
    path_or_bytes: str | os.PathLike[str] | bytes | IO[bytes],
) -> dict[str, Any] | None:
    """function.yaml at the archive root, parsed; ``None`` when the archive has none.

    Reads one member through the zip's central directory, never unpacking the archive, and
    reads at most the size limit (plus one byte) whatever the directory claims.
    """
    source: Any = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    try:
        with zipfile.ZipFile(source) as archive:
            try:
                info = archive.getinfo(MANIFEST_NAME)
            except KeyError:
                return None
            if info.is_dir():
                return None
            if info.file_size > MAX_MANIFEST_BYTES:
                raise ManifestError(
                    f"{MANIFEST_NAME}: {info.file_size} bytes is more than the limit of "
                    f"{MAX_MANIFEST_BYTES}"
                )
            with archive.open(info) as member:
                data = member.read(MAX_MANIFEST_BYTES + 1)
    except zipfile.BadZipFile as exc:
        raise ManifestError(f"the source archive is not a valid zip file: {exc}") from None
    except (RuntimeError, NotImplementedError) as exc:  # encrypted / unsupported compression
        raise ManifestError(f"{MANIFEST_NAME}: cannot be read from the archive: {exc}") from None
    return load_manifest_yaml(data)


# --------------------------------------------------------------------------- resolving


def service_from_archive(archive_name: str) -> str:
    """A Cloud Run service name from an archive's name: ``My Func_v2.zip`` -> ``my-func-v2``.

    Basename without ``.zip``, accents folded to ASCII, lowercased, every run of other
    characters turned into one ``-``, leading non-letters dropped, cut to 49 characters.
    """
    base = archive_name.replace("\\", "/").rsplit("/", 1)[-1]
    if base.lower().endswith(".zip"):
        base = base[: -len(".zip")]
    folded = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode().lower()
    name = re.sub(r"[^a-z0-9]+", "-", folded)
    name = re.sub(r"^[^a-z]+", "", name)
    name = name[:SERVICE_MAX].rstrip("-")
    if not name:
        raise ManifestError(
            f"service: cannot derive a service name from the archive name {archive_name!r}; "
            f"set 'service' in {MANIFEST_NAME} ({SERVICE_RULE})",
            "service",
        )
    return name


def _merge(manifest: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(manifest)
    for key, value in overrides.items():
        if key == "env" and isinstance(merged.get("env"), dict):
            merged["env"] = {**merged["env"], **value}
        else:
            merged[key] = value
    return merged


def resolve(
    manifest: Mapping[str, Any],
    overrides: Mapping[str, Any],
    archive_name: str,
    *,
    overrides_origin: str = "overrides",
    languages: frozenset[str] | None = None,
) -> Manifest:
    """Validate both layers, let ``overrides`` win, fill in defaults: the settings to deploy.

    ``overrides`` holds object-metadata fields (see :func:`object_metadata_overrides`)
    and/or deploy-request fields without ``source``; merge those two first if both apply.
    ``overrides_origin`` names them in error messages ("object metadata", "deploy request").
    ``languages`` are those the source has an entry file of (``archive.Contents``); the
    runtime must be one of them, and is their default when not given. ``None`` (no
    archive at hand, as when a step reads a resolved manifest back) checks nothing.
    """
    validate_manifest(dict(manifest), MANIFEST_NAME)
    validate_manifest(dict(overrides), overrides_origin)
    given = _merge(manifest, overrides)
    merged = {**DEFAULTS, **given}
    service = merged.get("service") or service_from_archive(archive_name)
    if not SERVICE_RE.fullmatch(service):  # the schema checked given names; this is belt
        raise ManifestError(f"service: {service!r} is not valid: {SERVICE_RULE}", "service")
    entry_point = merged.get("entry_point") or service.replace("-", "_")
    if merged["min_instances"] > merged["max_instances"]:
        raise ManifestError(
            f"min_instances: {merged['min_instances']} is more than max_instances "
            f"({merged['max_instances']})",
            "min_instances",
        )
    triggers = tuple(Trigger.from_dict(t) for t in merged.get("triggers") or ())
    if languages is not None:
        merged["runtime"] = _runtime_for(merged["runtime"], languages)
    signature_type = merged["signature_type"]
    if merged["api"] == "functions":
        signature_type = _functions_rules(merged, given.get("signature_type"), service, triggers)
    return Manifest(
        service=service,
        entry_point=entry_point,
        signature_type=signature_type,
        runtime=merged["runtime"],
        env=dict(merged.get("env") or {}),
        min_instances=merged["min_instances"],
        max_instances=merged["max_instances"],
        concurrency=merged["concurrency"],
        timeout_seconds=merged["timeout_seconds"],
        allow_unauthenticated=merged["allow_unauthenticated"],
        triggers=triggers,
        api=merged["api"],
    )


def _runtime_for(runtime: str | None, languages: frozenset[str]) -> str | None:
    """The runtime a source with entry files of ``languages`` deploys on: ``runtime``
    when it is one of their languages, else the one language's default."""
    if runtime is not None:
        language = runtimes.language_of(runtime)
        if language not in languages:
            entry = runtimes.ENTRY_FILES[language]
            name = runtimes.LANGUAGE_NAMES[language]
            has = " and ".join(runtimes.ENTRY_FILES[lang] for lang in sorted(languages))
            what = f"it has {has}" if has else "it has neither"
            raise ManifestError(
                f"runtime: {runtime!r} is a {name} runtime, but the archive has no {entry} at "
                f"its root ({what}): name a runtime of the source's language, or add {entry}",
                "runtime",
            )
        return runtime
    if len(languages) > 1:
        raise ManifestError(
            "runtime: the archive has both main.py (Python) and package.json (Node.js) at its "
            f"root; set runtime to say which it is ({runtimes.listed()})",
            "runtime",
        )
    return runtimes.DEFAULT_RUNTIMES[next(iter(languages))] if languages else None


# Event-driven functions run 540 s at most (https://cloud.google.com/functions/docs/configuring/timeout).
FUNCTIONS_EVENT_TIMEOUT = 540
FUNCTION_ID_MIN = 4  # CreateFunctionRequest.function_id: 4 to 63 characters


def _functions_rules(
    merged: Mapping[str, Any], given: Any, service: str, triggers: tuple[Trigger, ...]
) -> str:
    """What ``api: functions`` asks beyond the schema (see the module's docstring); the
    signature type the function gets. ``given`` is the signature type as written, if it
    was: the default ``http`` gives way to ``cloudevent`` when there is a trigger."""
    why = "with api: functions"
    if not merged.get("runtime"):
        raise ManifestError(
            f"runtime: required {why}: the Cloud Functions API builds a function only on a "
            f"named runtime ({runtimes.listed(runtimes.PYTHON)})",
            "runtime",
        )
    if len(service) < FUNCTION_ID_MIN:
        raise ManifestError(
            f"service: {service!r} is too short {why}: a function id has 4 to 63 characters",
            "service",
        )
    if len(triggers) > 1:
        raise ManifestError(
            f"triggers: {len(triggers)} triggers; a function deployed {why} has at most one "
            "(its event_trigger): use api: run for several",
            "triggers",
        )
    wanted = "cloudevent" if triggers else "http"
    if given is not None and given != wanted:
        kind = "an event trigger" if triggers else "no trigger"
        raise ManifestError(
            f"signature_type: {given!r} does not fit a function {why} with {kind}: Cloud "
            f"Functions runs it as {wanted!r}",
            "signature_type",
        )
    if triggers and merged["timeout_seconds"] > FUNCTIONS_EVENT_TIMEOUT:
        raise ManifestError(
            f"timeout_seconds: {merged['timeout_seconds']} is more than the "
            f"{FUNCTIONS_EVENT_TIMEOUT} s an event-driven function may run {why}",
            "timeout_seconds",
        )
    return wanted


def parse_request(document: Any) -> tuple[Source, dict[str, Any]]:
    """A deploy request (JSON text, bytes or a dict) -> its source and its override fields."""
    if isinstance(document, (str, bytes)):
        try:
            document = loads_json(document, "deploy request", MAX_REQUEST_BYTES)
        except InputTooComplex as exc:
            raise ManifestError(str(exc)) from None
        except ValueError as exc:
            raise ManifestError(f"deploy request: not valid JSON: {exc}") from None
    validate_request(document)
    fields = dict(document)
    source = Source.parse(fields.pop("source"))
    return source, fields


def deployment_id(
    bucket: str, object: str, generation: int, overrides: Mapping[str, Any] | None = None
) -> str:
    """The deployment of one object generation: ``d-`` + 16 hex digits of a SHA-256.

    Deterministic, so the same upload delivered twice (at-least-once events, a retried
    request) is the same deployment; short and ``[a-z0-9-]``, so it is a valid Pub/Sub
    ordering key, label value, Workflows execution argument and object name part. A deploy
    request's fields (``overrides``) take part, so asking for the same archive with other
    settings is a new deployment while a redelivered request is not.
    """
    key: list[Any] = [bucket, object, int(generation)]
    if overrides:
        key.append(dict(overrides))
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return "d-" + hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- metadata

_STRING_FIELDS = ("service", "entry_point", "signature_type", "runtime", "api")
_INT_FIELDS = ("min_instances", "max_instances", "concurrency", "timeout_seconds")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
METADATA_BYTES = 8 * 1024  # all of an object's custom metadata (Cloud Storage's limit)
_KNOWN_METADATA = (*_STRING_FIELDS, *_INT_FIELDS, "allow_unauthenticated", "env", "triggers")


def _metadata_json(text: str, where: str, key: str, kind: str) -> Any:
    """A metadata value written as JSON, read within its bounds; errors name the key."""
    try:
        return loads_json(text, f"{where}: {key}", METADATA_BYTES)
    except InputTooComplex as exc:
        raise ManifestError(str(exc), key) from None
    except ValueError as exc:
        raise ManifestError(f"{where}: {key}: not a valid JSON {kind}: {exc}", key) from None


def _parse_env(value: str, where: str) -> dict[str, Any]:
    text = value.strip()
    if text.startswith("{"):
        env = _metadata_json(text, where, "env", "object")
        if not isinstance(env, dict):
            raise ManifestError(f"{where}: env: expected a JSON object", "env")
        return env
    env = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        name, eq, val = pair.partition("=")
        if not eq:
            raise ManifestError(
                f"{where}: env: {pair!r} is not NAME=VALUE (use a JSON object for values "
                "with commas)",
                "env",
            )
        env[name.strip()] = val
    return env


def _parse_triggers(value: str, where: str) -> list[Any]:
    """JSON (the manifest's list form) or the short form ``pubsub:TOPIC,storage:BUCKET[:EVENT]``."""
    text = value.strip()
    if text.startswith("["):
        return _metadata_json(text, where, "triggers", "list")
    out: list[Any] = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        kind, _, rest = item.partition(":")
        if kind == "pubsub" and rest:
            out.append({"pubsub": {"topic": rest}})
        elif kind == "storage" and rest:
            bucket, _, event = rest.partition(":")
            out.append({"storage": {"bucket": bucket, "event": event or "finalized"}})
        else:
            raise ManifestError(
                f"{where}: triggers: {item!r} is not pubsub:TOPIC or storage:BUCKET[:EVENT]",
                "triggers",
            )
    return out


def object_metadata_overrides(
    metadata: Mapping[str, str] | None, origin: str = "object metadata"
) -> dict[str, Any]:
    """Cloud Storage custom metadata (strings) -> typed manifest override fields.

    Keys match case-insensitively with ``-`` or ``_`` (HTTP headers such as
    ``x-goog-meta-max-instances: 3`` arrive as ``max-instances``). Unknown keys are ignored,
    because other tools share the metadata; a known key with a bad value is an error.
    """
    out: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for raw_key, raw_value in (metadata or {}).items():
        key = str(raw_key).strip().lower().replace("-", "_")
        if key not in _KNOWN_METADATA:
            continue
        if key in seen:
            raise ManifestError(
                f"{origin}: {key}: given twice (as '{seen[key]}' and '{raw_key}')", key
            )
        seen[key] = str(raw_key)
        value = str(raw_value)
        if key in _STRING_FIELDS:
            out[key] = value.strip()
        elif key in _INT_FIELDS:
            try:
                out[key] = int(value.strip())
            except ValueError:
                raise ManifestError(f"{origin}: {key}: {value!r} is not an integer", key) from None
        elif key == "allow_unauthenticated":
            word = value.strip().lower()
            if word not in _TRUE | _FALSE:
                raise ManifestError(f"{origin}: {key}: {value!r} is not true or false", key)
            out[key] = word in _TRUE
        elif key == "env":
            out[key] = _parse_env(value, origin)
        else:
            out[key] = _parse_triggers(value, origin)
    validate_manifest(out, origin)
    return out

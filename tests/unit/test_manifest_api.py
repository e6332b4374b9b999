"""``api: run | functions``: the manifest field, its three sources, and what the Cloud
Functions path asks of a manifest before anything is built."""

from __future__ import annotations

import json

import pytest

from orchestrator import manifest as m
from orchestrator.config import Settings
from orchestrator.manifest import ManifestError, parse_request, resolve
from orchestrator.step import Context, Deployment

FUNCTION = {"api": "functions", "runtime": "python311"}


def test_api_defaults_to_run_and_stays_out_of_the_resolved_document():
    got = resolve({}, {}, "hello.zip")
    assert got.api == "run"
    assert "api" not in got.to_dict()  # records of deployments made before it read the same
    assert m.schema()["$defs"]["manifestFields"]["properties"]["api"]["default"] == "run"


def test_api_functions_round_trips_through_the_workflow_argument():
    got = resolve(FUNCTION, {}, "hello.zip")
    assert got.api == "functions"
    document = got.to_dict()
    assert document["api"] == "functions"
    m.validate_manifest(document)
    assert resolve(document, {}, "other.zip") == got  # what each step reads back


def test_an_unknown_api_is_refused_naming_the_key_and_the_choices():
    with pytest.raises(ManifestError) as caught:
        resolve({"api": "lambda"}, {}, "hello.zip")
    assert caught.value.field == "api"
    assert "'lambda' is not run (deploy through the Cloud Run Admin API)" in str(caught.value)


def test_object_metadata_sets_the_api():
    overrides = m.object_metadata_overrides({"api": "functions", "runtime": "python311"})
    assert overrides == FUNCTION
    assert resolve({}, overrides, "hello.zip").api == "functions"
    with pytest.raises(ManifestError) as caught:
        m.object_metadata_overrides({"API": "cloudrun"})
    assert caught.value.field == "api"
    assert str(caught.value).startswith("object metadata: api:")


def test_a_deploy_request_overrides_the_manifest_s_api():
    source, fields = parse_request(
        json.dumps({"source": "gs://src/fn.zip#3", "api": "run"}).encode()
    )
    assert fields == {"api": "run"}
    assert resolve(FUNCTION, fields, source.object).api == "run"


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"api": "functions"}, "runtime", "runtime: required with api: functions"),
        ({**FUNCTION, "service": "abc"}, "service", "a function id has 4 to 63"),
        (
            {
                **FUNCTION,
                "triggers": [{"pubsub": {"topic": "orders"}}, {"storage": {"bucket": "uploads"}}],
            },
            "triggers",
            "2 triggers; a function deployed with api: functions has at most one",
        ),
        ({**FUNCTION, "signature_type": "cloudevent"}, "signature_type", "with no trigger"),
        (
            {**FUNCTION, "signature_type": "http", "triggers": [{"pubsub": {"topic": "orders"}}]},
            "signature_type",
            "Cloud Functions runs it as 'cloudevent'",
        ),
        (
            {**FUNCTION, "timeout_seconds": 541, "triggers": [{"pubsub": {"topic": "orders"}}]},
            "timeout_seconds",
            "541 is more than the 540 s an event-driven function may run",
        ),
    ],
)
def test_what_the_functions_api_refuses_is_refused_before_the_build(fields, field, words):
    with pytest.raises(ManifestError) as caught:
        resolve(fields, {}, "hello.zip")
    assert caught.value.field == field
    assert words in str(caught.value)
    # The same fields deploy through Cloud Run, which has none of these limits (the
    # signature type aside, which Cloud Run takes as written).
    run = {k: v for k, v in fields.items() if k != "api"}
    assert resolve(run, {}, "hello.zip").api == "run"


def test_a_trigger_makes_a_function_a_cloudevent_one():
    got = resolve({**FUNCTION, "triggers": [{"pubsub": {"topic": "orders"}}]}, {}, "hello.zip")
    assert got.signature_type == "cloudevent"
    assert resolve(FUNCTION, {}, "hello.zip").signature_type == "http"
    assert resolve({**FUNCTION, "timeout_seconds": 3600}, {}, "hello.zip").timeout_seconds == 3600


def _deployment(fields: dict) -> Deployment:
    resolved = resolve(fields, {}, "hello-fn.zip")
    return Deployment(
        "d-1", resolved.service, "gs://src/hello-fn.zip#7", "src", "hello-fn.zip", 7, resolved
    )


def test_the_function_carries_the_manifest():
    """What the build step creates or updates: every manifest field has its place."""
    from google.cloud import functions_v2

    from orchestrator.functions_api import function

    settings = Settings.defaults("proj")
    fields = {
        **FUNCTION,
        "env": {"MODE": "x"},
        "min_instances": 1,
        "max_instances": 3,
        "concurrency": 20,
        "timeout_seconds": 120,
        "triggers": [{"storage": {"bucket": "uploads", "event": "deleted"}}],
    }
    fn = function(Context(settings), _deployment(fields), "us")
    assert fn.name == "projects/proj/locations/us-central1/functions/hello-fn"
    assert fn.labels["deployment-id"] == "d-1"
    build = fn.build_config
    assert (build.runtime, build.entry_point) == ("python311", "hello_fn")
    source = build.source.storage_source
    assert (source.bucket, source.object_, source.generation) == ("src", "hello-fn.zip", 7)
    assert build.service_account == (
        f"projects/proj/serviceAccounts/{settings.build_service_account}"
    )
    svc = fn.service_config
    assert dict(svc.environment_variables) == {"MODE": "x"}
    assert (svc.min_instance_count, svc.max_instance_count) == (1, 3)
    assert svc.max_instance_request_concurrency == 20
    assert (svc.available_cpu, svc.timeout_seconds) == ("1", 120)
    assert svc.service_account_email == settings.runtime_service_account
    assert svc.ingress_settings == functions_v2.ServiceConfig.IngressSettings.ALLOW_ALL
    trigger = fn.event_trigger
    assert trigger.event_type == "google.cloud.storage.object.v1.deleted"
    assert [(f.attribute, f.value) for f in trigger.event_filters] == [("bucket", "uploads")]
    assert trigger.trigger_region == "us"
    assert trigger.service_account_email == settings.trigger_service_account
    assert not trigger.pubsub_topic

    pubsub = function(
        Context(settings),
        _deployment({**FUNCTION, "triggers": [{"pubsub": {"topic": "topic1"}}]}),
        None,
    )
    assert pubsub.event_trigger.pubsub_topic == "projects/proj/topics/topic1"
    assert pubsub.event_trigger.trigger_region == "us-central1"
    http = function(Context(settings), _deployment(FUNCTION), None)
    assert not functions_v2.Function.pb(http).HasField("event_trigger")


@pytest.mark.parametrize(
    ("fields", "runtime"), [({}, "nodejs22"), ({"runtime": "nodejs20"}, "nodejs20")]
)
def test_a_nodejs_function_passes_its_runtime_to_cloud_functions(fields, runtime):
    """Issue 19: a Node.js source needs no runtime in its manifest with api: functions (it
    gets nodejs22), and ``build_config.runtime`` carries it: Cloud Functions picks the
    language and version from it alone, no build variables."""
    from orchestrator.functions_api import function

    resolved = resolve(
        {"api": "functions", **fields}, {}, "hello-fn.zip", languages=frozenset({"nodejs"})
    )
    deployment = Deployment(
        "d-1", resolved.service, "gs://src/hello-fn.zip#7", "src", "hello-fn.zip", 7, resolved
    )
    fn = function(Context(Settings.defaults("proj")), deployment, None)
    assert (fn.build_config.runtime, fn.build_config.entry_point) == (runtime, "hello_fn")
    assert not fn.build_config.environment_variables


def test_a_python_function_still_names_its_runtime_with_api_functions():
    with pytest.raises(ManifestError, match=r"required with api: functions.*python310"):
        resolve({"api": "functions"}, {}, "hello-fn.zip", languages=frozenset({"python"}))

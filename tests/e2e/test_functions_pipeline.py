"""``api: functions``: the pipeline deploys through the Cloud Functions API v2, end to end.

Three deployments of one service (each costs a build): a first one, a redeploy with a
changed body, and a build that fails while the second keeps serving; a fourth upload with
``api: run`` is refused before anything is built.
"""

from __future__ import annotations

import uuid

from google.cloud import functions_v2

from tests.e2e.conftest import done, hello_source, steps, wait_until_serving

EXPECTED = [
    ("accepted", "succeeded"),
    ("build", "running"),
    ("build", "succeeded"),
    ("push", "skipped"),
    ("deploy", "running"),
    ("deploy", "succeeded"),
    ("bind_triggers", "running"),
    ("bind_triggers", "succeeded"),
    ("done", "succeeded"),
]


def _source(service: str, text: str, **fields):
    return hello_source(service, text, api="functions", runtime="python311", **fields)


def test_a_zip_with_api_functions_is_deployed_updated_and_kept_through_a_failed_build(pipeline):
    service = f"fn-{uuid.uuid4().hex[:6]}"
    functions = pipeline.clients.functions
    name = f"{pipeline.settings.location_path}/functions/{service}"

    first, _ = pipeline.upload(_source(service, "one"), f"{service}.zip")
    events = pipeline.wait(first, timeout=180)
    assert steps(events) == EXPECTED, [(e.step, e.state, e.message) for e in events]
    assert len({e.deployment_id for e in events}) == 1
    push = next(e for e in events if e.step == "push")
    assert push.message.startswith("skipped: Cloud Functions deploys the image")
    final = done(events)
    url = final.details["url"]
    assert pipeline.get(url) == "one"  # public: allow_unauthenticated
    fn = functions.get_function(name=name)
    assert fn.state == functions_v2.Function.State.ACTIVE
    assert fn.labels["deployment-id"] == first
    assert fn.build_config.runtime == "python311"
    assert fn.build_config.entry_point == "hello"
    assert fn.service_config.uri == url
    assert fn.service_config.service_account_email == pipeline.settings.runtime_service_account
    assert fn.service_config.max_instance_request_concurrency == 80
    run_service = pipeline.service(service)
    assert run_service.labels["goog-managed-by"] == "cloudfunctions"
    assert run_service.latest_ready_revision.endswith(final.details["revision"])
    assert "/gcf-artifacts/" in final.details["image"] and "@sha256:" in final.details["image"]
    assert final.details["api"] == "functions"

    second, _ = pipeline.upload(_source(service, "two"), f"{service}.zip")
    events = pipeline.wait(second, timeout=180)
    assert steps(events) == EXPECTED, [(e.step, e.state, e.message) for e in events]
    serving = done(events).details["revision"]
    assert serving != final.details["revision"]
    wait_until_serving(pipeline, url, "two")
    assert functions.get_function(name=name).labels["deployment-id"] == second

    broken = _source(service, "three")
    broken["requirements.txt"] = "this is not a requirement ((\n"
    third, _ = pipeline.upload(broken, f"{service}.zip")
    events = pipeline.wait(third, timeout=180)
    assert steps(events)[-2:] == [("build", "failed"), ("done", "failed")]
    failed = next(e for e in events if e.step == "build" and e.state == "failed")
    assert failed.error_code == "BUILD_FAILED"
    assert f"revision {serving} keeps serving" in failed.message
    assert failed.details["build_id"] and failed.details["log_url"]
    assert any("requirement" in line.lower() for line in failed.details["log_tail"]), failed
    assert done(events).error_code == "BUILD_FAILED"
    assert pipeline.get(url) == "two"
    fn = functions.get_function(name=name)
    assert fn.state == functions_v2.Function.State.ACTIVE
    assert fn.labels["deployment-id"] == second  # a failed update keeps the function

    # The same service through the Cloud Run Admin API: refused before a build is made.
    run, _ = pipeline.upload(hello_source(service, "four"), f"{service}.zip")
    events = pipeline.wait(run)
    assert steps(events)[-2:] == [("build", "failed"), ("done", "failed")]
    refused = next(e for e in events if e.state == "failed")
    assert refused.error_code == "API_CONFLICT"
    assert "api: functions" in refused.message and "gcloud functions delete" in refused.message
    assert pipeline.get(url) == "two"

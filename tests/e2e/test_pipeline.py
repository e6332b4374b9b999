"""The deploy pipeline end to end on localcloud, through its public entry points only."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import uuid
import zipfile
from pathlib import Path

import pytest
from google.cloud import eventarc_v1

from localcloud.testing import Recorder, wait_for, zip_dir, zip_entries
from orchestrator import manifest
from orchestrator.config import pipeline as pipeline_names
from orchestrator.status import StatusEvent
from tests.e2e.conftest import done, hello_source, steps, wait_until_serving

FUNCTIONS = Path(__file__).parent.parent / "functions"
EXAMPLES = Path(__file__).parent.parent.parent / "examples"
EXPECTED = [
    ("accepted", "succeeded"),
    ("build", "running"),
    ("build", "succeeded"),
    ("push", "running"),
    ("push", "succeeded"),
    ("deploy", "running"),
    ("deploy", "succeeded"),
    ("bind_triggers", "running"),
    ("bind_triggers", "succeeded"),
    ("done", "succeeded"),
]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_a_zip_dropped_into_the_bucket_is_served_with_every_step_reported_in_order(pipeline):
    dep_id, generation = pipeline.upload(zip_dir(EXAMPLES / "hello"), "hello.zip")
    events = pipeline.wait(dep_id)
    assert steps(events) == EXPECTED
    assert all(e.service == "hello" for e in events)
    assert all(
        e.source_uri == f"gs://{pipeline.settings.sources_bucket}/hello.zip#{generation}"
        for e in events
    )
    final = done(events)
    assert final.details["revision"].startswith("hello-")
    assert "Hello, world!" in pipeline.get(final.details["url"])
    service = pipeline.service("hello")
    assert service.labels["deployment-id"] == dep_id
    assert service.template.containers[0].image == final.details["image"]
    assert "@sha256:" in final.details["image"]
    assert "/functions/hello@" in final.details["image"]


def test_redeploy_with_a_code_change_serves_the_new_revision_only(pipeline):
    name = unique("redeploy")
    first, _ = pipeline.upload(hello_source(name, "one"), f"{name}.zip")
    url = done(pipeline.wait(first)).details["url"]
    assert pipeline.get(url) == "one"
    second, _ = pipeline.upload(hello_source(name, "two"), f"{name}.zip")
    final = done(pipeline.wait(second))
    assert final.state == "succeeded"
    wait_until_serving(pipeline, url, "two")
    service = pipeline.service(name)
    serving = [t for t in service.traffic_statuses if t.percent]
    assert [t.percent for t in serving] == [100]
    assert service.latest_ready_revision.endswith(final.details["revision"])
    revisions = list(pipeline.clients.run_revisions.list_revisions(parent=service.name))
    assert len(revisions) == 2, "the old revision stays, out of traffic"


def _symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = 0o120777 << 16
    return info, target.encode()


MAIN = b"def hello(request):\n    return 'bad'\n"


def _undecodable_name() -> bytes:
    """A zip whose directory flags its last name as UTF-8 but holds an invalid byte."""
    data = bytearray(zip_entries([("main.py", MAIN), ("function.yaml", b"service: x\n")]))
    header = data.rfind(b"PK\x01\x02")  # the last central directory entry
    flags = int.from_bytes(data[header + 8 : header + 10], "little") | 0x800
    data[header + 8 : header + 10] = flags.to_bytes(2, "little")
    data[header + 46] = 0xFF  # the name's first byte
    return bytes(data)


BAD_INPUTS = {
    "not a zip": (b"this is not an archive", "not a valid zip"),
    "damaged zip": (_undecodable_name(), "the zip archive is damaged"),
    "zip slip": (zip_entries([("main.py", MAIN), ("../../etc/evil.py", b"x")]), "climbs out"),
    "link out": (
        zip_entries([("main.py", MAIN), _symlink("data", "/etc/passwd")]),
        "symbolic link",
    ),
    "zip bomb": (zip_entries([("main.py", MAIN), ("bomb.txt", b"\0" * (8 << 20))]), "zip bomb"),
    "missing main.py": (zip_entries([("app.py", MAIN)]), "no main.py"),
    "bad function.yaml": (
        zip_entries([("main.py", MAIN), ("function.yaml", b"service: [")]),
        "invalid YAML",
    ),
    "unknown field": (
        zip_entries([("main.py", MAIN), ("function.yaml", b"servcie: x\n")]),
        "servcie",
    ),
    "bad service name": (
        zip_entries([("main.py", MAIN), ("function.yaml", b"service: Bad_Name\n")]),
        "service",
    ),
}


@pytest.fixture(scope="module")
def steady(pipeline) -> tuple[str, str]:
    """A deployed service that bad inputs aimed at it must leave serving."""
    name = unique("steady")
    dep_id, _ = pipeline.upload(hello_source(name, "steady"), f"{name}.zip")
    url = done(pipeline.wait(dep_id)).details["url"]
    return name, url


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_reports_one_failure_naming_the_problem_and_keeps_serving(pipeline, steady, case):
    name, url = steady
    data, phrase = BAD_INPUTS[case]
    dep_id, _ = pipeline.upload(data, f"{name}.zip")
    events = pipeline.wait(dep_id, timeout=60)
    assert steps(events) == [("accepted", "failed")]
    assert phrase in events[0].message
    assert events[0].error_code in ("INVALID_ARCHIVE", "INVALID_MANIFEST")
    assert pipeline.get(url) == "steady"
    # Intake refuses before it starts anything: no execution carries this deployment's id.
    assert pipeline.executions(dep_id) == [], "a workflow runs for a refused source"
    assert len(pipeline.seen(dep_id)) == 1, "nothing else runs for a refused source"


def _grant_read(pipeline, bucket) -> None:
    """What a user does before asking for a deploy from a bucket of theirs: let the intake
    and the build account read it (Terraform grants the sources bucket alone)."""
    from orchestrator.config import service_account_email

    s = pipeline.settings
    intake_account = service_account_email(f"{s.prefix}-on-deploy-request", s.project)
    policy = bucket.get_iam_policy(requested_policy_version=3)
    policy.bindings.append(
        {
            "role": "roles/storage.objectViewer",
            "members": {
                f"serviceAccount:{intake_account}",
                f"serviceAccount:{s.build_service_account}",
            },
        }
    )
    bucket.set_iam_policy(policy)


def test_a_deploy_request_is_served(pipeline):
    name = unique("requested")
    bucket = pipeline.clients.storage.create_bucket(unique("elsewhere"))
    _grant_read(pipeline, bucket)
    blob = bucket.blob("src/function.zip")
    from localcloud.testing import zip_tree

    blob.upload_from_string(zip_tree(hello_source("ignored-name", "by request")))
    fields = {"service": name, "env": {"MODE": "request"}}
    pipeline.request({"source": f"gs://{bucket.name}/src/function.zip", **fields})
    dep_id = manifest.deployment_id(bucket.name, "src/function.zip", blob.generation, fields)
    events = pipeline.wait(dep_id)
    assert steps(events) == EXPECTED
    url = done(events).details["url"]
    assert pipeline.get(url) == "by request"
    env = {e.name: e.value for e in pipeline.service(name).template.containers[0].env}
    assert env == {"MODE": "request"}


def test_a_request_from_a_bucket_the_pipeline_cannot_read_fails_naming_the_grant(pipeline):
    """As on Google Cloud, the pipeline reads only the buckets it was granted: a request
    from another one fails at intake, saying what to grant to whom."""
    from localcloud.testing import zip_tree

    name = unique("unreadable")
    bucket = pipeline.clients.storage.create_bucket(unique("private"))
    bucket.blob("fn.zip").upload_from_string(zip_tree(hello_source(name, "never")))
    pipeline.request({"source": f"gs://{bucket.name}/fn.zip", "service": name})

    def reported() -> list[StatusEvent]:
        with pipeline.lock:
            return [e for evs in pipeline.events.values() for e in evs if e.service == name]

    found = wait_for(reported, 30, "intake to report the request")
    assert [(e.step, e.state, e.error_code) for e in found] == [
        ("accepted", "failed", "SOURCE_UNREADABLE")
    ]
    assert "storage.objects.get" in found[0].message
    assert f"roles/storage.objectViewer on gs://{bucket.name}" in found[0].message


def test_a_bad_deploy_request_fails_at_intake(pipeline):
    name = unique("badreq")
    pipeline.request({"source": "gs://no-such-bucket-here/x.zip#1", "service": name, "colour": 1})

    def reported() -> list[StatusEvent]:
        with pipeline.lock:
            return [e for evs in pipeline.events.values() for e in evs if e.service == name]

    found = wait_for(reported, 30, "intake to report the request")
    assert [(e.step, e.state, e.error_code) for e in found] == [
        ("accepted", "failed", "INVALID_REQUEST")
    ]
    assert "colour" in found[0].message


def test_a_deploy_request_for_a_missing_object_fails_at_intake(pipeline):
    source, events = pipeline.refused_request(unique("missing"))
    assert [(e.step, e.state, e.error_code) for e in events] == [
        ("accepted", "failed", "SOURCE_NOT_FOUND")
    ]
    assert events[0].message == f"{source} does not exist"


def test_a_duplicate_event_is_one_deployment(pipeline):
    name = unique("dup")
    dep_id, generation = pipeline.upload(hello_source(name, "once"), f"{name}.zip")
    # The same upload again, as a request naming that generation: the same deployment id.
    pipeline.request({"source": f"gs://{pipeline.settings.sources_bucket}/{name}.zip#{generation}"})
    pipeline.wait(dep_id)
    pipeline.refused_request(unique("sentinel"))  # the duplicate went in before it
    events = pipeline.seen(dep_id)
    assert len(pipeline.executions(dep_id)) == 1
    assert [s for s in steps(events) if s[0] == "accepted"] == [("accepted", "succeeded")]
    assert [s for s in steps(events) if s[0] == "done"] == [("done", "succeeded")]
    builds = [
        b
        for b in pipeline.clients.cloud_build.list_builds(project_id=pipeline.settings.project)
        if dep_id in b.tags
    ]
    assert len(builds) == 1


def test_two_concurrent_deploys_of_one_service_are_serialized(pipeline):
    name = unique("serial")
    first, _ = pipeline.upload(hello_source(name, "first"), "serial-a.zip")
    second, _ = pipeline.upload(hello_source(name, "second"), "serial-b.zip")
    a, b = pipeline.wait(first), pipeline.wait(second)
    assert done(a).state == done(b).state == "succeeded"

    def working(events):
        """From the build's real start (after any wait) to bind_triggers' end."""
        start = next(e for e in events if e.step == "build" and e.message.startswith("building"))
        end = next(e for e in events if e.step == "bind_triggers" and e.state == "succeeded")
        return start.time, end.time

    (a0, a1), (b0, b1) = working(a), working(b)
    assert a1 <= b0 or b1 <= a0, "the two deployments' steps interleaved"
    later = b if a1 <= b0 else a
    waiting = [e for e in later if e.message.startswith("waiting")]
    assert waiting and waiting[0].details["waiting_for"] in (first, second)
    winner = "second" if later is b else "first"
    assert pipeline.get(done(later).details["url"]) == winner


def test_triggers_are_bound_and_removed_as_the_manifest_changes(pipeline, localcloud):
    import yaml

    recorder = Recorder(localcloud.config.run_host_ports[0])
    name = unique("rec")
    topic = unique("orders")
    source = {
        p.name: p.read_bytes() for p in (FUNCTIONS / "event_recorder").iterdir() if p.is_file()
    }
    fields = {
        "service": name,
        "entry_point": "record",
        "signature_type": "cloudevent",
        "env": {"RECORD_URL": recorder.url},
        "triggers": [{"pubsub": {"topic": topic}}],
    }
    dep_id, _ = pipeline.upload({**source, "function.yaml": yaml.safe_dump(fields)}, f"{name}.zip")
    final = done(pipeline.wait(dep_id))
    assert final.state == "succeeded", final.message
    (trigger_id,) = final.details["triggers"]
    eventarc = pipeline.clients.eventarc
    removed = eventarc.get_trigger(name=f"{pipeline.settings.location_path}/triggers/{trigger_id}")
    publisher = pipeline.clients.publisher
    publisher.publish(pipeline.settings.topic_path(topic), b"order 1").result(timeout=30)
    assert len(recorder.wait(1)) == 1, "a message on the trigger's topic reaches the function"

    del fields["triggers"]
    dep_id, _ = pipeline.upload({**source, "function.yaml": yaml.safe_dump(fields)}, f"{name}.zip")
    events = pipeline.wait(dep_id)
    bound = next(e for e in events if e.step == "bind_triggers" and e.state == "succeeded")
    assert bound.details["deleted"] == [trigger_id]
    names = [
        t.name
        for t in pipeline.clients.eventarc.list_triggers(parent=pipeline.settings.location_path)
    ]
    assert not any(n.endswith("/" + trigger_id) for n in names)
    publisher.publish(pipeline.settings.topic_path(topic), b"order 2").result(timeout=30)
    # The sentinel: a trigger like the removed one brings a message published after order 2,
    # which the removed trigger would have had first.
    sentinel = eventarc_v1.Trigger(
        event_filters=removed.event_filters,
        destination=removed.destination,
        service_account=removed.service_account,
        transport={"pubsub": {"topic": removed.transport.pubsub.topic}},
    )
    made = eventarc.create_trigger(
        parent=pipeline.settings.location_path, trigger_id=unique("sentinel"), trigger=sentinel
    ).result(timeout=60)
    try:
        publisher.publish(pipeline.settings.topic_path(topic), b"order 3").result(timeout=30)
        orders = [base64.b64decode(e["data"]["message"]["data"]) for e in recorder.wait(2)]
        assert orders == [b"order 1", b"order 3"], "the removed trigger delivers nothing more"
    finally:
        eventarc.delete_trigger(name=made.name).result(timeout=60)
        recorder.close()


def test_the_storage_triggered_example_receives_uploads_to_its_bucket(pipeline):
    """examples/on_upload through the pipeline: bind_triggers creates its storage trigger in
    the location of the bucket it watches (Eventarc refuses any other), and an object
    written to that bucket reaches the function, which logs it."""
    storage = pipeline.clients.storage
    uploads = storage.lookup_bucket("uploads") or storage.create_bucket("uploads")
    dep_id, _ = pipeline.upload(zip_dir(EXAMPLES / "on_upload"), "on_upload.zip")
    final = done(pipeline.wait(dep_id, timeout=180))
    assert final.state == "succeeded", final.message
    (trigger_id,) = final.details["triggers"]
    location = uploads.location.lower()
    parent = f"projects/{pipeline.settings.project}/locations/{location}"
    bound = pipeline.clients.eventarc.get_trigger(name=f"{parent}/triggers/{trigger_id}")
    assert {(f.attribute, f.value) for f in bound.event_filters} == {
        ("type", "google.cloud.storage.object.v1.finalized"),
        ("bucket", "uploads"),
    }
    name = f"{unique('upload')}.txt"
    uploads.blob(name).upload_from_string(b"hello")
    service = pipeline.service("on-upload")
    revision = pipeline.clients.run_revisions.get_revision(name=service.latest_ready_revision)
    log = pipeline.clients.env.log_file(revision.log_uri)
    assert log is not None
    line = f"new object gs://uploads/{name} (5 bytes)"
    wait_for(
        lambda: log.is_file() and line in log.read_text(errors="replace"),
        60,
        f"the function to log {line!r}",
    )


def test_a_step_function_crashing_mid_deploy_is_retried_and_the_deployment_completes(
    pipeline, localcloud
):
    name = unique("crash")
    build_service = pipeline.settings.function_service("build")
    files = hello_source(name, "survived")
    files["requirements.txt"] = "localgreeting==0.1.0\n"  # from the test wheelhouse: slower
    dep_id, _ = pipeline.upload(files, f"{name}.zip")
    wait_for(
        lambda: any(e.message.startswith("building") for e in pipeline.seen(dep_id)),
        60,
        "the build to start",
        every=0.02,
    )
    pids = localcloud.service_pids(build_service)
    assert pids, f"no instance of {build_service} found"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # gone with its sandbox's parent
            os.kill(pid, signal.SIGKILL)
    # Within pytest's 120 s, so a deployment that never ends fails with the events it sent
    # (the workflow's retries of the step take at most 61 s of back-off).
    events = pipeline.wait(dep_id, timeout=100)
    final = done(events)
    assert final.state == "succeeded", final.message
    assert pipeline.get(final.details["url"]) == "survived"
    builds = [
        b
        for b in pipeline.clients.cloud_build.list_builds(project_id=pipeline.settings.project)
        if dep_id in b.tags
    ]
    assert len(builds) == 1, "the retried build step waited for the same build"


def test_failed_build_and_failed_start_report_why_and_keep_the_previous_revision(pipeline):
    name = unique("keeps")
    first, _ = pipeline.upload(hello_source(name, "good"), f"{name}.zip")
    url = done(pipeline.wait(first)).details["url"]

    broken_deps = hello_source(name, "never")
    broken_deps["requirements.txt"] = "no-such-package-anywhere-xyz==1.0\n"
    dep_id, _ = pipeline.upload(broken_deps, f"{name}.zip")
    events = pipeline.wait(dep_id)
    failed = next(e for e in events if e.step == "build" and e.state == "failed")
    assert failed.error_code == "BUILD_FAILED"
    assert failed.details["log_url"]
    assert any("no-such-package-anywhere-xyz" in line for line in failed.details["log_tail"])
    final = done(events)
    assert (final.state, final.details["step"]) == ("failed", "build")
    assert final.error_code == "BUILD_FAILED"
    assert not [e for e in events if e.step in ("push", "deploy")], "it stops at the failure"
    assert pipeline.get(url) == "good"

    crashing = hello_source(name, "never")
    crashing["main.py"] = (FUNCTIONS / "crash_on_import" / "main.py").read_text()
    dep_id, _ = pipeline.upload(crashing, f"{name}.zip")
    events = pipeline.wait(dep_id)
    failed = next(e for e in events if e.step == "deploy" and e.state == "failed")
    assert failed.error_code == "DEPLOY_FAILED"
    assert "keeps serving" in failed.message
    assert done(events).state == "failed"
    assert pipeline.get(url) == "good"
    assert not pipeline.seen(dep_id)[-1].details.get("url")


def test_the_pipeline_is_named_as_terraform_names_it(pipeline):
    """Local provisioning made exactly the resources pipeline.json lists (Terraform reads it too)."""
    names = pipeline_names()
    s = pipeline.settings
    services = {
        svc.name.rsplit("/", 1)[-1]
        for svc in pipeline.clients.run_services.list_services(parent=s.location_path)
    }
    assert {s.function_service(k) for k in names["functions"]} <= services
    triggers = {
        t.name.rsplit("/", 1)[-1]
        for t in pipeline.clients.eventarc.list_triggers(parent=s.location_path)
    }
    assert {f"{s.prefix}-{k}" for k in names["triggers"]} <= triggers
    workflow = pipeline.clients.workflows.get_workflow(name=s.workflow_path)
    assert set(workflow.user_env_vars) == {
        *(f["workflow_env"] for f in names["functions"].values() if "workflow_env" in f),
        "STATUS_TOPIC",
    }
    for function in names["functions"]:
        service = pipeline.service(s.function_service(function))
        policy = pipeline.clients.run_services.get_iam_policy(request={"resource": service.name})
        members = {m for b in policy.bindings for m in b.members}
        assert "allUsers" not in members, f"{function} must be private"


def test_provisioning_again_changes_nothing(pipeline):
    """``orch local up`` on a provisioned localcloud is a no-op, like a second terraform apply."""
    from orch.provision import provision

    changes = provision(pipeline.settings, pipeline.clients, log=lambda _line: None)
    assert changes
    assert [str(c) for c in changes if c.action != "unchanged"] == []
    # The repository builds push to exists, as Terraform makes it (Google refuses pushes to
    # a repository that does not).
    assert "repository" in {c.kind for c in changes}
    settings = pipeline.settings
    repo = pipeline.clients.artifact_registry.get_repository(
        name=f"{settings.location_path}/repositories/{settings.repository}"
    )
    assert repo.format_.name == "DOCKER"

"""Cloud Run through the official ``google-cloud-run`` client, and real HTTP to the functions.

Images are built by localcloud's Cloud Build from ``tests/functions``; services run them in
the bubblewrap sandbox. Expectations from
https://cloud.google.com/run/docs/reference/rpc/google.cloud.run.v2 and the guides cited.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from google.api_core import exceptions
from google.cloud import run_v2
from google.iam.v1 import policy_pb2

from localcloud import testing
from localcloud.core.oidc import Issuer
from localcloud.testing import call, make_public

FUNCTIONS = Path(__file__).parent.parent / "functions"
PARENT = "projects/local-project/locations/us-central1"


def issuer(localcloud) -> Issuer:
    return Issuer(localcloud.config.data_dir / "oidc", localcloud.config.http_url)


def test_deploy_serves_http_with_cloud_run_variables(localcloud, build_image, deploy):
    service = deploy(build_image("echo_env", "echo"), public=True, env={"GREETING": "hi"})
    assert service.uri.startswith("http://127.0.0.1:")
    assert service.latest_ready_revision.endswith(
        service.name.rsplit("/", 1)[-1] + "-00001-" + service.latest_ready_revision[-3:]
    )
    assert service.terminal_condition.state == run_v2.Condition.State.CONDITION_SUCCEEDED
    status, body = call(service.uri)
    assert status == 200, body
    seen = json.loads(body)
    service_id = service.name.rsplit("/", 1)[-1]
    assert seen["service"] == service_id
    assert seen["configuration"] == service_id
    assert seen["revision"] == service.latest_ready_revision.rsplit("/", 1)[-1]
    assert seen["greeting"] == "hi"
    assert seen["forwarded_for"]
    logs = subprocess.run(
        [sys.executable, "-m", "orch.cli", "local", "logs", "--service", service_id],
        env={
            **os.environ,
            "LOCALCLOUD_DATA": str(localcloud.config.data_dir),
            **testing.port_env(localcloud.config),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert logs.returncode == 0, logs.stderr
    assert seen["revision"] in logs.stdout  # the revision's log file is listed


def test_private_service_needs_a_token_for_its_url(localcloud, build_image, deploy, clients):
    """https://cloud.google.com/run/docs/authenticating/service-to-service: the audience is the
    service URL; no token is 401, an allowed caller's token 200, someone else's 403."""
    service = deploy(build_image("echo_env", "echo"))
    assert call(service.uri)[0] == 401
    caller = "caller@local-project.iam.gserviceaccount.com"
    token = issuer(localcloud).mint_id_token(service.uri, caller)
    assert call(service.uri, token=token)[0] == 403
    policy = clients.run_services.get_iam_policy(request={"resource": service.name})
    policy.bindings.append(
        policy_pb2.Binding(role="roles/run.invoker", members=[f"serviceAccount:{caller}"])
    )
    clients.run_services.set_iam_policy(request={"resource": service.name, "policy": policy})
    assert call(service.uri, token=token)[0] == 200
    wrong_audience = issuer(localcloud).mint_id_token("http://elsewhere", caller)
    assert call(service.uri, token=wrong_audience)[0] == 401


def test_update_makes_a_new_revision_and_a_broken_one_keeps_the_old_serving(
    localcloud, build_image, deploy, clients
):
    service = deploy(build_image("echo_env", "echo"), public=True, env={"GREETING": "one"})
    first = service.latest_ready_revision
    service.template.containers[0].env[0].value = "two"
    updated = clients.run_services.update_service(service=service).result(timeout=120)
    assert updated.latest_ready_revision != first
    assert updated.latest_ready_revision.split("-")[-2] == "00002"
    assert json.loads(call(updated.uri)[1])["greeting"] == "two"
    revisions = [r.name for r in clients.run_revisions.list_revisions(parent=service.name)]
    assert set(revisions) == {first, updated.latest_ready_revision}

    updated.template.containers[0].image = build_image("crash_on_import", "echo")
    with pytest.raises(exceptions.GoogleAPICallError) as failure:
        clients.run_services.update_service(service=updated).result(timeout=120)
    assert "broken on purpose" in str(failure.value)
    after = clients.run_services.get_service(name=service.name)
    assert after.latest_ready_revision == updated.latest_ready_revision
    assert after.latest_created_revision != updated.latest_ready_revision
    assert after.terminal_condition.state == run_v2.Condition.State.CONDITION_FAILED
    status, body = call(after.uri)
    assert status == 200 and json.loads(body)["greeting"] == "two"
    with pytest.raises(exceptions.FailedPrecondition):
        clients.run_revisions.delete_revision(name=after.latest_ready_revision).result(timeout=30)


def test_traffic_split_and_tags(localcloud, build_image, deploy, clients):
    service = deploy(build_image("echo_env", "echo"), public=True, env={"GREETING": "a"})
    rev_a = service.latest_ready_revision.rsplit("/", 1)[-1]
    service.template.containers[0].env[0].value = "b"
    service = clients.run_services.update_service(service=service).result(timeout=120)
    rev_b = service.latest_ready_revision.rsplit("/", 1)[-1]
    service.traffic.clear()
    service.traffic.extend(
        [
            run_v2.TrafficTarget(
                type_=run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION,
                revision=rev_a,
                percent=50,
                tag="blue",
            ),
            run_v2.TrafficTarget(
                type_=run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION,
                revision=rev_b,
                percent=50,
            ),
        ]
    )
    service = clients.run_services.update_service(service=service).result(timeout=120)
    counts = {"a": 0, "b": 0}
    for _ in range(200):
        counts[json.loads(call(service.uri)[1])["greeting"]] += 1
    assert 60 <= counts["a"] <= 140, counts
    blue = next(t for t in service.traffic_statuses if t.tag == "blue")
    assert blue.uri.startswith("http://blue---")
    host = blue.uri.removeprefix("http://")
    for _ in range(5):
        status, body = call(f"http://127.0.0.1:{localcloud.config.ingress_port}/", host=host)
        assert status == 200 and json.loads(body)["greeting"] == "a"
    service_host = service.urls[1].removeprefix("http://")
    assert call(f"http://127.0.0.1:{localcloud.config.ingress_port}/", host=service_host)[0] == 200


def test_scale_from_zero_concurrency_and_back_to_zero(localcloud, build_image, deploy):
    """Concurrency 1 and at most 2 instances: 4 slow requests run 2 at a time on 2 instances;
    idle instances stop (the session's idle period is 3 s) and the next request starts one."""
    service = deploy(
        build_image("echo_env", "echo"),
        public=True,
        max_instance_request_concurrency=1,
        scaling={"max_instance_count": 2},
    )
    start = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: call(service.uri + "?sleep=1"), range(4)))
    elapsed = time.monotonic() - start
    assert all(status == 200 for status, _ in results)
    instances = {json.loads(body)["instance"] for _, body in results}
    assert len(instances) == 2
    assert elapsed >= 1.9, "concurrency 1 on 2 instances cannot run 4 one-second requests at once"
    service_id = service.name.rsplit("/", 1)[-1]
    testing.wait_for(lambda: not localcloud.service_pids(service_id), 30, "idle instances to stop")
    status, body = call(service.uri)
    assert status == 200
    assert json.loads(body)["instance"] not in instances, (
        "an idle instance should have been stopped"
    )


def test_sandbox_hides_the_host(localcloud, build_image, deploy):
    service = deploy(build_image("echo_env", "echo"), public=True)
    data_dir = str(localcloud.config.data_dir / "localcloud.db")
    status, body = call(f"{service.uri}?exists={urllib.parse.quote(data_dir)}")
    assert status == 200 and json.loads(body)["exists"] is False
    status, body = call(f"{service.uri}?exists=/root")
    assert json.loads(body)["exists"] in (False, True)  # /root may exist; its files must not:
    home_file = Path.home() / f".sentinel-{uuid.uuid4().hex[:6]}"
    home_file.write_text("secret")
    try:
        status, body = call(f"{service.uri}?exists={urllib.parse.quote(str(home_file))}")
        assert json.loads(body)["exists"] is False
    finally:
        home_file.unlink()


def test_bad_requests_are_clear(clients):
    image = run_v2.Container(image="us-docker.pkg.dev/cloudrun/container/hello")
    with pytest.raises(exceptions.InvalidArgument, match="service_id"):
        clients.run_services.create_service(
            parent=PARENT,
            service=run_v2.Service(template=run_v2.RevisionTemplate(containers=[image])),
            service_id="Bad_Name",
        )
    # No template at all: Cloud Run names the REQUIRED field it misses.
    with pytest.raises(exceptions.InvalidArgument, match=r"service\.template"):
        clients.run_services.create_service(
            parent=PARENT, service=run_v2.Service(), service_id="no-template"
        )
    with pytest.raises(exceptions.InvalidArgument, match="container"):
        clients.run_services.create_service(
            parent=PARENT,
            service=run_v2.Service(template=run_v2.RevisionTemplate()),
            service_id="no-containers",
        )
    with pytest.raises(exceptions.NotFound):
        clients.run_services.get_service(name=f"{PARENT}/services/does-not-exist")


def test_delete_stops_serving(localcloud, build_image, clients):
    image = build_image("echo_env", "echo")
    service = clients.run_services.create_service(
        parent=PARENT,
        service=run_v2.Service(
            template=run_v2.RevisionTemplate(containers=[run_v2.Container(image=image)])
        ),
        service_id=f"gone-{uuid.uuid4().hex[:6]}",
    ).result(timeout=120)
    make_public(clients, service.name)
    assert call(service.uri)[0] == 200
    clients.run_services.delete_service(name=service.name).result(timeout=60)
    with pytest.raises(exceptions.NotFound):
        clients.run_services.get_service(name=service.name)
    with pytest.raises(OSError):
        urllib.request.urlopen(service.uri, timeout=5)

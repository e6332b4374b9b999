"""The pieces of Cloud Run v1 and ``orch local gcloud`` that need no server: label
selectors, the v2 -> v1 conversion of what a running service rarely shows (a failed
revision, traffic pinned to a revision with a tag), and the configuration file."""

from __future__ import annotations

import configparser

import pytest
from google.cloud.run_v2 import types

from localcloud.core.errors import InvalidArgument
from localcloud.run.knative import label_filter, service_json
from orch import gcloud

LABELS = {"serving.knative.dev/service": "hello", "team": "blue"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("serving.knative.dev/service = hello", True),
        ("serving.knative.dev/service=other", False),
        ("team != blue", False),
        ("team", True),
        ("!team", False),
        ("!absent", True),
        ("team in (red, blue)", True),
        ("team notin (red, blue)", False),
        ("team=blue,serving.knative.dev/service==hello", True),
        ("team=blue, absent", False),
    ],
)
def test_label_selectors(selector, matches):
    assert label_filter(selector)(LABELS) is matches


def test_a_selector_that_does_not_parse_is_invalid_argument():
    with pytest.raises(InvalidArgument, match="labelSelector"):
        label_filter("team === blue")


def test_failed_revision_and_pinned_traffic_in_v1_terms():
    svc = types.Service.pb()(
        name="projects/p/locations/europe-west1/services/hello",
        generation=3,
        observed_generation=3,
        latest_created_revision="projects/p/locations/europe-west1/services/hello/revisions/hello-3",
        latest_ready_revision="projects/p/locations/europe-west1/services/hello/revisions/hello-2",
        ingress=types.IngressTraffic.INGRESS_TRAFFIC_INTERNAL_ONLY,
    )
    svc.template.scaling.min_instance_count = 1
    svc.template.containers.add(image="img@sha256:1", ports=[{"container_port": 9000}])
    svc.traffic.add(
        type_=types.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION,
        revision="hello-2",
        percent=100,
        tag="stable",
    )
    svc.terminal_condition.type_ = "Ready"
    svc.terminal_condition.state = types.Condition.State.CONDITION_FAILED
    svc.terminal_condition.message = "the container did not listen"
    svc.terminal_condition.reason = types.Condition.CommonReason.REVISION_FAILED
    body = service_json(svc)
    assert body["metadata"]["namespace"].isdigit()  # the project number
    assert body["metadata"]["labels"] == {"cloud.googleapis.com/location": "europe-west1"}
    assert body["metadata"]["annotations"]["run.googleapis.com/ingress"] == "internal"
    template = body["spec"]["template"]
    assert template["metadata"]["annotations"] == {"autoscaling.knative.dev/minScale": "1"}
    assert template["spec"]["containers"][0]["ports"] == [{"containerPort": 9000}]
    assert body["spec"]["traffic"] == [{"percent": 100, "tag": "stable", "revisionName": "hello-2"}]
    (ready,) = body["status"]["conditions"]
    assert ready == {
        "type": "Ready",
        "status": "False",
        "reason": "RevisionFailed",
        "message": "the container did not listen",
    }
    assert body["status"]["latestCreatedRevisionName"] == "hello-3"
    assert body["status"]["latestReadyRevisionName"] == "hello-2"


def test_the_configuration_file_keeps_the_users_keys(tmp_path):
    environ = {"CLOUDSDK_CONFIG": str(tmp_path), "PATH": ""}  # no gcloud to ask
    (tmp_path / "active_config").write_text("work")
    path = tmp_path / "configurations" / "config_localcloud"
    path.parent.mkdir()
    path.write_text("[core]\nproject = old\naccount = me@example.com\n")
    values = gcloud.properties("http://0.0.0.0:8090", "http://127.0.0.1:4443", "p", "us-east1")
    written = gcloud.write(values, environ=environ)
    assert written.path == path
    assert (written.active, written.verified) == ("work", False)
    ini = configparser.ConfigParser()
    ini.read(path)
    assert ini["core"]["project"] == "p"
    assert ini["core"]["account"] == "me@example.com"
    assert ini["api_endpoint_overrides"]["run"] == "http://127.0.0.1:8090/"
    assert ini["api_endpoint_overrides"]["storage"] == "http://127.0.0.1:4443/storage/v1/"
    assert dict(ini["proxy"]) == {"type": "http", "address": "127.0.0.1", "port": "8090"}
    assert ini["run"]["region"] == "us-east1"
    assert (tmp_path / "active_config").read_text() == "work"
    assert gcloud.write(values, activate=True, environ=environ).active == "localcloud"

"""The HTTP/JSON routes are every served method's HTTP bindings, and tell them apart.

No server here: the routes are built from the same servicer classes the server registers
(the discovery ``test_request_validation.py`` holds complete against ``LocalCloud``) and
the bindings generated from googleapis (``api_annotations.json``'s ``http``).
"""

from __future__ import annotations

import pytest
from google.protobuf import field_mask_pb2
from google.pubsub_v1 import types as pubsub_types

from localcloud.core import wire
from localcloud.core.errors import InvalidFields
from localcloud.rest import transcode
from localcloud.rest.front import Front, http_rules
from localcloud.rest.templates import Template, TemplateError, split_verb
from tests.integration.test_request_validation import SERVED

FRONT = Front([wire.bind(service, None, spec, None) for service, spec in SERVED], 1 << 20)


def test_every_served_method_has_a_route_but_streaming_pull():
    routed = {route.bound.method for route in FRONT.routes}
    served = {f"{service}/{spec.name}" for service, spec in SERVED}
    assert served - routed == {"google.pubsub.v1.Subscriber/StreamingPull"}
    assert set(FRONT.unserved) == {"google.pubsub.v1.Subscriber/StreamingPull"}


def test_every_binding_of_a_method_is_a_route():
    """additional_bindings too: Cloud Build's legacy and location paths, the mixins' paths
    from every API's service configuration."""
    rules = http_rules()
    for method in {route.bound.method for route in FRONT.routes}:
        routes = {
            (r.http_method, r.template.source) for r in FRONT.routes if r.bound.method == method
        }
        assert routes == {(b["method"], b["path"]) for b in rules[method]}, method


@pytest.mark.parametrize(
    "route", FRONT.routes, ids=lambda r: f"{r.http_method} {r.template.source}"
)
def test_no_route_shadows_another(route):
    found = FRONT.resolve(route.http_method, route.template.example())
    assert not isinstance(found, set), found
    assert found[0].bound.method == route.bound.method, found[0].template.source


def test_the_mixins_are_served_under_each_apis_paths():
    paths = {(r.bound.method, r.template.source, r.source) for r in FRONT.routes}
    assert (
        "google.iam.v1.IAMPolicy/GetIamPolicy",
        "/v1/{resource=projects/*/topics/*}:getIamPolicy",
        "google/pubsub/v1/pubsub_v1.yaml",
    ) in paths
    assert (
        "google.longrunning.Operations/GetOperation",
        "/v2/{name=projects/*/locations/*/operations/*}",
        "google/cloud/run/v2/run_v2.yaml",
    ) in paths


def test_a_custom_verb_is_never_taken_for_an_id():
    """GET .../topics/t:publish is the publish path asked with the wrong method, not the
    topic ``t:publish``."""
    assert FRONT.resolve("GET", "/v1/projects/p/topics/t:publish") == {"POST"}
    route, variables = FRONT.resolve("POST", "/v1/projects/p/topics/t:publish")  # type: ignore[misc]
    assert route.bound.method == "google.pubsub.v1.Publisher/Publish"
    assert variables == {"topic": "projects/p/topics/t"}


def test_templates():
    t = Template.parse("/v1/{name=operations/**}")
    assert t.match("/v1/operations/a/b%2Fc") == {"name": "operations/a/b/c"}
    t = Template.parse("/v1/projects/{project_id}/builds/{id}:cancel")
    assert (t.verb, t.match("/v1/projects/p/builds/b")) == (
        "cancel",
        {"project_id": "p", "id": "b"},
    )
    assert t.match("/v1/projects/p/builds/b/c") is None
    assert split_verb("/v1/projects/p/topics/t:publish") == ("/v1/projects/p/topics/t", "publish")
    assert split_verb("/v1/a:b/c") == ("/v1/a:b/c", "")
    with pytest.raises(TemplateError):
        Template.parse("v1/x")


def test_query_parameters_bind_nested_repeated_and_well_known_fields():
    request = pubsub_types.UpdateSubscriptionRequest.pb()()
    transcode.parse_query(
        [
            ("subscription.ackDeadlineSeconds", "30"),
            ("subscription.retain_acked_messages", "true"),
            ("updateMask", "ackDeadlineSeconds,retainAckedMessages"),
        ],
        request,
        set(),
        "",
    )
    assert request.subscription.ack_deadline_seconds == 30
    assert request.subscription.retain_acked_messages is True
    assert request.update_mask == field_mask_pb2.FieldMask(
        paths=["ack_deadline_seconds", "retain_acked_messages"]
    )
    acks = pubsub_types.AcknowledgeRequest.pb()()
    transcode.parse_query([("ackIds", "a"), ("ackIds", "b")], acks, set(), "")
    assert list(acks.ack_ids) == ["a", "b"]


@pytest.mark.parametrize(
    ("pairs", "bound", "body", "words"),
    [
        ([("nope", "1")], set(), "", 'Unknown name "nope"'),
        ([("pageSize", "ten")], set(), "", "Invalid value at 'pageSize'"),
        ([("pageSize", "1")], set(), "*", 'Unknown name "pageSize"'),  # body "*": no query
        ([("project", "projects/x")], {"project"}, "", 'Unknown name "project"'),
        ([("pageSize", "1"), ("pageSize", "2")], set(), "", "more than once"),
    ],
)
def test_bad_query_parameters_are_invalid_argument_naming_them(pairs, bound, body, words):
    with pytest.raises(InvalidFields, match=words):
        transcode.parse_query(pairs, pubsub_types.ListTopicsRequest.pb()(), bound, body)


def test_a_bad_body_names_the_problem():
    with pytest.raises(InvalidFields, match="Invalid JSON payload received"):
        transcode.parse_body(b'{"name": ', pubsub_types.Topic.pb()(), "")
    with pytest.raises(InvalidFields, match="Unknown name \"bogus\" at 'topic': Cannot find field"):
        transcode.parse_body(b'{"bogus": 1}', pubsub_types.Topic.pb()(), "topic")


def test_a_field_mask_parameter_takes_the_protos_own_snake_case_names_too():
    """gcloud sends ``updateMask=build_config.entry_point,...`` and Google takes it."""
    request = pubsub_types.UpdateSubscriptionRequest.pb()()
    transcode.parse_query(
        [("updateMask", "ack_deadline_seconds,push_config.push_endpoint,labels")],
        request,
        set(),
        "",
    )
    assert request.update_mask == field_mask_pb2.FieldMask(
        paths=["ack_deadline_seconds", "push_config.push_endpoint", "labels"]
    )

"""The console's deployments pages, rendered on the server from status events and records,
served by the console's own server on loopback and read over HTTP (no browser: the
browser tests are in tests/e2e/test_console.py)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html import unescape

import pytest
import requests

from localcloud import testing
from orch.console.model import Store
from orch.console.readers import RecordsReader
from orch.console.server import Console, serve
from orchestrator.config import Settings
from orchestrator.status import StatusEvent, from_message, to_message

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
SOURCE = "gs://p-sources/hello.zip#1700000000000001"


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def event(
    dep: str, step: str, state: str, when: float, message: str = "", **kw: object
) -> StatusEvent:
    """An event as a subscriber receives it: through the wire format and back."""
    sent = StatusEvent(
        deployment_id=dep,
        service=str(kw.pop("service", "hello")),
        step=step,
        state=state,
        message=message,
        source_uri=SOURCE,
        time=at(when),
        **kw,  # type: ignore[arg-type]
    )
    data, attributes, _ = to_message(sent)
    return from_message(data, attributes)


def succeeded_run(dep: str, start: float = 0.0, service: str = "hello") -> list[StatusEvent]:
    t = start
    events = [event(dep, "accepted", "succeeded", t + 0.2, service=service)]
    for i, step in enumerate(("build", "push", "deploy", "bind_triggers")):
        begin = t + 1 + i * 3
        events.append(event(dep, step, "running", begin, f"{step}ing", service=service))
        details: dict[str, object] = {"seconds": 2.5}
        if step == "deploy":
            details.update(url="https://hello-abc.run.app", revision="hello-00002-xyz")
        events.append(event(dep, step, "succeeded", begin + 2.5, details=details, service=service))
    events.append(
        event(
            dep,
            "done",
            "succeeded",
            t + 13,
            details={"url": "https://hello-abc.run.app", "revision": "hello-00002-xyz"},
            service=service,
        )
    )
    return events


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def console(store: Store) -> Iterator[str]:
    settings = Settings.defaults("p")
    server = serve(Console(settings, None, store), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def steps_of(html: str) -> dict[str, tuple[str, str]]:
    """{step: (state, duration text)} from a deployment page."""
    found = {}
    for match in re.finditer(
        r'<li class="step" data-step="(\w+)" data-state="(\w+)">.*?<span class="duration">([^<]*)</span>',
        html,
        re.S,
    ):
        found[match[1]] = (match[2], match[3])
    return found


def test_a_succeeded_deployment_shows_five_steps_with_durations_url_and_source(store, console):
    for e in succeeded_run("d-1"):
        store.apply_event(e)
    html = requests.get(f"{console}/deployments/d-1", timeout=10).text
    assert steps_of(html) == {
        "accepted": ("succeeded", ""),
        "build": ("succeeded", "2.5 s"),
        "push": ("succeeded", "2.5 s"),
        "deploy": ("succeeded", "2.5 s"),
        "bind_triggers": ("succeeded", "2.5 s"),
    }
    assert 'id="deployment-state" role="status">succeeded<' in html
    assert 'href="https://hello-abc.run.app"' in html
    assert "hello-00002-xyz" in html
    assert '<dd class="source">gs://p-sources/hello.zip</dd>' in html
    assert '<dd class="generation">1700000000000001</dd>' in html


def test_bars_sit_on_one_time_axis(store, console):
    for e in succeeded_run("d-1"):
        store.apply_event(e)
    html = requests.get(f"{console}/deployments/d-1", timeout=10).text
    bars = dict(re.findall(r'data-step="(\w+)".*?class="gap" style="width: ([\d.]+)%', html, re.S))
    # The axis runs from the first event (accepted, at 0.2 s) to done (13 s): build starts
    # at 1 s, bind_triggers at 10 s.
    assert float(bars["accepted"]) == 0
    assert float(bars["build"]) == pytest.approx(0.8 / 12.8 * 100, abs=0.1)
    assert float(bars["bind_triggers"]) == pytest.approx(9.8 / 12.8 * 100, abs=0.1)


def test_a_failed_step_shows_its_code_reason_and_build_log_tail(store, console):
    dep = "d-2"
    store.apply_event(event(dep, "accepted", "succeeded", 0.1))
    store.apply_event(event(dep, "build", "running", 1, "building"))
    details = {
        "build_id": "b-1",
        "log_url": "https://console.cloud.google.com/cloud-build/builds/b-1",
        "log_tail": ["Collecting no-such-package", "ERROR: No matching distribution"],
        "seconds": 4.0,
    }
    store.apply_event(
        event(
            dep,
            "build",
            "failed",
            5,
            "the build failed: pip <could not> install",
            error_code="BUILD_FAILED",
            details=details,
        )
    )
    html = requests.get(f"{console}/deployments/{dep}", timeout=10).text
    assert steps_of(html)["build"] == ("failed", "4.0 s")
    assert steps_of(html)["push"] == ("pending", "")
    assert "<strong>BUILD_FAILED</strong>: the build failed: pip &lt;could not&gt; install" in html
    assert "ERROR: No matching distribution" in html
    assert 'href="https://console.cloud.google.com/cloud-build/builds/b-1"' in html
    listing = requests.get(f"{console}/deployments", timeout=10).text
    assert 'data-deployment="d-2" data-state="failed"' in listing
    assert "BUILD_FAILED: the build failed" in unescape(listing)


def test_a_refused_upload_fails_at_accepted(store, console):
    store.apply_event(
        event(
            "d-3",
            "accepted",
            "failed",
            0,
            "hello.zip is not a zip archive",
            error_code="INVALID_ARCHIVE",
        )
    )
    html = requests.get(f"{console}/deployments/d-3", timeout=10).text
    assert steps_of(html)["accepted"][0] == "failed"
    assert "<strong>INVALID_ARCHIVE</strong>: hello.zip is not a zip archive" in html
    assert 'role="status">failed<' in html


def test_a_deployment_waiting_for_the_service_lock_says_for_which(store, console):
    store.apply_event(event("d-5", "accepted", "succeeded", 0))
    store.apply_event(
        event(
            "d-5",
            "build",
            "running",
            1,
            "waiting: deployment d-4 of service hello is in progress",
            details={"waiting_for": "d-4"},
        )
    )
    html = requests.get(f"{console}/deployments/d-5", timeout=10).text
    assert steps_of(html)["build"][0] == "waiting"
    assert 'data-waited-for="d-4"' in html and "waiting" in html
    listing = requests.get(f"{console}/deployments?state=waiting", timeout=10).text
    assert 'data-deployment="d-5" data-state="waiting"' in listing
    # Once it runs, the wait stays on the page as a fact, and the build's own time starts.
    store.apply_event(event("d-5", "build", "running", 4, "building"))
    store.apply_event(event("d-5", "build", "succeeded", 6, details={"seconds": 2.0}))
    html = requests.get(f"{console}/deployments/d-5", timeout=10).text
    assert steps_of(html)["build"] == ("succeeded", "2.0 s")
    assert "waited 3.0 s for deployment" in html


def test_a_late_running_event_never_undoes_an_end(store, console):
    events = succeeded_run("d-6")
    for e in events:
        store.apply_event(e)
    store.apply_event(events[1])  # build running, delivered again
    html = requests.get(f"{console}/deployments/d-6", timeout=10).text
    assert steps_of(html)["build"] == ("succeeded", "2.5 s")


def test_records_alone_draw_the_timeline(store, console):
    """History from before the console started: the claim and the saved step results."""
    claim = {
        "deployment_id": "d-7",
        "service": "hello",
        "source": SOURCE,
        "execution": "projects/p/locations/us-central1/workflows/deploy/executions/e1",
        "state": "accepted",
        "created": at(0),
    }
    results = {
        "build": ({"image": "x", "seconds": 3.0}, T0 + timedelta(seconds=4)),
        "push": ({"digest": "sha256:1", "seconds": 1.0}, T0 + timedelta(seconds=5)),
        "deploy": (
            {"url": "http://hello.localhost", "revision": "hello-00001-a", "seconds": 2.0},
            T0 + timedelta(seconds=7),
        ),
        "bind_triggers": ({"triggers": [], "seconds": 0.5}, T0 + timedelta(seconds=8)),
    }
    store.apply_records(claim, (T0, T0 + timedelta(seconds=0.5)), results)
    html = requests.get(f"{console}/deployments/d-7", timeout=10).text
    assert steps_of(html) == {
        "accepted": ("succeeded", "0.5 s"),
        "build": ("succeeded", "3.0 s"),
        "push": ("succeeded", "1.0 s"),
        "deploy": ("succeeded", "2.0 s"),
        "bind_triggers": ("succeeded", "0.5 s"),
    }
    assert 'role="status">succeeded<' in html
    assert 'href="http://hello.localhost"' in html


def test_records_show_a_failure_and_a_wait_for_the_lock(store, console):
    base = {"service": "hello", "source": SOURCE, "created": at(0), "state": "accepted"}
    store.apply_records(
        {**base, "deployment_id": "d-8", "execution": "e8"},
        (T0, T0),
        {
            "build": (
                {
                    "error": {"code": "BUILD_FAILED", "message": "pip failed"},
                    "details": {"log_tail": ["boom"]},
                },
                T0,
            )
        },
    )
    store.apply_records({**base, "deployment_id": "d-9", "execution": "e9"}, (T0, T0), {}, "d-1")
    failed = requests.get(f"{console}/deployments/d-8", timeout=10).text
    assert steps_of(failed)["build"][0] == "failed"
    assert "<strong>BUILD_FAILED</strong>: pip failed" in failed and "boom" in failed
    waiting = requests.get(f"{console}/deployments/d-9", timeout=10).text
    assert steps_of(waiting)["build"][0] == "waiting"
    assert 'data-waited-for="d-1"' in waiting


def test_the_list_is_newest_first_and_filters_by_service_and_state(store, console):
    for i in range(5):
        for e in succeeded_run(f"d-{i}", start=i * 100, service="even" if i % 2 == 0 else "odd"):
            store.apply_event(e)
    store.apply_event(
        event("d-9", "accepted", "failed", 900, "bad", error_code="INVALID_MANIFEST", service="odd")
    )
    listing = requests.get(f"{console}/deployments", timeout=10).text
    assert re.findall(r'data-deployment="([\w-]+)"', listing) == [
        "d-9",
        "d-4",
        "d-3",
        "d-2",
        "d-1",
        "d-0",
    ]
    odd = requests.get(f"{console}/deployments?service=odd", timeout=10).text
    assert re.findall(r'data-deployment="([\w-]+)"', odd) == ["d-9", "d-3", "d-1"]
    failed = requests.get(f"{console}/deployments?service=odd&state=failed", timeout=10).text
    assert re.findall(r'data-deployment="([\w-]+)"', failed) == ["d-9"]


def test_a_thousand_deployments_render_and_an_unchanged_page_is_not_sent_again(store, console):
    for i in range(1000):
        for e in succeeded_run(f"d-{i:04d}", start=i * 20.0):
            store.apply_event(e)
    response = requests.get(f"{console}/deployments?fragment=1", timeout=30)
    rows = re.findall(r'data-deployment="(d-\d+)" data-state="(\w+)"', response.text)
    assert len(rows) == 1000
    assert rows[0][0] == "d-0999" and rows[-1][0] == "d-0000"
    assert {state for _, state in rows} == {"succeeded"}
    assert "<html" not in response.text  # the live part only
    again = requests.get(
        f"{console}/deployments?fragment=1",
        headers={"If-None-Match": response.headers["ETag"]},
        timeout=30,
    )
    assert again.status_code == 304
    store.apply_event(event("d-new", "accepted", "succeeded", 30000))
    changed = requests.get(
        f"{console}/deployments?fragment=1",
        headers={"If-None-Match": response.headers["ETag"]},
        timeout=30,
    )
    assert changed.status_code == 200 and 'data-deployment="d-new"' in changed.text


def test_an_unknown_deployment_and_an_unreachable_source_are_said_on_the_page(store, console):
    store.records_loaded = True
    store.set_error(
        "records bucket gs://p-orch-records",
        "deployment history unavailable: ServiceUnavailable: no route",
    )
    response = requests.get(f"{console}/deployments/d-nope", timeout=10)
    assert response.status_code == 404
    assert "No deployment d-nope" in response.text
    assert 'role="alert"' in response.text and "ServiceUnavailable: no route" in response.text
    assert "Traceback" not in response.text


def test_another_host_name_and_a_cross_site_upload_are_refused(console):
    port = console.rsplit(":", 1)[1]
    rebound = requests.get(
        f"{console}/deployments", headers={"Host": f"evil.example:{port}"}, timeout=10
    )
    assert rebound.status_code == 421
    posted = requests.post(
        f"{console}/deploy",
        headers={"Origin": "https://evil.example"},
        files={"archive": ("x.zip", b"PK")},
        timeout=10,
    )
    assert posted.status_code == 403 and "evil.example" in unescape(posted.text)
    forged = requests.post(f"{console}/deploy", files={"archive": ("x.zip", b"PK")}, timeout=10)
    assert forged.status_code == 403 and "reload the page" in forged.text


def form_token(console: str) -> str:
    page = requests.get(f"{console}/deploy", timeout=10).text
    return re.search(r'name="token" value="([^"]+)"', page)[1]  # type: ignore[index]


def test_the_upload_form_says_what_is_wrong_before_anything_is_written(console):
    token = form_token(console)
    bad_key = requests.post(
        f"{console}/deploy",
        data={"token": token, "overrides": "max_instances=many"},
        files={"archive": ("fn.zip", b"PK\x05\x06" + b"\0" * 18)},
        timeout=10,
    )
    assert bad_key.status_code == 400
    assert "max_instances: &#39;many&#39; is not an integer" in bad_key.text
    escaping = requests.post(
        f"{console}/deploy",
        data={"token": token},
        files=[("folder", ("../outside/main.py", b"x"))],
        timeout=10,
    )
    assert escaping.status_code == 400 and "is not a path inside the folder" in escaping.text
    nothing = requests.post(f"{console}/deploy", data={"token": token}, timeout=10)
    assert nothing.status_code == 400 and "choose a zip file or a folder" in nothing.text
    bad_service = requests.post(
        f"{console}/deploy",
        data={"token": token, "service": "Not_A_Name"},
        files={"archive": ("fn.zip", b"PK")},
        timeout=10,
    )
    assert bad_service.status_code == 400 and "service:" in bad_service.text


def test_an_api_that_cannot_be_reached_is_on_the_page_at_once(store):
    """Cloud Run at a port nobody listens on: the services page says so, with the reason,
    within the request, rather than after the client's own minute of retries (the page's
    refresh is the retry)."""
    from orchestrator.clients import Clients, Environment

    closed = f"127.0.0.1:{testing.free_port()}"
    env = Environment("p", "us-central1", closed, closed, f"http://{closed}")
    settings = Settings.defaults("p")
    server = serve(Console(settings, Clients(env), store), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page = requests.get(f"http://127.0.0.1:{server.server_port}/services", timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert page.status_code == 502
    assert 'role="alert"' in page.text and "cannot be read" in page.text
    assert "Traceback" not in page.text
    # The history too (Cloud Storage, whose client retries a refused connection for two
    # minutes by default): a refresh fails, naming why, well before that.
    reader = RecordsReader(Clients(env), settings, store)
    failed: list[BaseException] = []

    def refresh() -> None:
        try:
            reader.refresh()
        except Exception as exc:
            failed.append(exc)

    worker = threading.Thread(target=refresh, daemon=True)
    worker.start()
    worker.join(30)
    reader.close()
    assert failed, "a refresh against an unreachable bucket neither failed nor ended"


def test_the_default_port_is_none_of_localclouds():
    """`make demo` leaves localcloud on its default ports; `orch console` beside it must
    start on its own default (it once took 8090, localcloud's HTTP port)."""
    from localcloud.core.config import Config
    from orch.cli import CONSOLE_PORT
    from orch.console import DEFAULT_PORT

    defaults = Config()
    taken = {defaults.grpc_port, defaults.storage_port, defaults.registry_port, defaults.http_port}
    assert DEFAULT_PORT == CONSOLE_PORT
    assert DEFAULT_PORT not in taken

"""A deployed function is contained as on Cloud Run: each attack of issue 12, tried for real.

``tests/functions/hostile`` is deployed through the official Cloud Run client and called
through the ingress; each test makes it try what a hostile tenant would (write host
sysctls, reach another instance's port, exhaust memory, fork without end, flood its log)
and checks from the host that nothing happened beyond the instance.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from urllib.parse import quote

import pytest

from localcloud.core.oidc import owner_email
from localcloud.run import sandbox
from localcloud.testing import Recorder, call, wait_for
from tests.integration.test_cloud_run import issuer

pytestmark = pytest.mark.skipif(
    sandbox.bwrap_available() is None, reason="bubblewrap (bwrap) is not installed"
)


@pytest.fixture(scope="module")
def hostile_image(build_image) -> str:
    return build_image("hostile", "hostile")


@pytest.fixture(scope="module")
def isolation(localcloud) -> dict:
    _, body = call(f"{localcloud.config.http_url}/healthz")
    return json.loads(body)["sandbox"]


def needs(isolation: dict, what: str) -> None:
    missing = isolation["not_enforced"]
    if what in missing:
        pytest.skip(f"{what} is not enforced on this machine: {missing[what]}")


def ask(service, **params: str) -> tuple[int, str]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return call(f"{service.uri}/?{query}", timeout=60)


def host_address() -> str | None:
    """This machine's address on its network (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def refused(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return False
    except OSError:
        return True


def revision_log(localcloud, service) -> str:
    path = Path(localcloud.config.data_dir) / "logs" / "run"
    name = service.latest_ready_revision.rsplit("/", 1)[-1]
    return "".join(
        p.read_text(errors="replace") for p in sorted(path.glob(f"{name}.log*"), reverse=True)
    )


def test_a_function_runs_as_nobody_and_cannot_change_the_hosts_kernel(
    hostile_image, deploy, isolation
):
    before = Path("/proc/sys/kernel/core_pattern").read_text()
    service = deploy(hostile_image, public=True)
    status, body = ask(service, do="sysctl")
    assert status == 200, body
    tried = json.loads(body)
    assert tried["core_pattern"]["ok"] is False, tried
    assert tried["sysrq_trigger"]["ok"] is False, tried
    assert Path("/proc/sys/kernel/core_pattern").read_text() == before

    status, body = ask(service, do="identity")
    assert status == 200, body
    me = json.loads(body)
    assert me["uid"] == 0  # root inside, as in a Cloud Run container...
    assert me["uid_map"][0] == "0"
    assert me["uid_map"][1] != "0"  # ...and never root outside
    if os.geteuid() == 0:
        assert me["uid_map"][1] == str(sandbox.NOBODY)
    assert me["no_new_privs"] == "1"
    needs(isolation, "seccomp filter")
    assert me["seccomp"] == "2"  # a filter is loaded
    assert me["unshare_user"]["ok"] is False  # no new user namespace to regain privileges


def test_a_private_instance_is_reachable_only_through_the_ingress(
    localcloud, hostile_image, deploy, isolation
):
    needs(isolation, "network isolation")
    private = deploy(hostile_image)
    neighbour = deploy(hostile_image, public=True)
    token = issuer(localcloud).mint_id_token(private.uri, owner_email("local-project"))
    status, body = call(f"{private.uri}/?do=identity", token=token)
    assert status == 200, body
    port = int(json.loads(body)["port"])
    assert call(f"{private.uri}/?do=identity")[0] in (401, 403)  # no token: refused

    # From the host: the instance's port exists on no host address.
    assert refused("127.0.0.1", port)
    address = host_address()
    if address is not None:
        assert refused(address, port)

    # From another function: not on its loopback, not through the host's address either.
    for host in ["127.0.0.1", *([address] if address else [])]:
        status, body = ask(neighbour, do="connect", host=host, port=str(port))
        assert status == 200, body
        assert json.loads(body)["result"]["ok"] is False, (host, body)
    status, body = ask(neighbour, do="listening")
    assert status == 200, body
    assert port not in json.loads(body)  # another instance's sockets are not even visible

    # localcloud's own APIs stay reachable from inside (the storage port, for example).
    storage_port = localcloud.config.storage_port
    status, body = ask(neighbour, do="connect", host="127.0.0.1", port=str(storage_port))
    assert json.loads(body)["result"]["ok"] is True, body


def test_memory_over_the_limit_kills_the_instance_and_the_next_request_gets_a_new_one(
    localcloud, hostile_image, deploy, isolation
):
    needs(isolation, "memory, cpu and process limits")
    service = deploy(
        hostile_image,
        public=True,
        limits={"memory": "128Mi", "cpu": "1"},
    )
    status, body = ask(service, do="identity")
    assert status == 200, body
    status, body = ask(service, do="alloc", mb="400")
    assert status >= 500, body  # the instance died mid-request
    # The request ends as the instance dies; the log line follows once its exit is seen.
    wait_for(
        lambda: "Memory limit of 128 MiB exceeded" in revision_log(localcloud, service),
        30,
        "the memory limit's line in the revision's log",
    )
    status, body = ask(service, do="identity")
    assert status == 200, body  # served by a fresh instance

    # /tmp is in memory and counts against the limit: 400 MB do not fit in 128 MiB.
    status, body = ask(service, do="tmp", mb="400")
    if status == 200:
        assert json.loads(body)["errno"] is not None, body
        assert json.loads(body)["written_mb"] < 128
    else:
        assert status >= 500, body


def test_an_instance_that_dies_mid_request_is_a_503_and_the_request_runs_once(
    localcloud, hostile_image, deploy
):
    """Issue 14: the function reports that it was entered, then kills its whole instance
    before answering. The ingress must not send the request again (aiohttp would: a GET
    is idempotent): the client gets Cloud Run's 503, the function ran once, and the
    revision's log says what happened."""
    recorder = Recorder(localcloud.config.run_host_ports[0])
    try:
        service = deploy(hostile_image, public=True)
        status, body = ask(service, do="die", tag="once", report=quote(recorder.url, safe=""))
        assert status == 503, body
        # The function reports before it dies, and any second run would have reported
        # (and died) before the client was answered: what arrived is all there is.
        assert recorder.events == [{"entered": "once"}]
        wait_for(
            lambda: "Container terminated on signal 9" in revision_log(localcloud, service),
            30,
            "the revision's log to say the instance was killed",
        )
        assert "answered 503, not sent again" in revision_log(localcloud, service)
        assert ask(service, do="identity")[0] == 200  # a fresh instance serves
    finally:
        recorder.close()


def test_a_fork_bomb_is_contained(localcloud, hostile_image, deploy, isolation):
    needs(isolation, "memory, cpu and process limits")
    service = deploy(hostile_image, public=True)
    status, body = ask(service, do="fork", n="5000")
    assert status == 200, (body, revision_log(localcloud, service)[-3000:])
    result = json.loads(body)
    assert result["errno"] is not None, result  # fork failed (EAGAIN) before 5,000
    assert result["forked"] < 1024
    assert ask(service, do="identity")[0] == 200  # and the instance still serves


def test_a_log_flood_is_capped_and_rotated(localcloud, hostile_image, deploy):
    service = deploy(hostile_image, public=True)
    cap = localcloud.config.run_log_max_bytes
    flood_mb = 3 * cap // (1 << 20) + 1
    status, body = ask(service, do="flood", mb=str(flood_mb))
    assert status == 200, body
    # The function returned after its last write: all but a pipe's worth is in the log.
    path = Path(localcloud.config.data_dir) / "logs" / "run"
    name = service.latest_ready_revision.rsplit("/", 1)[-1]
    files = sorted(path.glob(f"{name}.log*"))
    assert [p.name for p in files] == [f"{name}.log", f"{name}.log.1"]
    assert all(p.stat().st_size <= cap for p in files)
    assert sum(p.stat().st_size for p in files) < flood_mb << 20

"""A build's life through the official ``google-cloud-build`` client: QUEUED beyond the
concurrency limit, then WORKING; cancelled while queued or working (and the pip it runs
killed); timed out; its status changes published; and what a restart, a crash or a
graceful stop of localcloud leaves of it.

Expectations from https://cloud.google.com/build/docs/api/reference/rest/v1/projects.builds
and https://cloud.google.com/build/docs/subscribe-build-notifications.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud.devtools import cloudbuild_v1
from google.rpc import code_pb2

from localcloud import testing
from localcloud.testing import image_name, pack_build, run_build, wait_for, zip_tree
from orchestrator.clients import Clients

PROJECT = "local-project"
S = cloudbuild_v1.Build.Status
HELLO = {"main.py": "def hello(request):\n    return 'hello'\n"}
TARGET = {"GOOGLE_FUNCTION_TARGET": "hello"}
RUNTIME = f"python{sys.version_info[0]}{sys.version_info[1]}"


# -- helpers ----------------------------------------------------------------------------
def build_limit() -> int:
    """The session instance's concurrent build limit: LOCALCLOUD_BUILD_LIMIT, else the CPUs."""
    return int(os.environ.get("LOCALCLOUD_BUILD_LIMIT") or 0) or os.cpu_count() or 2


def status_of(clients: Clients, build_id: str) -> int:
    return clients.cloud_build.get_build(project_id=PROJECT, id=build_id).status


def processes_with(marker: str) -> list[int]:
    """Live processes (not zombies) whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


@contextlib.contextmanager
def hanging_index() -> Iterator[str]:
    """A requirement whose download never answers: pip sits in a socket read (for its
    180 s default timeout), so the build stays WORKING until cancelled or timed out."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)  # never accept(): the kernel completes the handshake, nobody answers
    port = server.getsockname()[1]
    try:
        yield f"hangpkg @ http://127.0.0.1:{port}/hangpkg-0.1-py3-none-any.whl"
    finally:
        server.close()


def hanging_files(requirement: str) -> dict[str, str]:
    return {**HELLO, "requirements.txt": f"{requirement}\n# {uuid.uuid4()}\n"}


def start_hanging(
    clients: Clients, upload: Callable[[bytes], tuple[str, str, int]], requirement: str, name: str
) -> tuple[Any, str]:
    """Start a build whose pip hangs on ``requirement``; once pip runs, its operation and id."""
    op = clients.cloud_build.create_build(
        project_id=PROJECT,
        build=pack_build(upload(zip_tree(hanging_files(requirement))), image_name(name), TARGET),
    )
    build_id = op.metadata.build.id
    wait_for(lambda: processes_with(f"{build_id[:8]}-"), 30, "pip of the running build")
    return op, build_id


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture
def cleanup_builds(clients) -> Iterator[list[str]]:
    """Build ids to cancel at the end whatever happens, so no test leaves a slot taken."""
    ids: list[str] = []
    yield ids
    for build_id in ids:
        with contextlib.suppress(exceptions.GoogleAPICallError):
            clients.cloud_build.cancel_build(project_id=PROJECT, id=build_id)


# -- queued, working, cancelled, timed out ----------------------------------------------
def test_builds_beyond_the_limit_stay_queued_then_run(localcloud, clients, sources):
    """The session instance runs at most os.cpu_count() builds at once (2 on CI); the rest
    wait QUEUED and then run. Each build pip-installs (different requirements)."""
    limit = build_limit()
    count = limit + 2
    tag = f"limit-{uuid.uuid4().hex[:8]}"
    ids = []
    for _ in range(count):
        files = {**HELLO, "requirements.txt": f"localgreeting==0.1.0\n# {uuid.uuid4()}\n"}
        build = pack_build(sources(zip_tree(files)), image_name("limit"), TARGET, tags=[tag])
        op = clients.cloud_build.create_build(project_id=PROJECT, build=build)
        ids.append(op.metadata.build.id)

    max_working, saw_queue = 0, False
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        # One ListBuilds is one consistent snapshot of all of them.
        snapshot = list(clients.cloud_build.list_builds(project_id=PROJECT, filter=f'tags="{tag}"'))
        assert {b.id for b in snapshot} == set(ids)
        working = sum(b.status == S.WORKING for b in snapshot)
        max_working = max(max_working, working)
        if working == limit and any(b.status == S.QUEUED for b in snapshot):
            saw_queue = True
        if all(b.status not in (S.QUEUED, S.WORKING) for b in snapshot):
            break
        time.sleep(0.05)
    else:
        pytest.fail("builds did not finish in 90 s")
    final = {b.id: b for b in snapshot}
    assert all(b.status == S.SUCCESS for b in final.values()), [
        (b.id, S(b.status).name, b.status_detail) for b in final.values()
    ]
    assert max_working <= limit
    assert saw_queue, "no build was ever seen QUEUED while the limit was reached"
    # Each installed its own requirements (no cache hit between different files).
    for build_id in ids:
        log = Path(localcloud.config.data_dir, "logs", "builds", f"{build_id}.log").read_text()
        assert re.search(r"dependencies layer \S+ \(installed\)", log), log


def test_cancel_a_queued_build_and_the_pip_of_working_ones(
    localcloud, clients, sources, cleanup_builds
):
    """Fill every slot with builds whose pip hangs; a further build stays QUEUED and can be
    cancelled; cancelling the working ones kills their pip; the slots are free again."""
    limit = build_limit()
    with hanging_index() as requirement:
        blockers = []
        for _ in range(limit):
            op = clients.cloud_build.create_build(
                project_id=PROJECT,
                build=pack_build(
                    sources(zip_tree(hanging_files(requirement))), image_name("block"), TARGET
                ),
            )
            blockers.append(op.metadata.build.id)
            cleanup_builds.append(op.metadata.build.id)
        for build_id in blockers:
            wait_for(lambda b=build_id: processes_with(f"{b[:8]}-"), 30, "pip of a blocker")
            assert status_of(clients, build_id) == S.WORKING

        queued_op = clients.cloud_build.create_build(
            project_id=PROJECT,
            build=pack_build(sources(zip_tree(HELLO)), image_name("queued"), TARGET),
        )
        queued = queued_op.metadata.build.id
        cleanup_builds.append(queued)
        # The build's task opens its log just before it asks for a slot, and a build that
        # gets one is WORKING in the same step: once the log is there, the wait has begun.
        log = Path(localcloud.config.data_dir, "logs", "builds", f"{queued}.log")
        wait_for(log.exists, 30, "the queued build's task to ask for a slot")
        assert status_of(clients, queued) == S.QUEUED

        cancelled = clients.cloud_build.cancel_build(project_id=PROJECT, id=queued)
        assert cancelled.status == S.CANCELLED
        assert cancelled.finish_time
        assert not cancelled.start_time, "the queued build ran before it was cancelled"
        with pytest.raises(exceptions.Cancelled):
            queued_op.result(timeout=10)
        done = clients.operations.get_operation(queued_op.operation.name)
        assert done.done and done.error.code == code_pb2.CANCELLED
        meta = cloudbuild_v1.BuildOperationMetadata.deserialize(done.metadata.value)
        assert meta.build.status == S.CANCELLED  # the operation and the build agree

        # Cancelling a finished build is refused, not INTERNAL.
        with pytest.raises(exceptions.FailedPrecondition):
            clients.cloud_build.cancel_build(project_id=PROJECT, id=queued)

        for build_id in blockers:
            build = clients.cloud_build.cancel_build(project_id=PROJECT, id=build_id)
            assert build.status == S.CANCELLED
            assert build.steps[0].status == S.CANCELLED
            wait_for(lambda b=build_id: not processes_with(f"{b[:8]}-"), 10, "pip to be killed")

    # Both slots are free again: a new build runs at once.
    build = run_build(
        clients, pack_build(sources(zip_tree(HELLO)), image_name("after"), TARGET), timeout=30
    )
    assert build.status == S.SUCCESS, build.status_detail


def test_timeout_kills_pip_and_leaves_no_cache_entry(localcloud, clients, sources, cleanup_builds):
    with hanging_index() as requirement:
        files = hanging_files(requirement)
        op = clients.cloud_build.create_build(
            project_id=PROJECT,
            build=pack_build(
                sources(zip_tree(files)), image_name("timeout"), TARGET, timeout={"seconds": 3}
            ),
        )
        build_id = op.metadata.build.id
        cleanup_builds.append(build_id)
        with pytest.raises(exceptions.GoogleAPICallError):
            op.result(timeout=30)
        build = clients.cloud_build.get_build(project_id=PROJECT, id=build_id)
        assert build.status == S.TIMEOUT
        done = clients.operations.get_operation(op.operation.name)
        assert done.done and done.error.code == code_pb2.DEADLINE_EXCEEDED
        wait_for(lambda: not processes_with(f"{build_id[:8]}-"), 10, "pip to be killed")

    key = hashlib.sha256(RUNTIME.encode() + b"\0" + files["requirements.txt"].encode()).hexdigest()
    cache = Path(localcloud.config.data_dir, "build-cache")
    assert not (cache / "dependencies" / key).exists()
    wait_for(lambda: not list(cache.glob(f".{key[:12]}-*")), 5, "the partial layer to go")


def test_default_timeout_is_60_minutes(clients, sources):
    """``timeout``: "Default time is 60 minutes." (Build in the v1 reference)."""
    build = run_build(
        clients, pack_build(sources(zip_tree(HELLO)), image_name("deftimeout"), TARGET)
    )
    assert build.status == S.SUCCESS
    assert build.timeout.total_seconds() == 3600


def test_notifications_carry_the_build_json_and_attributes(
    local_target, clients, sources, build_notifications
):
    with hanging_index() as requirement:
        op, build_id = start_hanging(clients, sources, requirement, "notify2")
        # CancelOperation on the build's operation cancels the build (and notifies).
        clients.operations.cancel_operation(op.operation.name)
        assert status_of(clients, build_id) == S.CANCELLED
    final = None
    deadline = time.monotonic() + 20
    while final is None and time.monotonic() < deadline:
        response = local_target.subscriber.pull(
            request={"subscription": build_notifications, "max_messages": 50}, timeout=5
        )
        for m in response.received_messages:
            attrs = m.message.attributes
            if attrs["buildId"] != build_id:
                continue
            data = json.loads(m.message.data)
            assert data["id"] == build_id and data["status"] == attrs["status"]
            assert data["projectId"] == PROJECT  # Build JSON: camelCase field names
            if attrs["status"] not in ("QUEUED", "WORKING"):
                final = attrs["status"]
    assert final == "CANCELLED"


# -- across a restart, a crash, a graceful stop ----------------------------------------
@pytest.fixture(scope="module")
def restarted(other_localcloud):
    """On the other instance: a build whose pip hangs; then SIGKILL and start again on the
    same data dir. Returns the clients and the build's operation. (That a finished build
    and its operation come back is tests/integration/test_persistence.py's.)"""
    instance = other_localcloud.instance
    c = other_localcloud.clients()
    with hanging_index() as requirement:
        running_op, running_id = start_hanging(c, other_localcloud.upload, requirement, "run")
        orphans = processes_with(f"{running_id[:8]}-")
        instance.kill()  # no chance to finish anything
        for pid in orphans:  # the killed server's pip child, started by this test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
    again = testing.start(
        instance.config.data_dir, config=instance.config, extra_env=instance.extra_env
    )
    other_localcloud.instance = again
    return other_localcloud.clients(), running_op


@pytest.mark.slow
def test_a_build_running_at_a_crash_ends_internal_error_with_its_operation_done(restarted):
    c, running_op = restarted
    ended = c.cloud_build.get_build(project_id=PROJECT, id=running_op.metadata.build.id)
    assert ended.status == S.INTERNAL_ERROR
    assert ended.finish_time
    op = c.operations.get_operation(running_op.operation.name)
    meta = cloudbuild_v1.BuildOperationMetadata.deserialize(op.metadata.value)
    problems = [
        what
        for what, ok in [
            ("the operation is not done", op.done),
            ("the operation has no INTERNAL error", op.error.code == code_pb2.INTERNAL),
            (
                "the operation's metadata still shows the old status",
                meta.build.status == S.INTERNAL_ERROR,
            ),
            ("the pack step is still WORKING", ended.steps[0].status != S.WORKING),
        ]
        if not ok
    ]
    assert not problems, problems


@pytest.mark.slow
def test_a_build_running_at_a_graceful_stop_is_not_reported_as_user_cancelled(
    restarted, other_localcloud
):
    """Builder.start's contract: a build localcloud stopped under it ends INTERNAL_ERROR
    ("localcloud stopped while this build ran; retry it"); nobody cancelled it."""
    instance = other_localcloud.instance
    c = other_localcloud.clients()
    with hanging_index() as requirement:
        op, build_id = start_hanging(c, other_localcloud.upload, requirement, "stop")
        other_localcloud.instance = instance.restart()  # SIGTERM, then start again
    c = other_localcloud.clients()
    assert not processes_with(f"{build_id[:8]}-")
    done = c.operations.get_operation(op.operation.name)
    assert done.done
    build = c.cloud_build.get_build(project_id=PROJECT, id=build_id)
    assert build.status == S.INTERNAL_ERROR, (S(build.status).name, build.status_detail)

"""A build cancelled or timed out while its tool's sandbox is still starting ends at once,
and leaves no process behind.

Killing bwrap alone is not enough there (``procs.end_sandbox``): its child, already the
init of the sandbox's PID namespace, is not yet set to die with it, and lives on holding
the output pipe, so the build's cancel waited for it (a CancelBuild that never answered,
seen in CI). The cancels here come at random moments of the first milliseconds.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from localcloud.cloudbuild import confined
from localcloud.core import procs
from localcloud.run import sandbox

pytestmark = pytest.mark.skipif(
    sandbox.bwrap_available() is None, reason="bubblewrap (bwrap) is not installed"
)
STARTS = 200


def running_with(marker: str) -> list[int]:
    """The processes whose command line holds ``marker`` (bwrap's and the program's)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_tool_cancelled_while_its_sandbox_starts_ends_with_everything_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half the cancels come at random from the call (in bwrap's own start, often), half
    within 1 ms of bwrap's start (while it sets the sandbox up)."""
    tools = confined.Tools(tmp_path / "caches")
    marker = f"{900 + random.random():.9f}"  # sleep's argument: names this test's processes
    rng = random.Random(uuid.uuid4().int)
    started = asyncio.Event()
    start_sandbox = procs.start_sandbox

    async def noted(*argv: str, **options: object) -> asyncio.subprocess.Process:
        process = await start_sandbox(*argv, **options)
        started.set()
        return process

    monkeypatch.setattr(procs, "start_sandbox", noted)

    async def scenario() -> list[float]:
        took = []
        for attempt in range(STARTS):
            started.clear()
            task = asyncio.create_task(tools.run(["sleep", marker], tmp_path, confined.base_env()))
            if attempt % 2:
                await asyncio.wait_for(started.wait(), 10)
                await asyncio.sleep(rng.uniform(0, 0.001))
            else:
                await asyncio.sleep(rng.uniform(0, 0.01))
            task.cancel()
            cancelled = asyncio.get_running_loop().time()
            done, _ = await asyncio.wait({task}, timeout=10)
            assert done, "the cancelled tool did not end within 10 s"
            took.append(asyncio.get_running_loop().time() - cancelled)
        return took

    try:
        took = asyncio.run(scenario())
    finally:
        left = running_with(marker)
        for pid in left:
            os.kill(pid, 9)
    assert not left, f"{len(left)} processes of cancelled sandboxes still running"
    assert max(took) < 5


def test_a_cancel_still_ending_late_is_logged_with_where_it_waits(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Should a build's task take long to end again, CancelBuild's wait is logged with the
    task's stack (and the tests show localcloud's log when one fails): the hang above
    showed nothing but a client's timeout."""
    from types import SimpleNamespace

    from localcloud.cloudbuild import builder

    monkeypatch.setattr(builder, "SLOW_CANCEL", 0.05)

    async def stubborn_tool() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)  # a process that does not go at once
            raise

    async def scenario() -> Any:
        task = asyncio.create_task(stubborn_tool())
        await asyncio.sleep(0)
        build = SimpleNamespace(status=builder.S.WORKING)
        fake = SimpleNamespace(tasks={"b1": task}, get=lambda project, build_id: build)
        answer = await builder.Builder.cancel(fake, "p", "b1")  # type: ignore[arg-type]
        assert task.done()
        return answer

    with caplog.at_level("WARNING", logger=builder.LOG.name):
        asyncio.run(scenario())
    (record,) = [r for r in caplog.records if "after its cancel" in r.getMessage()]
    assert "build b1 is still ending" in record.getMessage()
    assert "stubborn_tool" in record.getMessage()

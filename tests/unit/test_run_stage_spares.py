"""What the spares of a base leave behind: no mount per spare (the stage reuses a staged
directory above), no tree of an earlier run given the same pid."""

from __future__ import annotations

import os

from localcloud.run import stage
from localcloud.run.prestart import Prestarts


def test_a_path_under_a_staged_directory_adds_no_mount(tmp_path, monkeypatch):
    mounts: list[tuple[object, ...]] = []
    monkeypatch.setattr(stage, "STAGE", str(tmp_path / "stage"))
    monkeypatch.setattr(stage, "_isolated", True)
    monkeypatch.setattr(stage, "_staged", {})
    monkeypatch.setattr(stage, "walkable", lambda path: False)
    monkeypatch.setattr(stage, "_mount", lambda *args: mounts.append(args))
    spares = tmp_path / "spares" / "run"
    (spares / "a" / "workspace").mkdir(parents=True)
    staged = stage.reachable(str(spares))
    assert len(mounts) == 2  # the bind, made read-only
    inner = stage.reachable(str(spares / "a" / "workspace"))
    assert inner == os.path.join(staged, "a", "workspace")
    assert len(mounts) == 2
    stage.reachable(str(tmp_path / "elsewhere"))  # not under it: its own bind
    assert len(mounts) == 4


def test_spare_trees_of_an_earlier_run_with_this_pid_are_removed(tmp_path):
    earlier = tmp_path / f"{os.getpid()}-0123abcd" / "tree"
    earlier.mkdir(parents=True)
    other = tmp_path / "1-0123abcd"  # pid 1 is alive: someone else's
    other.mkdir()
    Prestarts(tmp_path)
    assert not earlier.parent.exists() and other.exists()

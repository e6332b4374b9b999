"""A revision's log rotates without a moment at which its current file is missing."""

from __future__ import annotations

import threading

from localcloud.run.logs import RevisionLog


def test_rotation_keeps_one_previous_file_and_caps_each(tmp_path):
    log = RevisionLog(tmp_path / "rev.log", max_bytes=8192)
    for i in range(100):
        log.write(f"{i:04d}".encode() * 256)  # 1 KiB each
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["rev.log", "rev.log.1"]
    assert all((tmp_path / n).stat().st_size <= 8192 for n in names)
    assert log.rotations > 10
    assert (tmp_path / "rev.log").read_bytes().endswith(b"0099" * 256)


def test_a_reader_always_finds_the_current_file(tmp_path):
    log = RevisionLog(tmp_path / "rev.log", max_bytes=4096)
    log.write(b"x")
    done = threading.Event()
    missing = []

    def read() -> None:
        while not done.is_set():
            names = {p.name for p in tmp_path.glob("rev.log*")}
            if "rev.log" not in names:
                missing.append(names)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(2000):
            log.write(b"y" * 3000)
    finally:
        done.set()
        reader.join()
    assert log.rotations > 1000
    assert missing == []

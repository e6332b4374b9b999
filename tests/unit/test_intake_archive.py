"""Intake's archive check: what it refuses, from the zip's directory alone."""

from __future__ import annotations

import zipfile

import pytest

from localcloud.testing import zip_entries
from orchestrator.archive import ArchiveProblem, inspect


def link(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = 0o120777 << 16
    return info


MAIN = ("main.py", b"def f(request):\n    return 'ok'\n")


def test_a_plain_function_passes_and_lists_its_files():
    contents = inspect(zip_entries([MAIN, ("lib/util.py", b"x = 1\n"), ("function.yaml", b"")]))
    assert contents.files == {"main.py", "lib/util.py", "function.yaml"}


@pytest.mark.parametrize(
    ("entries", "phrase"),
    [
        ([MAIN, ("../up.py", b"")], "climbs out"),
        ([MAIN, ("a/../../up.py", b"")], "climbs out"),
        ([MAIN, ("/etc/passwd", b"")], "absolute path"),
        ([MAIN, ("C:/x.py", b"")], "absolute path"),
        ([MAIN, (link("data"), b"/etc")], "symbolic link"),
        ([MAIN, ("big.bin", b"\0" * (4 << 20))], "zip bomb"),
        ([("app.py", b"")], "no main.py or package.json at its root"),
        ([("fn/main.py", b"")], "zip the directory's contents"),
        ([("fn/package.json", b"{}"), ("fn/index.js", b"")], "under fn/: zip the directory's"),
        ([("node_modules/x/package.json", b"{}")], "no main.py or package.json at its root"),
    ],
)
def test_refusals_name_the_entry_and_the_rule(entries, phrase):
    with pytest.raises(ArchiveProblem, match=phrase):
        inspect(zip_entries(entries))


def test_not_a_zip_is_named():
    with pytest.raises(ArchiveProblem, match="not a valid zip"):
        inspect(b"PK but not really")


def test_limits_on_size_and_entries(monkeypatch):
    import orchestrator.archive as archive

    monkeypatch.setattr(archive, "MAX_ENTRIES", 3)
    with pytest.raises(ArchiveProblem, match="entries; the limit is 3"):
        inspect(zip_entries([MAIN, ("a", b""), ("b", b""), ("c", b"")]))
    monkeypatch.setattr(archive, "MAX_ARCHIVE_BYTES", 10)
    with pytest.raises(ArchiveProblem, match="the limit is 10 bytes"):
        inspect(zip_entries([MAIN]))


def test_damaged_archives_are_refused_never_crash():
    """Random byte flips anywhere in a zip give ArchiveProblem or a pass, nothing else."""
    import random

    from orchestrator.archive import DAMAGED
    from orchestrator.manifest import ManifestError, read_manifest_from_zip

    good = zip_entries([MAIN, ("function.yaml", b"service: fine\nentry_point: f\n" * 3)])
    rng = random.Random(7)
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            inspect(bytes(data))
        except ArchiveProblem:
            continue  # refused with a reason: what intake reports
        try:  # intake reports these as a damaged archive too
            read_manifest_from_zip(bytes(data))
        except (ManifestError, *DAMAGED):
            pass

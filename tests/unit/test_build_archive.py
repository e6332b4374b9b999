"""Table-driven tests for source-archive checks (localcloud.cloudbuild.archive).

Every malicious archive is built here with zipfile/tarfile (and a few patched bytes where the
stdlib refuses to write the lie). Each refusal must carry the right code, name the offending
entry, and leave the filesystem around ``dest`` exactly as it was.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from localcloud.cloudbuild.archive import (
    ArchiveError,
    Limits,
    Member,
    _copy,
    check,
    detect,
    extract,
    strip_common_root,
)

Spec = tuple  # ("file", name, data, mode) | ("dir", name) | ("symlink"|"hardlink", name, target)
#               | ("chr"|"blk"|"fifo", name)
ZEROS = b"\0" * (20 << 20)  # deflates ~1000:1, to about 20 KB
ABS = "abs_evil.py"  # absolute entries point into tmp_path, where the snapshot would see them


def make_zip(path: Path, entries: list[Spec], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on duplicate names; one case wants them
        with zipfile.ZipFile(path, "w", method) as zf:
            for kind, name, *rest in entries:
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 2, 3, 4, 6))
                info.compress_type = method
                data = b""
                if kind == "file":
                    data, mode = rest
                    info.external_attr = (stat.S_IFREG | mode) << 16 if mode is not None else 0
                elif kind == "dir":
                    info.external_attr = (stat.S_IFDIR | 0o755) << 16 | 0x10
                elif kind == "symlink":
                    data = rest[0].encode()
                    info.external_attr = (stat.S_IFLNK | 0o777) << 16
                elif kind == "fifo":
                    info.external_attr = (stat.S_IFIFO | 0o644) << 16
                zf.writestr(info, data)
    return path


TAR_TYPES = {
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def make_tgz(path: Path, entries: list[Spec], **pax: str) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT, pax_headers=pax or None) as tf:
        for kind, name, *rest in entries:
            ti = tarfile.TarInfo(name)
            ti.mtime, ti.mode = 1_600_000_000, 0o755
            if kind == "file":
                data, ti.mode = rest[0], rest[1] or 0o644
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
                continue
            ti.type = TAR_TYPES[kind]
            if kind in ("symlink", "hardlink"):
                ti.linkname = rest[0]
            tf.addfile(ti)
    return path


def zip_of(*entries: Spec) -> Callable[[Path], object]:
    return lambda p: make_zip(p, list(entries))


def tgz_of(*entries: Spec) -> Callable[[Path], object]:
    return lambda p: make_tgz(p, list(entries))


def raw(data: bytes) -> Callable[[Path], object]:
    return lambda p: p.write_bytes(data)


def f(name: str, data: bytes = b"x = 1\n", mode: int | None = 0o644) -> Spec:
    return ("file", name, data, mode)


def patch_zip(data: bytes, *, flags: int = 0, size: int | None = None, crc: int | None = None):
    """Rewrites the only entry's local and central headers, to say what zipfile won't write."""
    buf = bytearray(data)
    # (header offset, flags, crc, uncompressed size) for the local header and the central one
    for base, fo, co, so in ((0, 6, 14, 22), (buf.rfind(b"PK\x01\x02"), 8, 16, 24)):
        buf[base + fo] |= flags
        if crc is not None:
            buf[base + co : base + co + 4] = crc.to_bytes(4, "little")
        if size is not None:
            buf[base + so : base + so + 4] = size.to_bytes(4, "little")
    return bytes(buf)


def lying_zip(p: Path, crc: int | None = None) -> None:
    make_zip(p, [f("bomb.bin", ZEROS[: 5 << 20])])
    p.write_bytes(patch_zip(p.read_bytes(), size=1000, crc=crc))


def bad_crc_zip(p: Path) -> None:
    make_zip(p, [f("app.py", b"print('hello')\n" * 20)], method=zipfile.ZIP_STORED)
    data = bytearray(p.read_bytes())
    data[data.find(b"print") + 3] ^= 0xFF
    p.write_bytes(bytes(data))


def plain_tar(p: Path) -> None:
    with tarfile.open(p, "w") as tf:
        tf.addfile(tarfile.TarInfo("empty.py"))


def encrypted_zip(p: Path) -> None:
    """zipfile cannot write encryption, so set the "encrypted" flag bit on a plain entry."""
    p.write_bytes(patch_zip(make_zip(p, [f("secret.py")]).read_bytes(), flags=0x1))


def truncated(build: Callable[[Path], object]) -> Callable[[Path], object]:
    def make(p: Path) -> None:
        build(p)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

    return make


NOISE = [f(f"n{i}.bin", os.urandom(20_000)) for i in range(3)]  # incompressible: cut mid-stream
SMALL = Limits(max_entries=5, max_file_bytes=1000, max_total_bytes=3000)


def case(id_: str, build: Callable[[Path], object], code: str, text: str, **kw: object):
    """One refusal: the builder, the code, text the message must contain (the entry's name)."""
    return pytest.param(
        build, kw.get("limits") or Limits(), code, text, kw.get("stage", "check"), id=id_
    )


# fmt: off
REFUSED = [
    case("zip-absolute", lambda p: make_zip(p, [f(str(p.parent / ABS))]), "absolute_path", ABS),
    case("tgz-absolute", lambda p: make_tgz(p, [f(str(p.parent / ABS))]), "absolute_path", ABS),
    case("zip-drive", zip_of(f("C:\\evil\\x.py")), "absolute_path", "C:\\evil\\x.py"),
    case("zip-leading-backslash", zip_of(f("\\evil.py")), "absolute_path", "\\evil.py"),
    case("zip-dotdot", zip_of(f("ok.py"), f("../evil.py")), "path_traversal", "../evil.py"),
    case("tgz-dotdot", tgz_of(f("../evil.py")), "path_traversal", "../evil.py"),
    case("zip-nested-dotdot", zip_of(f("a/../../evil.py")), "path_traversal", "a/../../evil.py"),
    case("tgz-nested-dotdot", tgz_of(f("a/../../evil.py")), "path_traversal", "a/../../evil.py"),
    case("zip-backslash-dotdot", zip_of(f("a\\..\\..\\evil.py")), "path_traversal", "a\\..\\..\\evil.py"),
    case("zip-names-root", zip_of(f("a/..")), "path_traversal", "a/.."),
    case("zip-symlink-outside", zip_of(("symlink", "link", "../sentinel")), "link_outside", "link"),
    case("tgz-symlink-outside", tgz_of(("symlink", "a/link", "../../sentinel")), "link_outside", "a/link"),
    case("tgz-symlink-absolute", tgz_of(("symlink", "etc", "/etc")), "link_outside", "etc"),
    case("tgz-symlink-via-symlink", tgz_of(("dir", "a"), ("symlink", "a/up", ".."), ("symlink", "esc", "a/up/..")), "link_outside", "esc"),
    case("tgz-symlink-loop", tgz_of(("symlink", "x", "y"), ("symlink", "y", "x")), "link_outside", "symlink loop"),
    case("tgz-write-through-symlink", tgz_of(("dir", "pkg"), ("symlink", "lib", "pkg"), f("lib/evil.py")), "path_traversal", "lib/evil.py"),
    case("tgz-hardlink-outside", tgz_of(("hardlink", "h", "../../etc/passwd")), "link_outside", "h"),
    case("tgz-hardlink-missing", tgz_of(("hardlink", "h", "nope.py")), "link_outside", "nope.py"),
    case("tgz-char-device", tgz_of(("chr", "dev/null")), "special_file", "dev/null"),
    case("tgz-block-device", tgz_of(("blk", "dev/sda")), "special_file", "dev/sda"),
    case("tgz-fifo", tgz_of(("fifo", "pipe")), "special_file", "pipe"),
    case("zip-fifo", zip_of(("fifo", "pipe")), "special_file", "pipe"),
    case("zip-too-many", zip_of(*[f(f"m{i}.py") for i in range(6)]), "too_many_entries", "src.archive", limits=SMALL),
    case("tgz-too-many", tgz_of(*[f(f"m{i}.py") for i in range(6)]), "too_many_entries", "src.archive", limits=SMALL),
    case("zip-file-too-large", zip_of(f("big.bin", os.urandom(1001))), "too_large", "big.bin", limits=SMALL),
    case("tgz-file-too-large", tgz_of(f("big.bin", os.urandom(1001))), "too_large", "big.bin", limits=SMALL),
    case("zip-total-too-large", zip_of(*[f(f"p{i}", os.urandom(900)) for i in range(4)]), "too_large", "p3", limits=SMALL),
    case("tgz-total-too-large", tgz_of(*[f(f"p{i}", os.urandom(900)) for i in range(4)]), "too_large", "p3", limits=SMALL),
    case("zip-bomb", zip_of(f("bomb.bin", ZEROS)), "compression_ratio", "bomb.bin"),
    case("tgz-bomb", tgz_of(f("bomb.bin", ZEROS)), "compression_ratio", "bomb.bin"),
    case("tgz-huge-pax-header", lambda p: make_tgz(p, [f("a.py")], comment="x" * (2 << 20)), "too_large", "PaxHeader"),
    case("zip-encrypted", encrypted_zip, "encrypted", "secret.py"),
    case("zip-duplicate", zip_of(f("main.py"), f("main.py")), "duplicate_entry", "main.py"),
    case("tgz-duplicate", tgz_of(f("main.py"), f("./main.py")), "duplicate_entry", "main.py"),
    case("zip-file-used-as-dir", zip_of(f("a"), f("a/b.py")), "duplicate_entry", "a/b.py"),
    case("random-bytes", raw(b"\0" + os.urandom(999)), "not_an_archive", "src.archive"),
    case("empty-file", raw(b""), "not_an_archive", "src.archive"),
    case("plain-tar", plain_tar, "not_an_archive", "uncompressed tar"),
    case("zip-truncated", truncated(zip_of(*NOISE)), "corrupt", "src.archive"),
    case("tgz-truncated", truncated(tgz_of(*NOISE)), "corrupt", "src.archive"),
    # The directory of these two is fine; only the bytes give the lie away.
    case("zip-lying-size", lying_zip, "corrupt", "bomb.bin", stage="extract"),
    case("zip-bad-crc", bad_crc_zip, "corrupt", "app.py", stage="extract"),
]
# fmt: on


def snapshot(root: Path) -> dict[str, object]:
    """Every path under root with what it is, so any write outside dest shows up."""
    seen: dict[str, object] = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(d, name)
            key = str(p.relative_to(root))
            seen[key] = os.readlink(p) if p.is_symlink() else p.is_dir() or p.read_bytes()
    return seen


@pytest.fixture
def arena(tmp_path: Path) -> tuple[Path, Path]:
    """An archive path and a dest two levels down, with a sentinel file next to them."""
    (tmp_path / "sentinel").mkdir()
    (tmp_path / "sentinel" / "victim.txt").write_text("untouched")
    return tmp_path / "src.archive", tmp_path / "work" / "dest"


@pytest.mark.parametrize(("build", "limits", "code", "text", "stage"), REFUSED)
def test_refused(arena, build, limits, code, text, stage):
    archive, dest = arena
    build(archive)
    if stage == "check":
        with pytest.raises(ArchiveError) as info:
            check(archive, limits)
        assert (info.value.code, text in str(info.value)) == (code, True), str(info.value)
    else:
        check(archive, limits)
    before = snapshot(archive.parent)
    with pytest.raises(ArchiveError) as info:
        extract(archive, dest, limits)
    assert (info.value.code, text in str(info.value)) == (code, True), str(info.value)
    assert snapshot(archive.parent) == before
    assert not dest.exists()


def tree(dest: Path) -> dict[str, tuple[str, object, int]]:
    out = {}
    for p in sorted(dest.rglob("*")):
        st = p.lstat()
        kind = "symlink" if p.is_symlink() else "dir" if p.is_dir() else "file"
        what = os.readlink(p) if kind == "symlink" else None if kind == "dir" else p.read_bytes()
        out[p.relative_to(dest).as_posix()] = (kind, what, stat.S_IMODE(st.st_mode))
        assert st.st_mtime == 0, p
    return out


GOOD = [
    f("main.py", b"print('hi')\n"),
    f("run.sh", b"#!/bin/sh\n", 0o700),
    ("dir", "pkg/"),
    f("pkg/__init__.py", b""),
    f("pkg/sub/mod.py", b"X = 2\n", 0o600),
    ("symlink", "pkg/sub/link.py", "../__init__.py"),
    ("symlink", "here", "."),
]
GOOD_TREE = {
    "here": ("symlink", ".", 0o777),
    "main.py": ("file", b"print('hi')\n", 0o644),
    "pkg": ("dir", None, 0o755),
    "pkg/__init__.py": ("file", b"", 0o644),
    "pkg/sub": ("dir", None, 0o755),
    "pkg/sub/link.py": ("symlink", "../__init__.py", 0o777),
    "pkg/sub/mod.py": ("file", b"X = 2\n", 0o644),
    "run.sh": ("file", b"#!/bin/sh\n", 0o755),
}


@pytest.mark.parametrize("make", [make_zip, make_tgz], ids=["zip", "tgz"])
def test_good_archive_unpacks_with_normalized_modes_and_zero_mtimes(arena, make):
    archive, dest = arena
    make(archive, [(s[0], s[1].rstrip("/") if make is make_tgz else s[1], *s[2:]) for s in GOOD])
    members = check(archive)
    assert extract(archive, dest) == members
    assert [m.name for m in members] == ["main.py", "run.sh", "pkg", *[n for _, n, *_ in GOOD[3:]]]
    assert members[1] == Member("run.sh", 10, "file", 0o755)
    link = Member("pkg/sub/link.py", 14, "symlink", 0o777, "../__init__.py")
    assert link in members
    assert tree(dest) == GOOD_TREE
    assert dest.stat().st_mtime == 0


def test_tar_extras_root_entry_hardlink_and_sparse_dirs(arena):
    """``tar -C src .`` writes a ``./`` entry; hard links copy their (earlier) target."""
    archive, dest = arena
    make_tgz(
        archive, [("dir", "."), f("./a/b/c.py", b"c\n", 0o755), ("hardlink", "./d.py", "a/b/c.py")]
    )
    members = check(archive)
    assert [m.name for m in members] == ["a/b/c.py", "d.py"]
    assert members[1] == Member("d.py", 2, "file", 0o755, "a/b/c.py")
    extract(archive, dest)
    assert tree(dest) == {
        "a": ("dir", None, 0o755),
        "a/b": ("dir", None, 0o755),
        "a/b/c.py": ("file", b"c\n", 0o755),
        "d.py": ("file", b"c\n", 0o755),
    }


def test_windows_zip_backslashes_and_no_unix_modes(arena):
    archive, dest = arena
    make_zip(archive, [f("pkg\\mod.py", b"m\n", None), f("tool.exe", b"MZ", None)])
    assert [m.name for m in extract(archive, dest)] == ["pkg/mod.py", "tool.exe"]
    assert tree(dest)["pkg/mod.py"] == ("file", b"m\n", 0o644)


def test_small_compressible_file_is_not_a_bomb(arena):
    archive, dest = arena
    make_zip(archive, [f("zeros.bin", ZEROS[: 1 << 20])])  # ratio ~1000, but only 1 MiB
    extract(archive, dest)
    assert (dest / "zeros.bin").stat().st_size == 1 << 20


def test_lying_header_never_yields_more_than_declared(arena):
    """zipfile stops at the declared size; with a matching CRC the lie just truncates."""
    archive, dest = arena
    lying_zip(archive, crc=zlib.crc32(bytes(1000)))
    extract(archive, dest)
    assert (dest / "bomb.bin").read_bytes() == bytes(1000)


@pytest.mark.parametrize(
    ("actual", "code"), [(b"x" * 11, "too_large"), (b"x" * 9, "corrupt")], ids=["more", "less"]
)
def test_copy_counts_bytes_instead_of_trusting_the_header(actual, code):
    with pytest.raises(ArchiveError) as info:
        _copy(io.BytesIO(actual), io.BytesIO(), "liar.bin", 10)
    assert info.value.code == code and "liar.bin" in str(info.value)


def test_tar_entry_count_stops_early(arena, monkeypatch):
    archive, _ = arena
    make_tgz(archive, [f(f"m{i}.py") for i in range(300)])
    calls = []
    real = tarfile.TarFile.next
    monkeypatch.setattr(tarfile.TarFile, "next", lambda self: calls.append(1) or real(self))
    with pytest.raises(ArchiveError, match="more than 5"):
        check(archive, Limits(max_entries=5))
    assert len(calls) <= 7


def test_detect_uses_magic_not_names(tmp_path):
    z = make_zip(tmp_path / "source.tar.gz", [f("a.py")])
    t = make_tgz(tmp_path / "source.zip", [f("a.py")])
    assert (detect(z), detect(t), detect(z.read_bytes()), detect(str(t))) == (
        "zip",
        "tar.gz",
        "zip",
        "tar.gz",
    )
    with pytest.raises(ArchiveError) as info:
        detect(b"hello")
    assert info.value.code == "not_an_archive"


def test_dest_must_be_empty_and_is_emptied_on_failure(arena):
    archive, dest = arena
    make_zip(archive, [f("ok.py"), f("../evil.py")])
    dest.mkdir(parents=True)
    with pytest.raises(ArchiveError):
        extract(archive, dest)
    assert dest.is_dir() and not any(dest.iterdir())
    (dest / "old.txt").write_text("x")
    with pytest.raises(FileExistsError):
        extract(make_zip(archive, [f("ok.py")]), dest)


def test_failure_mid_extraction_removes_what_was_written(arena):
    archive, dest = arena
    entries = [f("first.py", b"a = 1\n" * 50), f("second.py", b"MARK" * 50)]
    make_zip(archive, entries, method=zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    data[data.find(b"MARK")] ^= 0xFF  # first.py unpacks fine, then second.py fails its CRC
    archive.write_bytes(bytes(data))
    check(archive)
    with pytest.raises(ArchiveError) as info:
        extract(archive, dest)
    assert info.value.code == "corrupt" and "second.py" in str(info.value)
    assert not dest.exists()


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        (["repo-main/", "repo-main/a.py"], "repo-main"),
        (["repo-main/", "README.md"], None),
        (["a/", "b/"], None),
        (["only.py"], None),
        ([], None),
    ],
)
def test_strip_common_root(tmp_path, layout, expected):
    for name in layout:
        p = tmp_path / name
        p.mkdir() if name.endswith("/") else p.write_text("x")
    assert strip_common_root(tmp_path) == (tmp_path / expected if expected else tmp_path)


def test_strip_common_root_ignores_a_lone_symlink(tmp_path):
    (tmp_path / "real").mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "link").symlink_to(tmp_path / "real")
    assert strip_common_root(dest) == dest

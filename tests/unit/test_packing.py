"""``orch.packing``: deterministic zips that honour .gcloudignore like gcloud."""

from __future__ import annotations

import io
import os
import time
import zipfile

import pytest

from orch.packing import PackingError, compile_pattern, list_files, pack, zip_directory


def write(root, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def names(root) -> list[str]:
    return [name for name, _ in list_files(root)]


def test_same_tree_same_bytes_whatever_the_order_and_times(tmp_path):
    files = {"main.py": "def f(r):\n    return 'x'\n", "lib/util.py": "X = 1\n", "b.txt": "b"}
    one, two = tmp_path / "one", tmp_path / "two"
    write(one, files)
    write(two, dict(reversed(list(files.items()))))
    past = time.time() - 86400 * 30
    for path in two.rglob("*"):
        os.utime(path, (past, past))
    first = zip_directory(one)
    assert first == zip_directory(two) == zip_directory(one)
    archive = zipfile.ZipFile(io.BytesIO(first))
    assert archive.namelist() == ["b.txt", "lib/util.py", "main.py"]
    assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert archive.read("lib/util.py") == b"X = 1\n"
    (one / "b.txt").write_text("changed")
    assert zip_directory(one) != first


def test_executable_bit_is_kept_and_nothing_else(tmp_path):
    write(tmp_path, {"main.py": "", "run.sh": "#!/bin/sh\n"})
    os.chmod(tmp_path / "run.sh", 0o700)
    os.chmod(tmp_path / "main.py", 0o600)
    archive = zipfile.ZipFile(io.BytesIO(zip_directory(tmp_path)))
    modes = {i.filename: (i.external_attr >> 16) & 0o777 for i in archive.infolist()}
    assert modes == {"main.py": 0o644, "run.sh": 0o755}


def test_always_skipped_and_gcloud_default_without_gcloudignore(tmp_path):
    write(
        tmp_path,
        {
            "main.py": "",
            ".git/HEAD": "ref",
            "__pycache__/main.cpython-311.pyc": "",
            "pkg/__pycache__/x.pyc": "",
            ".venv/lib/site.py": "",
            ".gitignore": "*.log\nsecrets/\n",
            "debug.log": "",
            "secrets/key": "",
            "keep/notes.txt": "",
        },
    )
    assert names(tmp_path) == ["keep/notes.txt", "main.py"]


def test_gcloudignore_syntax(tmp_path):
    write(
        tmp_path,
        {
            ".gcloudignore": "\n".join(
                [
                    "# a comment",
                    "",
                    "*.md",
                    "!KEEP.md",
                    "/top.txt",
                    "build/",
                    "docs/**/*.png",
                    "tests",
                    "a?c.dat",
                    "[xy].cfg",
                    "\\#hash",
                ]
            ),
            "main.py": "",
            "README.md": "",
            "KEEP.md": "",
            "sub/deep.md": "",
            "top.txt": "",
            "sub/top.txt": "",
            "build/out.bin": "",
            "sub/build/out.bin": "",
            "build.py": "",
            "docs/a.png": "",
            "docs/x/y/b.png": "",
            "docs/c.txt": "",
            "tests/test_a.py": "",
            "sub/tests": "a file named tests",
            "abc.dat": "",
            "abbc.dat": "",
            "x.cfg": "",
            "z.cfg": "",
            "#hash": "",
        },
    )
    assert names(tmp_path) == [
        ".gcloudignore",  # as with gcloud: uploaded unless it lists itself
        "KEEP.md",
        "abbc.dat",
        "build.py",
        "docs/c.txt",
        "main.py",
        "sub/top.txt",
        "z.cfg",
    ]


def test_include_gitignore_and_no_reinclusion_inside_an_ignored_directory(tmp_path):
    write(
        tmp_path,
        {
            ".gcloudignore": ".gcloudignore\n#!include:.gitignore\n!vendor/keep.py\n",
            ".gitignore": "vendor/\n*.tmp\n",
            "main.py": "",
            "x.tmp": "",
            "vendor/keep.py": "",
        },
    )
    # git and gcloud do not look inside an excluded directory, so the negation cannot work.
    assert names(tmp_path) == [".gitignore", "main.py"]


def test_patterns_anchor_only_with_an_inner_slash():
    assert compile_pattern("foo").matches("a/b/foo", False)
    assert compile_pattern("/foo").matches("foo", False)
    assert not compile_pattern("/foo").matches("a/foo", False)
    assert not compile_pattern("a/foo").matches("b/a/foo", False)
    assert compile_pattern("**/foo").matches("x/y/foo", False)
    assert compile_pattern("a/**").matches("a/b/c", False)
    assert not compile_pattern("dir/").matches("dir", False)
    assert compile_pattern("dir/").matches("dir", True)
    assert compile_pattern("# comment") is None and compile_pattern("   ") is None


def test_pack_directory_zip_and_errors(tmp_path):
    src = tmp_path / "my_func"
    write(src, {"main.py": "x"})
    data, name = pack(src)
    assert name == "my_func" and zipfile.is_zipfile(io.BytesIO(data))
    archive = tmp_path / "given.zip"
    archive.write_bytes(data)
    assert pack(archive) == (data, "given")
    (tmp_path / "not.zip").write_text("text")
    with pytest.raises(PackingError, match="neither"):
        pack(tmp_path / "not.zip")
    with pytest.raises(PackingError, match="does not exist"):
        pack(tmp_path / "missing")
    empty = tmp_path / "empty"
    write(empty, {".gcloudignore": "*\n"})
    with pytest.raises(PackingError, match="nothing to pack"):
        pack(empty)

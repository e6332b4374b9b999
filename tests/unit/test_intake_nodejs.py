"""Issue 19: intake accepts Node.js sources (a package.json and the main file it names
instead of main.py), holds the manifest's runtime to the source's language, and refuses a
bad package.json or a missing main file with a reason naming it, before anything is built.

``check_source`` is what ``intake.accept`` runs on the downloaded archive; every Rejected
it raises becomes the one ``failed`` event at ``accepted`` (code and message as raised).
"""

from __future__ import annotations

import json
import zipfile

import pytest

from localcloud.testing import zip_entries
from orchestrator import archive
from orchestrator.archive import ArchiveProblem, inspect, node_main, read_package_json
from orchestrator.build import function_env
from orchestrator.intake import Rejected, check_source
from orchestrator.manifest import Source
from orchestrator.step import Deployment

SOURCE = Source("sources", "fn.zip", 3)
PACKAGE = ("package.json", json.dumps({"name": "fn", "main": "index.js"}).encode())
INDEX = ("index.js", b"exports.fn = (req, res) => res.send('ok');\n")
MAIN_PY = ("main.py", b"def fn(request):\n    return 'ok'\n")
MANIFEST = ("function.yaml", b"entry_point: fn\n")


def link(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = 0o120777 << 16
    return info


def checked(*entries, overrides=None):
    return check_source(zip_entries(list(entries)), SOURCE, overrides or {}, "object metadata")


def refused(*entries, overrides=None) -> Rejected:
    with pytest.raises(Rejected) as caught:
        checked(*entries, overrides=overrides)
    if caught.value.code == "INVALID_ARCHIVE":  # names the archive it is about
        assert caught.value.message.startswith(f"{SOURCE.uri()}: ")
    return caught.value


# --------------------------------------------------------------------------- accepted


def test_a_nodejs_source_is_accepted_and_built_as_nodejs22_by_default():
    manifest = checked(PACKAGE, INDEX, MANIFEST)
    assert manifest.runtime == "nodejs22"
    assert manifest.to_dict()["runtime"] == "nodejs22"  # the workflow argument says so
    env = function_env(Deployment("d-1", "fn", SOURCE.uri(), "sources", "fn.zip", 3, manifest))
    assert env["GOOGLE_RUNTIME"] == "nodejs22"
    assert env["GOOGLE_NODEJS_VERSION"] == "22.x.x"
    assert "GOOGLE_PYTHON_VERSION" not in env


def test_a_python_source_is_unchanged():
    manifest = checked(MAIN_PY, MANIFEST)
    assert manifest.runtime is None
    assert "GOOGLE_RUNTIME" not in function_env(
        Deployment("d-1", "fn", SOURCE.uri(), "sources", "fn.zip", 3, manifest)
    )


def test_inspect_says_which_languages_a_source_has():
    assert inspect(zip_entries([PACKAGE, INDEX])).languages == {"nodejs"}
    assert inspect(zip_entries([MAIN_PY])).languages == {"python"}
    assert inspect(zip_entries([MAIN_PY, PACKAGE])).languages == {"python", "nodejs"}


@pytest.mark.parametrize(
    ("runtime", "entries"),
    [
        ("python311", [MAIN_PY, ("package.json", b"not json")]),  # package.json not read
        ("nodejs20", [PACKAGE, INDEX, ("main.py", b"syntax error (")]),
    ],
)
def test_a_source_with_both_files_is_checked_as_the_runtime_it_names(runtime, entries):
    assert checked(*entries, ("function.yaml", f"runtime: {runtime}\n".encode())).runtime == (
        runtime
    )


def test_node_modules_is_checked_like_any_entry_but_is_never_the_function():
    """The build gets the uploaded object as is and unpacks all of it (Google's Node.js
    buildpack then deletes node_modules before installing), so its entries pass the same
    checks; its files do not count as the function's."""
    modules = ("node_modules/escape-html/index.js", b"module.exports = () => '';\n")
    assert checked(PACKAGE, INDEX, modules).runtime == "nodejs22"
    rejected = refused(PACKAGE, INDEX, (link("node_modules/.bin/tool"), b"../tool/cli.js"))
    assert rejected.code == "INVALID_ARCHIVE"
    assert "'node_modules/.bin/tool' is a symbolic link" in rejected.message
    assert "leave it out of the zip" in rejected.message
    rejected = refused(("package.json", b'{"main": "node_modules/fn/index.js"}'), modules)
    assert "is under node_modules/" in rejected.message


def test_a_node_modules_over_the_entry_limit_gets_the_hint(monkeypatch):
    """A real node_modules often holds more files than the limit: the refusal says to
    leave it out, not only that there are too many."""
    monkeypatch.setattr(archive, "MAX_ENTRIES", 3)
    modules = [(f"node_modules/m{i}/index.js", b"") for i in range(3)]
    with pytest.raises(ArchiveProblem, match=r"5 entries; the limit is 3 \(node_modules/"):
        inspect(zip_entries([PACKAGE, INDEX, *modules]))


def test_a_bomb_in_node_modules_is_still_a_bomb():
    with pytest.raises(ArchiveProblem, match=r"zip bomb.*leave it out of the zip"):
        inspect(zip_entries([PACKAGE, INDEX, ("node_modules/big.bin", b"\0" * (4 << 20))]))


# --------------------------------------------------------------------------- refused


@pytest.mark.parametrize(
    ("entries", "code", "words"),
    [
        # The runtime and the source disagree: the manifest is what to fix.
        (
            [MAIN_PY, ("function.yaml", b"runtime: nodejs22\n")],
            "INVALID_MANIFEST",
            ["runtime: 'nodejs22' is a Node.js runtime", "no package.json", "it has main.py"],
        ),
        (
            [PACKAGE, INDEX, ("function.yaml", b"runtime: python311\n")],
            "INVALID_MANIFEST",
            ["runtime: 'python311' is a Python runtime", "no main.py", "it has package.json"],
        ),
        (
            [MAIN_PY, PACKAGE, INDEX],
            "INVALID_MANIFEST",
            ["both main.py (Python) and package.json (Node.js)", "set runtime"],
        ),
        # package.json itself.
        (
            [("package.json", b'{"main": "index.js",'), INDEX],
            "INVALID_ARCHIVE",
            ["package.json is not valid JSON", "line 1"],
        ),
        ([("package.json", b""), INDEX], "INVALID_ARCHIVE", ["package.json is not valid JSON"]),
        (  # JSON, but UTF-16: json.loads would read it, npm does not
            [("package.json", '{"main": "index.js"}'.encode("utf-16")), INDEX],
            "INVALID_ARCHIVE",
            ["package.json is not valid JSON: not UTF-8 text"],
        ),
        (
            [("package.json", b'["index.js"]'), INDEX],
            "INVALID_ARCHIVE",
            ["package.json is a JSON array, not an object"],
        ),
        ([("package.json", b'"x"'), INDEX], "INVALID_ARCHIVE", ["a JSON string, not an object"]),
        ([("package.json", b"null"), INDEX], "INVALID_ARCHIVE", ["a JSON null, not an object"]),
        (
            [("package.json", b"[" * 100 + b"]" * 100), INDEX],
            "INVALID_ARCHIVE",
            ["package.json: nested more than 32 levels deep"],
        ),
        # The main file.
        ([PACKAGE], "INVALID_ARCHIVE", ["names 'index.js' as its \"main\" file", "no such file"]),
        (
            [("package.json", b"{}")],
            "INVALID_ARCHIVE",
            ["no index.js at its root", 'package.json without "main"'],
        ),
        (
            [("package.json", b'{"main": "src/app.js"}'), INDEX],
            "INVALID_ARCHIVE",
            ["names 'src/app.js'", "looked for src/app.js, src/app.js.js"],
        ),
        (
            [("package.json", b'{"main": 3}'), INDEX],
            "INVALID_ARCHIVE",
            ['"main" is 3; it must name the function\'s file'],
        ),
        (
            [("package.json", b'{"main": ""}'), INDEX],
            "INVALID_ARCHIVE",
            ["\"main\" is ''"],
        ),
        (
            [("package.json", b'{"main": "../index.js"}'), INDEX],
            "INVALID_ARCHIVE",
            ["'../index.js' climbs out of the archive root"],
        ),
        (
            [("package.json", b'{"main": "/srv/index.js"}'), INDEX],
            "INVALID_ARCHIVE",
            ["'/srv/index.js' has an absolute path"],
        ),
    ],
    ids=[
        "nodejs22-over-main.py",
        "python311-over-package.json",
        "both-without-runtime",
        "truncated-json",
        "empty-json",
        "not-utf8",
        "array",
        "string",
        "null",
        "too-deep",
        "main-missing",
        "default-index-missing",
        "named-main-missing",
        "main-not-a-string",
        "main-empty",
        "main-climbs-out",
        "main-absolute",
    ],
)
def test_bad_nodejs_sources_are_refused_naming_the_problem(entries, code, words):
    rejected = refused(*entries)
    assert rejected.code == code
    for word in words:
        assert word in rejected.message


def test_a_runtime_from_object_metadata_is_held_to_the_source():
    rejected = refused(MAIN_PY, overrides={"runtime": "nodejs22"})
    assert rejected.code == "INVALID_MANIFEST"
    assert "no package.json" in rejected.message


def test_a_byte_order_mark_is_allowed_as_npm_allows_it():
    assert checked(("package.json", b"\xef\xbb\xbf{}"), INDEX).runtime == "nodejs22"


def test_package_json_is_bounded_before_it_is_parsed(monkeypatch):
    monkeypatch.setattr(archive, "MAX_PACKAGE_JSON_BYTES", 64)
    big = json.dumps({"name": "fn", "description": "x" * 100}).encode()
    with pytest.raises(ArchiveProblem, match=f"package.json is {len(big)} bytes; the limit is 64"):
        read_package_json(zip_entries([("package.json", big), INDEX]))


# --------------------------------------------------------------------------- main resolution


@pytest.mark.parametrize(
    ("main", "files", "found"),
    [
        (None, ["index.js"], "index.js"),
        ("index.js", ["index.js"], "index.js"),
        ("./index.js", ["index.js"], "index.js"),
        ("app", ["app.js"], "app.js"),
        ("lib/app", ["lib/app.js"], "lib/app.js"),
        ("lib", ["lib/index.js"], "lib/index.js"),
        ("lib/", ["lib/index.js"], "lib/index.js"),
        ("server.mjs", ["server.mjs"], "server.mjs"),
        (".", ["index.js"], "index.js"),
    ],
)
def test_main_resolves_as_nodejs_resolves_it(main, files, found):
    """https://nodejs.org/api/modules.html#all-together (LOAD_AS_FILE, LOAD_INDEX)."""
    package = {} if main is None else {"main": main}
    contents = inspect(zip_entries([("package.json", b"{}"), *((f, b"") for f in files)]))
    assert node_main(contents, package) == found

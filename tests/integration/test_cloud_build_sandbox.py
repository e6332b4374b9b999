"""A build runs the user's code (npm lifecycle scripts, a setup.py pip builds) in a sandbox,
as Cloud Build runs its steps in containers (https://cloud.google.com/build/docs/overview):
the code sees neither the host's files nor localcloud's data directory, and cannot reach
localcloud's APIs as the local user.

Each function's install script probes what it can do and prints one ``PROBE`` line, which
npm or pip copies into the build log; the test reads that log from the logs bucket, as a
user does, and checks the host afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from google.cloud.devtools import cloudbuild_v1

from localcloud.testing import image_name, pack_build, run_build, zip_tree

S = cloudbuild_v1.Build.Status
RUNTIME = f"python{sys.version_info[0]}{sys.version_info[1]}"


def build_log(clients, build) -> str:
    bucket = build.logs_bucket.removeprefix("gs://")
    return clients.storage.bucket(bucket).blob(f"log-{build.id}.txt").download_as_text()


@pytest.fixture
def targets(localcloud, tmp_path) -> dict[str, str]:
    """What a build's code must not touch: a file of the host (in a directory the test
    owns), localcloud's data directory, the user's home, and the storage API."""
    data = localcloud.config.data_dir
    return {
        "host_file": str(tmp_path / f"written-by-the-build-{uuid.uuid4().hex[:6]}"),
        "data_dir": str(data),
        "data_file": str(data / f"written-by-the-build-{uuid.uuid4().hex[:6]}"),
        "home": str(Path.home()),
        "api": f"http://{localcloud.config.storage_address}/storage/v1/b?project=local-project",
    }


def probe_line(log: str) -> dict[str, str]:
    """The install script's findings: ``PROBE key=value ...``; fails when it never ran."""
    lines = [line for line in log.splitlines() if "PROBE " in line and "print(" not in line]
    assert lines, f"the install script did not run:\n{log}"
    words = lines[-1].split("PROBE ", 1)[1].split()
    return dict(word.split("=", 1) for word in words)


def assert_contained(found: dict[str, str], targets: dict[str, str]) -> None:
    assert found["host_write"] != "ok", found
    assert found["data_write"] != "ok", found
    # The data directory holds the caches pip and npm use: only the way to them is there.
    listed = set(found["data_read"].split(","))
    assert listed <= {"denied", "build-cache", "build-work"}, found
    # The home directory only holds the way to the interpreter a tool runs on, if there.
    interpreters = [Path(sys.base_prefix), Path(os.path.realpath(shutil.which("node") or "/"))]
    home = Path.home()
    allowed = {p.relative_to(home).parts[0] for p in interpreters if p.is_relative_to(home)}
    assert set(found["home_read"].split(",")) <= {"denied", *allowed}, found
    assert not Path(targets["host_file"]).exists()
    assert not Path(targets["data_file"]).exists()
    if os.geteuid() == 0:  # a sandbox of a root localcloud runs as nobody: never the owner
        assert found["api"] != "200", found


NODE_PROBE = """
const fs = require("fs");
const http = require("http");
const t = %s;
const found = [];
const attempt = (key, what) => {
  try { found.push(`${key}=${what()}`); } catch (e) { found.push(`${key}=denied`); }
};
attempt("host_write", () => { fs.writeFileSync(t.host_file, "x"); return "ok"; });
attempt("data_write", () => { fs.writeFileSync(t.data_file, "x"); return "ok"; });
attempt("data_read", () => fs.readdirSync(t.data_dir).join(",") || "empty");
attempt("home_read", () => fs.readdirSync(t.home).join(",") || "empty");
http.get(t.api, { timeout: 10000 }, (res) => { found.push(`api=${res.statusCode}`); done(); })
  .on("timeout", function () { this.destroy(new Error("timeout")); })
  .on("error", (e) => { found.push(`api=${e.code || e.message}`); done(); });
function done() { console.log("PROBE " + found.join(" ")); }
"""


@pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are needed to build Node.js functions (Debian packages nodejs, npm)",
)
def test_npm_lifecycle_scripts_cannot_touch_the_host(clients, sources, targets):
    major = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True)
    package = {
        "name": "probe",
        "version": "1.0.0",
        "main": "index.js",
        "scripts": {"postinstall": "node probe.js"},
    }
    files = {
        "package.json": json.dumps(package),
        "index.js": "exports.hello = (req, res) => res.send('hello');\n",
        "probe.js": NODE_PROBE % json.dumps(targets),
    }
    env = {
        "GOOGLE_FUNCTION_TARGET": "hello",
        "GOOGLE_RUNTIME": "nodejs" + major.stdout.strip().removeprefix("v").split(".")[0],
    }
    done = run_build(clients, pack_build(sources(zip_tree(files)), image_name("probe"), env))
    log = build_log(clients, done)
    assert done.status == S.SUCCESS, (done.status_detail, log)
    assert_contained(probe_line(log), targets)


PYTHON_PROBE = """
import json, os, sys, urllib.request
t = json.loads(%r)
found = []
def attempt(key, what):
    try:
        found.append(f"{key}={what()}")
    except Exception:
        found.append(f"{key}=denied")
def write(path):
    with open(path, "w") as f:
        f.write("x")
    return "ok"
def api():
    try:
        return urllib.request.urlopen(t["api"], timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code
attempt("host_write", lambda: write(t["host_file"]))
attempt("data_write", lambda: write(t["data_file"]))
attempt("data_read", lambda: ",".join(os.listdir(t["data_dir"])) or "empty")
attempt("home_read", lambda: ",".join(os.listdir(t["home"])) or "empty")
attempt("api", api)
print("PROBE " + " ".join(found), flush=True)
sys.exit("the probe is done")  # pip shows a failed build's output
"""


def test_a_setup_py_pip_builds_cannot_touch_the_host(clients, sources, targets):
    files = {
        "main.py": "def hello(request):\n    return 'hello'\n",
        "requirements.txt": "./probe\n",
        "probe/setup.py": PYTHON_PROBE % json.dumps(targets),
    }
    env = {"GOOGLE_FUNCTION_TARGET": "hello", "GOOGLE_RUNTIME": RUNTIME}
    done = run_build(clients, pack_build(sources(zip_tree(files)), image_name("probe"), env))
    log = build_log(clients, done)
    assert done.status == S.FAILURE, log  # the setup.py fails on purpose, after its probe
    assert "pip install failed" in done.status_detail
    assert_contained(probe_line(log), targets)

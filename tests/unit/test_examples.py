"""The examples a user deploys first: each compiles, and its function.yaml is a valid
manifest that resolves to the service, entry point and triggers it documents."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from orchestrator.manifest import load_manifest_yaml, resolve

EXAMPLES = Path(__file__).parent.parent.parent / "examples"


@pytest.mark.parametrize(
    ("name", "service", "signature", "triggers"),
    [
        ("hello", "hello", "http", []),
        ("on_order", "on-order", "cloudevent", ["pubsub"]),
        ("on_upload", "on-upload", "cloudevent", ["storage"]),
    ],
)
def test_example_is_deployable(name, service, signature, triggers):
    folder = EXAMPLES / name
    source = (folder / "main.py").read_text()
    compile(source, str(folder / "main.py"), "exec")
    manifest = resolve(
        load_manifest_yaml((folder / "function.yaml").read_text()), {}, f"{name}.zip"
    )
    assert manifest.service == service
    assert manifest.signature_type == signature
    assert f"def {manifest.entry_point}(" in source
    assert [t.kind for t in manifest.triggers] == triggers


@pytest.mark.parametrize(
    ("name", "service", "signature", "register", "triggers"),
    [
        ("hello-node", "hello-node", "http", "exports.hello_node = (req, res)", []),
        ("on-message-node", "on-message-node", "cloudevent", "exports.on_message_node", ["pubsub"]),
    ],
)
def test_nodejs_example_is_deployable(name, service, signature, register, triggers, tmp_path):
    """Issue 19: each Node.js example, zipped as ``orch deploy`` zips it, passes intake and
    resolves to nodejs22; it exports its entry point; its lock file is npm's for its
    package.json; a local node_modules stays out of the zip (.gcloudignore); and node
    parses its main file when node is here."""
    import io
    import zipfile

    from orch.packing import zip_directory
    from orchestrator.intake import check_source
    from orchestrator.manifest import Source

    folder = tmp_path / name
    shutil.copytree(EXAMPLES / name, folder)
    (folder / "node_modules" / "dep").mkdir(parents=True)
    (folder / "node_modules" / "dep" / "index.js").write_text("module.exports = 1;\n")
    data = zip_directory(folder)
    names = set(zipfile.ZipFile(io.BytesIO(data)).namelist())
    assert names == {"function.yaml", "index.js", "package.json", "package-lock.json"}
    manifest = check_source(data, Source("b", f"{name}.zip", 1), {}, "object metadata")
    assert (manifest.service, manifest.signature_type, manifest.runtime) == (
        service,
        signature,
        "nodejs22",
    )
    assert [t.kind for t in manifest.triggers] == triggers
    source = (folder / "index.js").read_text()
    assert register in source
    assert f"exports.{manifest.entry_point} = " in source
    package = json.loads((folder / "package.json").read_text())
    lock = json.loads((folder / "package-lock.json").read_text())
    assert lock["lockfileVersion"] == 3
    assert lock["packages"][""].get("dependencies") == package.get("dependencies")
    if shutil.which("node") is None:
        pytest.skip("node is not installed: its syntax check is left out")
    subprocess.run(["node", "--check", str(folder / "index.js")], check=True)

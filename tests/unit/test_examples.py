"""The examples a user deploys first: each compiles, and its function.yaml is a valid
manifest that resolves to the service, entry point and triggers it documents."""

from __future__ import annotations

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

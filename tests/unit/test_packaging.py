"""Every package of the source tree is in ``pyproject.toml``'s package list: a new
sub-package missing from it would be absent from a non-editable install (and from the
wheel ``orch local up`` may build), though every test run from the tree still passes."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _packages(base: Path, prefix: str = "") -> set[str]:
    found = set()
    for init in base.rglob("__init__.py"):
        relative = init.parent.relative_to(base)
        found.add(".".join(filter(None, [prefix, *relative.parts])))
    return found


def test_every_package_is_listed():
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    present = _packages(ROOT / "localcloud", "localcloud") | _packages(ROOT / "orch", "orch")
    present |= _packages(ROOT / "pipeline" / "orchestrator", "orchestrator")
    assert sorted(present - listed) == []

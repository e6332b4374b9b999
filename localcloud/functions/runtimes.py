"""The runtimes localcloud's builder offers, as ``ListRuntimes`` answers them.

Cloud Functions builds with Google's buildpacks; localcloud's builder is its own Python
buildpack (``cloudbuild/buildpack.py``) with the versions of the ``google-22`` builder
(https://cloud.google.com/docs/buildpacks/builders): python310 to python313. A runtime
whose interpreter this machine lacks is still listed (it is what Google offers), with a
warning saying a deploy on it fails here.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass

from localcloud.cloudbuild.buildpack import BUILDER_PYTHONS

BUILDER = "gcr.io/buildpacks/builder:google-22"


@dataclass(frozen=True)
class Runtime:
    name: str  # python311
    version: str  # 3.11
    display_name: str
    warnings: tuple[str, ...]


def _installed(version: str) -> bool:
    if version == f"{sys.version_info[0]}.{sys.version_info[1]}":
        return True
    return shutil.which(f"python{version}") is not None


def available() -> list[Runtime]:
    out = []
    for version in BUILDER_PYTHONS[BUILDER]:
        warnings: tuple[str, ...] = ()
        if not _installed(version):
            warnings = (f"this machine has no python{version}: localcloud cannot build on it",)
        out.append(
            Runtime(f"python{version.replace('.', '')}", version, f"Python {version}", warnings)
        )
    return out


def names() -> list[str]:
    return [r.name for r in available()]

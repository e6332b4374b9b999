"""Builds: serialized ``Build`` protos, kept in memory and written through."""

from __future__ import annotations

from typing import Any

from google.cloud.devtools.cloudbuild_v1 import types

from localcloud.core.db import Database
from localcloud.core.table import Column, ProtoTable

BuildPb = types.Build.pb()


class BuildStore:
    def __init__(self, db: Database) -> None:
        # Keyed by id, not name: GetBuild and CancelBuild may be given only project and id.
        self.builds: ProtoTable[str, Any] = ProtoTable(
            db,
            "builds",
            BuildPb,
            key="id",
            key_of=lambda b: b.id,
            columns=(
                Column("project", lambda b: b.project_id),
                Column("created", lambda b: b.create_time.ToNanoseconds() / 1e9, "REAL"),
            ),
            parent="project",
            order_by="created",
        )

    def list(self, project: str) -> list[Any]:
        """Newest first, as Cloud Build lists them."""
        builds = self.builds.children(project)
        return sorted(builds, key=lambda b: b.create_time.ToNanoseconds(), reverse=True)

"""Builds as rows of serialized ``Build`` protos, kept in memory and written through."""

from __future__ import annotations

from typing import Any

from google.cloud.devtools.cloudbuild_v1 import types

from localcloud.core.db import Database

BuildPb = types.Build.pb()
SCHEMA = """
CREATE TABLE IF NOT EXISTS builds (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    created REAL NOT NULL,
    body BLOB NOT NULL
);
"""


class BuildStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.execute_script(SCHEMA)
        self.builds: dict[str, Any] = {}
        for (body,) in db.query("SELECT body FROM builds ORDER BY created"):
            build = BuildPb.FromString(body)
            self.builds[build.id] = build

    async def put(self, build: Any) -> None:
        self.builds[build.id] = build
        row = (
            build.id,
            build.project_id,
            build.create_time.ToNanoseconds() / 1e9,
            build.SerializeToString(),
        )
        await self.db.write(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO builds(id, project, created, body) VALUES (?, ?, ?, ?)", row
            )
        )

    def list(self, project: str) -> list[Any]:
        """Newest first, as Cloud Build lists them."""
        builds = [b for b in self.builds.values() if b.project_id == project]
        return sorted(builds, key=lambda b: b.create_time.ToNanoseconds(), reverse=True)

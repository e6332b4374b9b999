"""Cloud Run state: services, revisions and each service's stable port, in SQLite."""

from __future__ import annotations

from typing import Any

from google.cloud.run_v2 import types

from localcloud.core.db import Database

ServicePb = types.Service.pb()
RevisionPb = types.Revision.pb()
SCHEMA = """
CREATE TABLE IF NOT EXISTS run_services (name TEXT PRIMARY KEY, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS run_revisions (
    name TEXT PRIMARY KEY, service TEXT NOT NULL, body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS run_ports (service TEXT PRIMARY KEY, port INTEGER NOT NULL UNIQUE);
"""


class RunStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.execute_script(SCHEMA)
        self.services: dict[str, Any] = {
            s.name: s
            for s in (ServicePb.FromString(b) for (b,) in db.query("SELECT body FROM run_services"))
        }
        self.revisions: dict[str, Any] = {
            r.name: r
            for r in (
                RevisionPb.FromString(b) for (b,) in db.query("SELECT body FROM run_revisions")
            )
        }
        self.ports: dict[str, int] = dict(db.query("SELECT service, port FROM run_ports"))

    async def put_service(self, service: Any) -> None:
        self.services[service.name] = service
        row = (service.name, service.SerializeToString())
        await self.db.write(
            lambda c: c.execute("INSERT OR REPLACE INTO run_services VALUES (?, ?)", row)
        )

    async def put_revision(self, revision: Any) -> None:
        self.revisions[revision.name] = revision
        row = (revision.name, revision.service, revision.SerializeToString())
        await self.db.write(
            lambda c: c.execute("INSERT OR REPLACE INTO run_revisions VALUES (?, ?, ?)", row)
        )

    async def delete_revision(self, name: str) -> None:
        self.revisions.pop(name, None)
        await self.db.write(lambda c: c.execute("DELETE FROM run_revisions WHERE name=?", (name,)))

    async def delete_service(self, name: str) -> None:
        self.services.pop(name, None)
        self.ports.pop(name, None)
        for rev in [r for r in self.revisions.values() if r.service == name]:
            self.revisions.pop(rev.name, None)

        def write(c) -> None:
            c.execute("DELETE FROM run_services WHERE name=?", (name,))
            c.execute("DELETE FROM run_revisions WHERE service=?", (name,))
            c.execute("DELETE FROM run_ports WHERE service=?", (name,))

        await self.db.write(write)

    async def set_port(self, service: str, port: int) -> None:
        self.ports[service] = port
        await self.db.write(
            lambda c: c.execute("INSERT OR REPLACE INTO run_ports VALUES (?, ?)", (service, port))
        )

    def revisions_of(self, service: str) -> list[Any]:
        revs = [r for r in self.revisions.values() if r.service == service]
        return sorted(revs, key=lambda r: r.generation, reverse=True)

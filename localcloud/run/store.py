"""Cloud Run state: services, revisions and each service's stable port, in SQLite."""

from __future__ import annotations

from typing import Any

from google.cloud.run_v2 import types

from localcloud.core.db import Database, together
from localcloud.core.table import Column, ProtoTable

ServicePb = types.Service.pb()
RevisionPb = types.Revision.pb()
# A service keeps its port across restarts (its URL must not change), and the port is
# taken before the service is first stored, so it is a table of its own; a plain integer,
# not a proto.
PORTS = (
    "CREATE TABLE IF NOT EXISTS run_ports (service TEXT PRIMARY KEY, port INTEGER NOT NULL UNIQUE);"
)


class RunStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.services: ProtoTable[str, Any] = ProtoTable(db, "run_services", ServicePb)
        self.revisions: ProtoTable[str, Any] = ProtoTable(
            db,
            "run_revisions",
            RevisionPb,
            columns=(Column("service", lambda r: r.service),),
            parent="service",
        )
        db.execute_script(PORTS)
        self.ports: dict[str, int] = dict(db.query("SELECT service, port FROM run_ports"))

    async def delete_service(self, name: str) -> None:
        """The service, its revisions and its port, in one transaction."""
        self.ports.pop(name, None)
        await self.db.write(
            together(
                self.services.stage_delete(name),
                self.revisions.stage_delete_children(name),
                lambda c: c.execute("DELETE FROM run_ports WHERE service=?", (name,)),
            )
        )

    async def set_port(self, service: str, port: int) -> None:
        self.ports[service] = port
        await self.db.write(
            lambda c: c.execute("INSERT OR REPLACE INTO run_ports VALUES (?, ?)", (service, port))
        )

    def revisions_of(self, service: str) -> list[Any]:
        """Newest first, as Cloud Run lists them."""
        revs = self.revisions.children(service)
        return sorted(revs, key=lambda r: r.generation, reverse=True)

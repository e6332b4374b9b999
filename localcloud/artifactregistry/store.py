"""Artifact Registry repositories: serialized ``Repository`` protos, kept in memory and
written through. The images themselves live in the CNCF registry (``localcloud/registry``);
a repository here is what IAM grants name and what the registry front checks against."""

from __future__ import annotations

from typing import Any

from google.cloud.artifactregistry_v1 import types

from localcloud.core.db import Database
from localcloud.core.table import Column, ProtoTable

RepositoryPb = types.Repository.pb()


def _parent(repository: Any) -> str:
    return str(repository.name).rsplit("/repositories/", 1)[0]


class RepositoryStore:
    def __init__(self, db: Database) -> None:
        self.repositories: ProtoTable[str, Any] = ProtoTable(
            db,
            "artifactregistry_repositories",
            RepositoryPb,
            columns=[Column("parent", _parent)],
            parent="parent",
        )

    def get(self, name: str) -> Any | None:
        return self.repositories.get(name)

    def in_location(self, parent: str) -> list[Any]:
        return sorted(self.repositories.children(parent), key=lambda r: r.name)

    def find(self, project: str, repository: str) -> Any | None:
        """The repository ``repository`` of ``project`` in whichever location holds it: the
        registry's paths (``PROJECT/REPOSITORY/IMAGE``) do not say which; a project has one
        repository of a name per location, and localcloud's registry keeps one namespace."""
        prefix, suffix = f"projects/{project}/locations/", f"/repositories/{repository}"
        found = [
            r for n, r in self.repositories.items() if n.startswith(prefix) and n.endswith(suffix)
        ]
        return min(found, key=lambda r: r.name) if found else None

    def location_of(self, project: str, repository: str) -> str | None:
        found = self.find(project, repository)
        return found.name.split("/")[3] if found is not None else None

    async def put(self, repository: Any) -> None:
        await self.repositories.put(repository)

    async def delete(self, name: str) -> None:
        await self.repositories.delete(name)

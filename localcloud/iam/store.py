"""Service accounts and custom roles, kept like every other localcloud resource.

A deleted custom role stays (``deleted``: Google keeps it 7 days, undeletable, and its
bindings grant nothing meanwhile); a deleted service account is gone, its policy with it.
"""

from __future__ import annotations

from typing import Any

from google.cloud.iam_admin_v1 import types

from localcloud.core.authz import Role
from localcloud.core.db import Database
from localcloud.core.table import ProtoTable

ServiceAccount = types.ServiceAccount.pb()
RolePb = types.Role.pb()


class AccountStore:
    def __init__(self, db: Database) -> None:
        self.accounts: ProtoTable[str, Any] = ProtoTable(db, "iam_service_accounts", ServiceAccount)
        self.roles: ProtoTable[str, Any] = ProtoTable(db, "iam_custom_roles", RolePb)

    def find(self, name: str) -> Any:
        """An account by ``projects/P|-/serviceAccounts/EMAIL|UNIQUE_ID``."""
        found = self.accounts.get(name)
        if found is not None:
            return found
        key = name.rsplit("/", 1)[-1].lower()
        return next(
            (a for a in self.accounts.values() if key in (a.email.lower(), a.unique_id)), None
        )

    def role(self, name: str) -> Role | None:
        """A custom role as the authorizer resolves it."""
        found = self.roles.get(name)
        if found is None:
            return None
        return Role(
            found.name,
            found.title,
            frozenset(found.included_permissions),
            types.Role.RoleLaunchStage(found.stage).name,
            found.deleted,
        )

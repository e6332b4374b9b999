"""The local user and the caller of a call (localcloud/core/identity.py)."""

from __future__ import annotations

import pytest

from localcloud.core import identity
from localcloud.core.config import Config, ConfigError


def test_the_local_user_is_the_owner_unless_localcloud_principal_names_someone() -> None:
    assert Config.from_env({}).principal == ""
    assert identity.default_principal("p") == "serviceAccount:owner@p.iam.gserviceaccount.com"
    cfg = Config.from_env({"LOCALCLOUD_PRINCIPAL": "user:dev@example.com"})
    assert cfg.principal == "user:dev@example.com"


@pytest.mark.parametrize("bad", ["dev@example.com", "user:", "owner", "user:a b"])
def test_a_principal_that_is_not_a_member_is_refused_naming_the_variable(bad: str) -> None:
    with pytest.raises(ConfigError, match="LOCALCLOUD_PRINCIPAL"):
        Config.from_env({"LOCALCLOUD_PRINCIPAL": bad})


def test_a_call_is_served_as_its_caller_and_the_local_user_otherwise() -> None:
    identity.configure("user:me@example.com", lambda context: context["who"])
    try:
        assert identity.caller() == "user:me@example.com"
        with identity.serving("serviceAccount:x@p.iam.gserviceaccount.com"):
            assert identity.caller() == "serviceAccount:x@p.iam.gserviceaccount.com"
        assert identity.caller() == "user:me@example.com"
    finally:
        identity.configure(identity.default_principal("local-project"))

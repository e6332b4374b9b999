"""Which failures a pipeline step reports as final, and which it leaves to the workflow's retry."""

from __future__ import annotations

import pytest
from google.api_core import exceptions

from orchestrator.step import TRANSIENT, StepFailed, reraise


@pytest.mark.parametrize(
    "error",
    [exceptions.NotFound("gone"), exceptions.InvalidArgument("bad"), exceptions.Forbidden("no")],
)
def test_client_errors_are_final_and_say_what_failed(error):
    with pytest.raises(StepFailed) as caught:
        reraise("DEPLOY_FAILED", "Cloud Run refused the service", error)
    assert caught.value.code == "DEPLOY_FAILED"
    assert caught.value.message.startswith("Cloud Run refused the service: ")


@pytest.mark.parametrize(
    "error",
    [
        exceptions.ServiceUnavailable("busy"),
        exceptions.TooManyRequests("slow down"),
        exceptions.Aborted("concurrent change"),
        exceptions.DeadlineExceeded("late"),
    ],
)
def test_busy_or_conflicting_platforms_are_retried(error):
    with pytest.raises(type(error)):
        reraise("DEPLOY_FAILED", "Cloud Run refused the service", error)
    assert isinstance(error, TRANSIENT)


def test_faults_in_the_step_itself_are_not_transient():
    assert not isinstance(KeyError("x"), TRANSIENT)
    assert isinstance(ConnectionResetError(), TRANSIENT)


# ------------------------------------------------------------- no local default outside localcloud


def test_outside_localcloud_a_missing_project_is_an_error_naming_what_to_set(tmp_path) -> None:
    """Issue 15 (10): a missing project never silently becomes ``local-project`` on Google
    Cloud; with no variable and no Application Default Credentials the error says what to set."""
    import pytest

    from orchestrator.clients import ProjectNotSet, default_project
    from orchestrator.config import Settings

    bare = {"CLOUDSDK_CONFIG": str(tmp_path), "NO_GCE_CHECK": "True", "HOME": str(tmp_path)}
    with pytest.raises(ProjectNotSet, match="GOOGLE_CLOUD_PROJECT"):
        default_project(bare)
    with pytest.raises(ProjectNotSet, match="GOOGLE_CLOUD_PROJECT"):
        Settings.from_env({**bare, "ORCH_CONFIG": str(tmp_path / "none.json")})
    assert default_project({**bare, "GOOGLE_CLOUD_PROJECT": "p1"}) == "p1"
    assert default_project({**bare, "GCP_PROJECT": "p2"}) == "p2"
    # With localcloud, its default project.
    local = {**bare, "LOCALCLOUD_GRPC_HOST": "127.0.0.1:1"}
    assert default_project(local) == "local-project"
    assert Settings.from_env({**local, "ORCH_CONFIG": str(tmp_path / "none.json")}).project == (
        "local-project"
    )

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

"""The Build the pipeline submits (issue 15): as whom it runs, where it logs, which builder.

On Google Cloud a build that names no account runs as the project's default build account,
which Terraform grants nothing (and which projects made since mid-2024 may not have); one
that names its own may not log to the default bucket
(https://cloud.google.com/build/docs/securing-builds/configure-user-specified-service-accounts).
"""

from __future__ import annotations

from dataclasses import replace

from google.cloud.devtools import cloudbuild_v1

from orchestrator.build import BUILD_TIMEOUT, BUILDER, pack_build
from orchestrator.config import Settings


def test_the_build_runs_as_the_build_account_and_logs_to_the_pipelines_bucket():
    settings = Settings.defaults("my-project")
    build = pack_build(("src", "a.zip", 7), "img", {"K": "v"}, ["t"], settings)
    assert build.service_account == (
        "projects/my-project/serviceAccounts/orch-builder@my-project.iam.gserviceaccount.com"
    )
    assert build.logs_bucket == "gs://my-project-orch-build-logs"
    assert build.options.logging == cloudbuild_v1.BuildOptions.LoggingMode.GCS_ONLY
    assert build.timeout.total_seconds() == BUILD_TIMEOUT


def test_the_build_follows_the_settings_it_is_given():
    settings = replace(
        Settings.defaults("p2"),
        build_service_account="custom@p2.iam.gserviceaccount.com",
        build_logs_bucket="p2-logs",
    )
    build = pack_build(("src", "a.zip", None), "img", {}, [], settings)
    assert build.service_account == "projects/p2/serviceAccounts/custom@p2.iam.gserviceaccount.com"
    assert build.logs_bucket == "gs://p2-logs"


def test_the_builder_is_pinned_by_a_versioned_tag():
    args = list(pack_build(("s", "o", 1), "img", {}, [], Settings.defaults("p")).steps[0].args)
    builder = args[args.index("--builder") + 1]
    assert builder == BUILDER
    assert not builder.endswith(":latest")

"""Who a build runs as and where its log goes, checked as Cloud Build checks them.

A build names the service account it runs as in ``service_account``
(``projects/PROJECT/serviceAccounts/ACCOUNT``, ACCOUNT an email or unique id; see the
``Build.service_account`` reference,
https://cloud.google.com/build/docs/api/reference/rest/v1/projects.builds#Build). A build
that names one may not log to the default (Google-owned) logs bucket: "If you specify your
own service account for builds, you must store your build logs either in Cloud Logging or
in a user-created Cloud Storage bucket"
(https://cloud.google.com/build/docs/securing-builds/configure-user-specified-service-accounts),
and CreateBuild refuses it with INVALID_ARGUMENT and the message in ``LOGS_RULE``. A
``logs_bucket`` that does not exist (or that the build's account cannot reach) is refused at
creation too, INVALID_ARGUMENT ``invalid bucket "NAME"; builder service account does not
have access to the bucket``. Without a service account the build runs as the project's
default build account, which for projects created since mid-2024 is the Compute Engine
default service account (https://cloud.google.com/build/docs/cloud-build-service-account-updates).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from google.cloud.devtools.cloudbuild_v1 import types

from localcloud.core.errors import InvalidArgument
from localcloud.core.projects import project_number

_SERVICE_ACCOUNT = re.compile(r"projects/([^/]+)/serviceAccounts/([^/]+)")
# An account is named by its email (…@….gserviceaccount.com) or its numeric unique id.
_ACCOUNT = re.compile(r"[a-z0-9][-a-z0-9._]*@[a-z0-9][-a-z0-9.]*\.gserviceaccount\.com|\d{1,40}")
# Cloud Storage bucket names (https://cloud.google.com/storage/docs/buckets#naming).
_BUCKET = re.compile(r"[a-z0-9][-a-z0-9_.]{1,220}[a-z0-9]")

Logging = types.BuildOptions.LoggingMode
Behavior = types.BuildOptions.DefaultLogsBucketBehavior
# What Cloud Build answers, word for word (seen in build failures reported since 2024, e.g.
# https://github.com/GoogleCloudPlatform/terraform-google-dataplex-auto-data-quality/pull/39).
LOGS_RULE = (
    "if 'build.service_account' is specified, the build must either (a) specify "
    "'build.logs_bucket', (b) use the REGIONAL_USER_OWNED_BUCKET "
    "build.options.default_logs_bucket_behavior option, or (c) use either "
    "CLOUD_LOGGING_ONLY / NONE logging options"
)
NO_STORAGE_LOG = {Logging.CLOUD_LOGGING_ONLY, Logging.STACKDRIVER_ONLY, Logging.NONE}


@dataclass(frozen=True)
class LogPlace:
    """Where a build's log object goes: ``gs://bucket/prefix/log-ID.txt``; ``managed`` when
    the bucket is one Cloud Build owns or makes itself (created on first use), not the user's."""

    bucket: str
    prefix: str
    managed: bool


def default_account(project: str) -> str:
    """The account a build runs as when it names none: the Compute Engine default."""
    return f"{project_number(project)}-compute@developer.gserviceaccount.com"


def service_account(build: Any, project: str) -> str:
    """The email of the account ``build`` runs as; INVALID_ARGUMENT for a malformed name."""
    name = build.service_account
    if not name:
        return default_account(project)
    match = _SERVICE_ACCOUNT.fullmatch(name)
    if match is None or not _ACCOUNT.fullmatch(match.group(2)):
        raise InvalidArgument(
            f"invalid value for 'build.service_account': {name!r} is not of the form "
            "projects/{PROJECT_ID}/serviceAccounts/{ACCOUNT}, ACCOUNT being the service "
            "account's email or unique id"
        )
    return match.group(2)


def writes_storage_log(build: Any) -> bool:
    """Whether the build's log goes to Cloud Storage (every mode but Cloud Logging only/none)."""
    return build.options.logging not in NO_STORAGE_LOG


def check_logging(build: Any) -> None:
    """Cloud Build's rule for builds that name their own service account (``LOGS_RULE``)."""
    if not build.service_account or build.logs_bucket or not writes_storage_log(build):
        return
    if build.options.default_logs_bucket_behavior == Behavior.REGIONAL_USER_OWNED_BUCKET:
        return
    raise InvalidArgument(LOGS_RULE)


def place_region(location: str) -> str:
    """The region a build's regional resources live in (a global build's: us-central1)."""
    return "us-central1" if location == "global" else location


def log_place(build: Any, project: str, location: str) -> LogPlace:
    """Where the log object goes. A given ``logs_bucket`` must be ``gs://BUCKET[/PREFIX]``
    (INVALID_ARGUMENT ``invalid logs bucket`` otherwise, as Cloud Build says); without one,
    the project's regional user-owned bucket when asked for, else the default bucket."""
    region = place_region(location)
    regional = f"{project_number(project)}-{region}-cloudbuild-logs"
    default = f"{project}_cloudbuild-logs"
    if build.logs_bucket:
        bucket, _, prefix = build.logs_bucket.removeprefix("gs://").partition("/")
        if not build.logs_bucket.startswith("gs://") or not _BUCKET.fullmatch(bucket):
            raise InvalidArgument(f'invalid logs bucket "{build.logs_bucket}"')
        # A retried build names the bucket its first run was given by default.
        return LogPlace(bucket, prefix.strip("/"), managed=bucket in (regional, default))
    if build.options.default_logs_bucket_behavior == Behavior.REGIONAL_USER_OWNED_BUCKET:
        return LogPlace(regional, "", managed=True)
    return LogPlace(default, "", managed=True)


def missing_bucket(bucket: str) -> InvalidArgument:
    """What CreateBuild answers for a logs bucket that does not exist or that the build's
    account cannot reach (as reported in
    https://github.com/google/trillian/pull/2349)."""
    return InvalidArgument(
        f'invalid bucket "{bucket}"; builder service account does not have access to the bucket'
    )

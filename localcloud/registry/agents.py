"""Cloud Run's service agent: the Google-managed account that reads a revision's image.

Cloud Run imports a revision's image as its project's Cloud Run Service Agent,
``service-PROJECT_NUMBER@serverless-robot-prod.iam.gserviceaccount.com``, not as the
deployer nor as the revision's own service account. Google grants the agent its role on
its project when the Cloud Run API is enabled, so it reads every repository of its own
project; "If your repositories are in a different project, you must grant Artifact
Registry Reader permissions to the Cloud Run Service Agent"
(https://cloud.google.com/artifact-registry/docs/integrate-cloud-run,
https://cloud.google.com/iam/docs/service-agents). localcloud has no project policy
binding to show for that role, so the registry front holds the agent to the same rule
here: downloadArtifacts in its own project, anything else only as granted.
"""

from __future__ import annotations

import re

from localcloud.core.projects import project_number

RUN_AGENT_DOMAIN = "serverless-robot-prod.iam.gserviceaccount.com"
_RUN_AGENT = re.compile(r"serviceAccount:service-(\d+)@" + re.escape(RUN_AGENT_DOMAIN))
DOWNLOAD = "artifactregistry.repositories.downloadArtifacts"


def run_agent(project: str) -> str:
    """The email of ``project``'s Cloud Run Service Agent."""
    return f"service-{project_number(project)}@{RUN_AGENT_DOMAIN}"


def reads_by_default(member: str, permission: str, repository: str) -> bool:
    """Whether ``member`` holds ``permission`` on ``repository``
    (``projects/P/locations/L/repositories/R``) through the role Google gives a service
    agent on its own project: Cloud Run's agent reads its project's images."""
    found = _RUN_AGENT.fullmatch(member)
    if found is None or permission != DOWNLOAD:
        return False
    parts = repository.split("/")
    return len(parts) > 1 and project_number(parts[1]) == found.group(1)


def image_denied(image: str, image_project: str, project: str) -> str:
    """What Cloud Run says of a revision whose image its agent may not read (seen in
    deploy failures, e.g. Cloud Run's troubleshooting page
    https://cloud.google.com/run/docs/troubleshooting); the caller
    prefixes the revision's "is not ready" sentence."""
    agent = run_agent(project)
    message = (
        f"Google Cloud Run Service Agent {agent} must have permission to read the image, "
        f"{image}. Ensure that the provided container image URL is correct and that the "
        "above account has permission to access the image. If you just enabled the Cloud "
        "Run API, the permissions might take a few minutes to propagate."
    )
    if image_project != project:
        message += (
            f" Note that the image is from project [{image_project}], which is not the same "
            f"as this project [{project}]. Permission must be granted to the Google Cloud Run "
            f"Service Agent {agent} from this project."
        )
    return message

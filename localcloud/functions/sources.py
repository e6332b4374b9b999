"""Where a function's source goes, as Cloud Functions (2nd gen) keeps it.

``GenerateUploadUrl`` answers a signed URL for a new object in the project's
``gcf-v2-uploads-PROJECT_NUMBER-REGION`` bucket, made on first use; a deploy copies the
named upload to ``gcf-v2-sources-PROJECT_NUMBER-REGION/FUNCTION/function-source.zip``,
which the build reads and ``GenerateDownloadUrl`` signs a GET for. Both buckets are
regional, in the function's region, as Google makes them. The signed URLs live 30
minutes ("should be used within 30 minutes of generation", functions.proto).
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import aiohttp

from localcloud.core.config import Config
from localcloud.core.errors import Internal, InvalidArgument
from localcloud.core.projects import project_number
from localcloud.storage import signed

URL_SECONDS = 1800
SOURCE_OBJECT = "function-source.zip"


def agent(project: str) -> str:
    """The Cloud Functions service agent, the signer of the URLs it hands out."""
    return f"service-{project_number(project)}@gcf-admin-robot.iam.gserviceaccount.com"


def uploads_bucket(project: str, region: str) -> str:
    return f"gcf-v2-uploads-{project_number(project)}-{region}"


def sources_bucket(project: str, region: str) -> str:
    return f"gcf-v2-sources-{project_number(project)}-{region}"


class Sources:
    def __init__(self, config: Config, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session
        self.base = f"http://{config.storage_address}"

    async def _ensure_bucket(self, project: str, bucket: str, region: str) -> None:
        async with self.session.get(f"{self.base}/storage/v1/b/{bucket}") as found:
            if found.status == 200:
                return
        body = {"name": bucket, "location": region.upper()}
        async with self.session.post(
            f"{self.base}/storage/v1/b", params={"project": project}, json=body
        ) as made:
            if made.status >= 400 and made.status != 409:
                raise Internal(f"could not create gs://{bucket}: {(await made.text())[:300]}")

    async def upload_url(self, project: str, region: str) -> tuple[str, Any]:
        """A signed PUT URL for a new zip in the uploads bucket, and where it will be."""
        bucket = uploads_bucket(project, region)
        await self._ensure_bucket(project, bucket, region)
        name = f"{uuid.uuid4()}.zip"
        url = signed.sign(
            self.config.data_dir,
            self.base,
            verb="PUT",
            bucket=bucket,
            name=name,
            signer=agent(project),
            seconds=URL_SECONDS,
            content_type="application/zip",
        )
        return url, (bucket, name)

    def download_url(self, project: str, bucket: str, name: str) -> str:
        return signed.sign(
            self.config.data_dir,
            self.base,
            verb="GET",
            bucket=bucket,
            name=name,
            signer=agent(project),
            seconds=URL_SECONDS,
        )

    async def copy_in(
        self, project: str, region: str, function_id: str, source: Any
    ) -> tuple[str, str, int]:
        """Copy the named source into the sources bucket; (bucket, object, generation) of
        the copy. INVALID_ARGUMENT naming the field when the source cannot be read."""
        bucket = sources_bucket(project, region)
        await self._ensure_bucket(project, bucket, region)
        name = f"{function_id}/{SOURCE_OBJECT}"
        params = {"sourceGeneration": str(source.generation)} if source.generation else {}
        url = (
            f"{self.base}/storage/v1/b/{quote(source.bucket, safe='')}/o/"
            f"{quote(source.object_, safe='')}/copyTo/b/{bucket}/o/{quote(name, safe='')}"
        )
        async with self.session.post(url, params=params, json={}) as resp:
            if resp.status == 404:
                generation = f"#{source.generation}" if source.generation else ""
                raise InvalidArgument(
                    "Invalid function.build_config.source.storage_source: object "
                    f"gs://{source.bucket}/{source.object_}{generation} does not exist; "
                    "upload the zip to the URL GenerateUploadUrl answered first"
                )
            if resp.status >= 400:
                raise InvalidArgument(
                    "Invalid function.build_config.source.storage_source: "
                    f"gs://{source.bucket}/{source.object_} cannot be read: "
                    f"{(await resp.text())[:300]}"
                )
            document = await resp.json(content_type=None)
        return bucket, name, int(document.get("generation") or 0)

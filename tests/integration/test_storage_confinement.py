"""An object name cannot reach the host through the storage port (issue 12, finding 3).

fake-gcs-server's filesystem backend joins names to its root as they are. The front gives
it only encoded names (``localcloud/storage/layout.py``), and it runs under bubblewrap with
only its root writable, so a traversal name never writes a host file. That such names are
stored and served as Google does is tested in ``test_storage_names.py``.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is missing")


def upload(localcloud, bucket: str, name: str, data: bytes) -> int:
    query = urllib.parse.urlencode({"uploadType": "media", "name": name})
    url = f"http://{localcloud.config.storage_address}/upload/storage/v1/b/{bucket}/o?{query}"
    request = urllib.request.Request(url, data=data, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_traversal_name_writes_no_host_file(localcloud, clients_storage_bucket):
    token = uuid.uuid4().hex
    data_dir = Path(localcloud.config.data_dir)
    targets = {
        "/tmp": Path("/tmp") / f"lc-escape-{token}",
        "next to the data dir": data_dir.parent / f"lc-escape-{token}",
    }
    depth = len(data_dir.parts) + 4  # more ../ than the root is deep
    for where, target in targets.items():
        name = "../" * depth + str(target).lstrip("/")
        upload(localcloud, clients_storage_bucket, name, b"written by an object name")
        assert not target.exists(), f"an object name wrote {target} ({where})"
    # The storage port still serves (nothing crashed it).
    assert upload(localcloud, clients_storage_bucket, f"ok-{token}", b"fine") == 200


@pytest.fixture
def clients_storage_bucket(localcloud):
    from google.cloud import storage

    client = storage.Client(project="local-project")
    bucket = client.create_bucket(f"confine-{uuid.uuid4().hex[:8]}")
    yield bucket.name
    for blob in client.list_blobs(bucket.name):
        blob.delete()
    bucket.delete()

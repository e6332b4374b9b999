"""What a bucket is besides its objects: its location, storage class and project, as Google
keeps them.

fake-gcs-server answers its ``-location`` setting (localcloud's region) for every bucket
and project number 0, whatever the create request asked for, and keeps no storage class.
Code that reads where a bucket is (Eventarc puts a storage trigger in its bucket's
location) or whose it is (a trigger may watch only a bucket of its own project) then
meets buckets no real project has. So the front (``front.py``) keeps these fields itself:

- ``buckets.insert`` is checked as Google checks it
  (https://cloud.google.com/storage/docs/json_api/v1/buckets/insert): the ``project``
  query parameter is required; ``location`` defaults to the ``US`` multi-region and must
  be a location Cloud Storage has (https://cloud.google.com/storage/docs/locations), else
  400 "The specified location constraint is not valid."; ``storageClass`` defaults to
  ``STANDARD``.
- what it names is kept in a side file next to fake-gcs-server's own bucket metadata,
  ``ROOT/.BUCKET.localcloud-bucket``, written once the backend made the bucket and
  removed with it. fake-gcs-server takes only the root's directories for buckets, and a
  bucket name starts with a letter or digit, so no bucket's directory can be this file;
- every bucket resource the front answers carries them (``location`` uppercased,
  ``locationType`` region / dual-region / multi-region, ``storageClass``,
  ``projectNumber`` from ``localcloud.core.projects``), and ``buckets.list`` lists the
  buckets of the ``project`` it names only.

A bucket made before the front kept these fields has no side file. At start the front
gives each such bucket one saying what it always answered: the region localcloud runs
in, in localcloud's default project (``adopt``). From then on it stays there, whatever
region a later start is configured with, as a real bucket never moves.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from localcloud.core.projects import project_number
from localcloud.storage.names import StorageError

LOG = logging.getLogger(__name__)

SUFFIX = ".localcloud-bucket"

# https://cloud.google.com/storage/docs/locations#available-locations
MULTI_REGIONS = frozenset({"ASIA", "EU", "US"})
# Predefined dual-regions and the regions they pair
# (https://cloud.google.com/storage/docs/locations#predefined).
DUAL_REGIONS = {
    "ASIA1": ("ASIA-NORTHEAST1", "ASIA-NORTHEAST2"),
    "EUR4": ("EUROPE-NORTH1", "EUROPE-WEST4"),
    "EUR5": ("EUROPE-WEST1", "EUROPE-WEST2"),
    "EUR7": ("EUROPE-WEST2", "EUROPE-WEST3"),
    "EUR8": ("EUROPE-WEST3", "EUROPE-WEST6"),
    "NAM4": ("US-CENTRAL1", "US-EAST1"),
}
REGIONS = frozenset(
    {
        # North America
        "NORTHAMERICA-NORTHEAST1",
        "NORTHAMERICA-NORTHEAST2",
        "NORTHAMERICA-SOUTH1",
        "US-CENTRAL1",
        "US-EAST1",
        "US-EAST4",
        "US-EAST5",
        "US-SOUTH1",
        "US-WEST1",
        "US-WEST2",
        "US-WEST3",
        "US-WEST4",
        # South America
        "SOUTHAMERICA-EAST1",
        "SOUTHAMERICA-WEST1",
        # Europe
        "EUROPE-CENTRAL2",
        "EUROPE-NORTH1",
        "EUROPE-NORTH2",
        "EUROPE-SOUTHWEST1",
        "EUROPE-WEST1",
        "EUROPE-WEST2",
        "EUROPE-WEST3",
        "EUROPE-WEST4",
        "EUROPE-WEST6",
        "EUROPE-WEST8",
        "EUROPE-WEST9",
        "EUROPE-WEST10",
        "EUROPE-WEST12",
        # Asia
        "ASIA-EAST1",
        "ASIA-EAST2",
        "ASIA-NORTHEAST1",
        "ASIA-NORTHEAST2",
        "ASIA-NORTHEAST3",
        "ASIA-SOUTH1",
        "ASIA-SOUTH2",
        "ASIA-SOUTHEAST1",
        "ASIA-SOUTHEAST2",
        # Middle East
        "ME-CENTRAL1",
        "ME-CENTRAL2",
        "ME-WEST1",
        # Australia
        "AUSTRALIA-SOUTHEAST1",
        "AUSTRALIA-SOUTHEAST2",
        # Africa
        "AFRICA-SOUTH1",
    }
)
# A configurable dual-region is named by a multi-region and two of its regions
# (https://cloud.google.com/storage/docs/locations#configurable): the regions' prefixes.
MULTI_REGION_PREFIXES = {"US": ("US-",), "EU": ("EUROPE-",), "ASIA": ("ASIA-",)}
DEFAULT_LOCATION = "US"
# https://cloud.google.com/storage/docs/storage-classes (and the legacy classes, which
# Google still accepts: https://cloud.google.com/storage/docs/storage-classes#legacy).
STORAGE_CLASSES = frozenset(
    {
        "STANDARD",
        "NEARLINE",
        "COLDLINE",
        "ARCHIVE",
        "MULTI_REGIONAL",
        "REGIONAL",
        "DURABLE_REDUCED_AVAILABILITY",
    }
)
DEFAULT_STORAGE_CLASS = "STANDARD"


@dataclass
class BucketAttrs:
    """The fields of a bucket the front keeps (those fake-gcs-server does not)."""

    location: str
    location_type: str
    storage_class: str
    project: str
    project_number: str
    data_locations: list[str] = field(default_factory=list)

    def apply(self, resource: dict[str, Any]) -> dict[str, Any]:
        """``resource`` (a bucket resource of the JSON API) with these fields."""
        resource["location"] = self.location
        resource["locationType"] = self.location_type
        resource["storageClass"] = self.storage_class
        resource["projectNumber"] = self.project_number
        if self.data_locations:
            resource["customPlacementConfig"] = {"dataLocations": list(self.data_locations)}
        else:
            resource.pop("customPlacementConfig", None)
        return resource


def location_type(location: str) -> str:
    """Google's ``locationType`` of a known location (``location`` uppercased)."""
    if location in MULTI_REGIONS:
        return "multi-region"
    if location in DUAL_REGIONS:
        return "dual-region"
    return "region"


def invalid_location(location: Any) -> StorageError:
    # Google's words, as the JSON API answers them (reported in
    # https://github.com/googleapis/google-cloud-cpp/issues/8566), and the value refused.
    return StorageError(
        400, f"The specified location constraint is not valid. (location: {str(location)!r})"
    )


def requested(body: dict[str, Any], project: str) -> BucketAttrs:
    """What a ``buckets.insert`` body names, checked as Google checks it."""
    raw = body.get("location")
    if raw is None or raw == "":
        raw = DEFAULT_LOCATION
    if not isinstance(raw, str):
        raise invalid_location(raw)
    location = raw.upper()
    data_locations = _data_locations(body.get("customPlacementConfig"), location)
    if data_locations:
        kind = "dual-region"
    elif location in MULTI_REGIONS or location in DUAL_REGIONS or location in REGIONS:
        kind = location_type(location)
    else:
        raise invalid_location(raw)
    storage_class = body.get("storageClass") or DEFAULT_STORAGE_CLASS
    if not isinstance(storage_class, str) or storage_class.upper() not in STORAGE_CLASSES:
        raise StorageError(
            400,
            f"Invalid argument: storageClass {str(storage_class)!r} is not a storage class "
            f"(one of {', '.join(sorted(STORAGE_CLASSES))})",
        )
    return BucketAttrs(
        location=location,
        location_type=kind,
        storage_class=storage_class.upper(),
        project=project,
        project_number=project_number(project),
        data_locations=data_locations,
    )


def _data_locations(config: Any, location: str) -> list[str]:
    """The two regions of a configurable dual-region, checked; [] when none is asked for."""
    if config is None:
        return []
    regions = config.get("dataLocations") if isinstance(config, dict) else None
    if not regions:
        return []
    if location not in MULTI_REGIONS:
        raise StorageError(
            400,
            "customPlacementConfig.dataLocations needs a multi-region location (US, EU or "
            f"ASIA) naming the continent of its regions, not {location!r}",
        )
    if not isinstance(regions, list) or len(regions) != 2:
        raise StorageError(400, "customPlacementConfig.dataLocations must name exactly two regions")
    upper = [str(r).upper() for r in regions]
    prefixes = MULTI_REGION_PREFIXES[location]
    for region in upper:
        if region not in REGIONS or not region.startswith(prefixes):
            raise StorageError(
                400,
                f"customPlacementConfig.dataLocations: {region!r} is not a region of the "
                f"{location} multi-region",
            )
    if upper[0] == upper[1]:
        raise StorageError(
            400, "customPlacementConfig.dataLocations must name two different regions"
        )
    return upper


class BucketStore:
    """The side files: one JSON document per bucket in the storage root."""

    def __init__(self, root: Path, region: str, project: str) -> None:
        self.root = root
        self.region = region.upper()
        self.project = project

    def path(self, bucket: str) -> Path:
        return self.root / f".{bucket}{SUFFIX}"

    def legacy(self) -> BucketAttrs:
        """What a bucket made before the front kept these fields always answered."""
        return BucketAttrs(
            location=self.region,
            location_type=location_type(self.region),
            storage_class=DEFAULT_STORAGE_CLASS,
            project=self.project,
            project_number=project_number(self.project),
        )

    def read(self, bucket: str) -> BucketAttrs | None:
        try:
            data = json.loads(self.path(bucket).read_text())
            return BucketAttrs(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            LOG.warning("storage: bucket %s has an unreadable side file: %s", bucket, exc)
            return None

    def get(self, bucket: str) -> BucketAttrs:
        """The bucket's fields; a bucket without a side file answers as it always did."""
        return self.read(bucket) or self.legacy()

    def write(self, bucket: str, attrs: BucketAttrs) -> None:
        path = self.path(bucket)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "w") as out:
            json.dump(asdict(attrs), out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)

    def delete(self, bucket: str) -> None:
        self.path(bucket).unlink(missing_ok=True)

    def adopt(self, buckets: list[str]) -> None:
        """Give each bucket without a side file the fields it answered so far (see the
        module's docstring), so they no longer follow the configured region."""
        adopted = [b for b in buckets if self.read(b) is None]
        for bucket in adopted:
            self.write(bucket, self.legacy())
        if adopted:
            LOG.info(
                "storage: %d buckets made before locations were kept are in %s, project %s",
                len(adopted),
                self.region,
                self.project,
            )

"""``template.containers[0].resources.limits``: Cloud Run's memory and CPU, as Google reads them.

Values are Kubernetes quantities (``512Mi``, ``1Gi``, ``2G``, ``1000m``, ``0.5``). Google's
rules (https://cloud.google.com/run/docs/configuring/services/memory-limits and
.../cpu): memory from 128 MiB (first generation) to 32 GiB, default 512 MiB; CPU a fraction
below 1 or 1, 2, 4, 6 or 8, default 1; more than 4, 8, 16 or 24 GiB of memory needs at
least 2, 4, 6 or 8 CPUs. A revision that breaks them is refused with INVALID_ARGUMENT, as
Cloud Run refuses it, and what passes is enforced on the instance (``cgroups.py``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from localcloud.core.errors import InvalidArgument
from localcloud.run.cgroups import Limits

MIB = 1024 * 1024
GIB = 1024 * MIB
DEFAULT_MEMORY = 512 * MIB
MIN_MEMORY = 128 * MIB
MAX_MEMORY = 32 * GIB
WHOLE_CPUS = (1, 2, 4, 6, 8)
MIN_CPUS_FOR_MEMORY = ((24 * GIB, 8), (16 * GIB, 6), (8 * GIB, 4), (4 * GIB, 2))
# Cloud Run documents no process limit; gVisor and the memory limit bound it. This one stops
# a fork bomb long before the machine notices, and is far above what a function forks.
PIDS = 1024

_UNITS = {
    "": 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T|)$")
FIELD = "service.template.containers[0].resources.limits"


def memory(text: str) -> int:
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise InvalidArgument(f"{FIELD}.memory: {text!r} is not a quantity such as 512Mi or 1Gi")
    value = int(float(match.group(1)) * _UNITS[match.group(2)])
    if not MIN_MEMORY <= value <= MAX_MEMORY:
        raise InvalidArgument(
            f"{FIELD}.memory: {text} is outside what Cloud Run allows (128Mi to 32Gi)"
        )
    return value


def cpu(text: str) -> float:
    value_text = text.strip()
    try:
        value = int(value_text[:-1]) / 1000 if value_text.endswith("m") else float(value_text)
    except ValueError:
        raise InvalidArgument(
            f"{FIELD}.cpu: {text!r} is not a CPU count such as 1 or 500m"
        ) from None
    if not (0.08 <= value < 1 or value in WHOLE_CPUS):
        raise InvalidArgument(
            f"{FIELD}.cpu: {text} is not allowed: use a fraction from 0.08 to 1, or 1, 2, 4, 6 or 8"
        )
    return value


def limits(values: Mapping[str, str]) -> Limits:
    """The instance limits of a revision's ``limits`` map; InvalidArgument names the key."""
    unknown = sorted(set(values) - {"memory", "cpu", "nvidia.com/gpu"})
    if unknown:
        raise InvalidArgument(f"{FIELD}: unknown resource {unknown[0]!r}")
    mem = memory(values["memory"]) if "memory" in values else DEFAULT_MEMORY
    cpus = cpu(values["cpu"]) if "cpu" in values else 1.0
    for above, needed in MIN_CPUS_FOR_MEMORY:
        if mem > above and cpus < needed:
            raise InvalidArgument(
                f"{FIELD}: {values.get('memory')} of memory needs at least {needed} CPUs, not "
                f"{values.get('cpu', '1')}"
            )
    return Limits(memory=mem, cpu=cpus, pids=PIDS)

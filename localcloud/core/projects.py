"""Project numbers: one number per project id, the same in every localcloud service.

Google gives each project a number besides its id, and several APIs answer with it: a
bucket's ``projectNumber``, the Compute Engine default service account
``NUMBER-compute@developer.gserviceaccount.com`` that Cloud Build runs as, Workflows'
``GOOGLE_CLOUD_PROJECT_NUMBER``. Code that compares them (is this bucket in my project?)
works only if every service answers the same number for a project, so they all ask here.
"""

from __future__ import annotations

import hashlib


def project_number(project: str) -> str:
    """A stable 12-digit number for a project id (``hash()`` changes with every process).

    A project named by its number (all digits, as Google's APIs also accept) is that number.
    """
    if project.isdigit():
        return project
    return str(int(hashlib.sha256(project.encode()).hexdigest(), 16) % 10**12).zfill(12)

"""localcloud: the Google Cloud APIs the orchestrator uses, served on loopback.

Official ``google-cloud-*`` clients talk to it over the real wire protocols, so the
orchestrator runs unchanged on one machine with no cloud account.
"""

__version__ = "0.1.0"

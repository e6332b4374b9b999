"""What functions-framework loads: the entry points (``--target`` names one of them)."""

from orchestrator.functions import *  # noqa: F403

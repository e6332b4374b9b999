"""``orch``: the command line of the deploy orchestrator (and of localcloud)."""

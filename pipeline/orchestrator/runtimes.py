"""The runtimes a manifest may name, the language each one is, and what a source of that
language must have at its root.

Kept apart from ``build.py`` (which talks to Cloud Build) so that the manifest, the intake
and the ``orch`` command line can ask "which language is ``nodejs22``?" without loading
Google's client libraries.

The runtimes are exactly the versions the pinned builder builds for functions, read from
its table (https://cloud.google.com/docs/buildpacks/builders, "builder:google-22 supported
languages"): Python 3.10 to 3.13 and Node.js 12 to 24. Cloud Run functions has retired the
oldest Node.js runtimes (https://cloud.google.com/run/docs/runtimes/function-runtimes): the
builder still builds them for ``api: run``, and with ``api: functions`` Google refuses them
itself, as it will each runtime on its decommission date.
"""

from __future__ import annotations

# A versioned builder, not the moving ``latest`` (google-22 is Ubuntu 22).
BUILDER = "gcr.io/buildpacks/builder:google-22"
BUILDER_PYTHONS = ("3.10", "3.11", "3.12", "3.13")
BUILDER_NODEJS = ("12", "14", "16", "18", "20", "22", "24")

PYTHON = "python"
NODEJS = "nodejs"
LANGUAGE_NAMES = {PYTHON: "Python", NODEJS: "Node.js"}
# The file at the archive root that makes a source one language's (Google's buildpacks
# detect Python by main.py for a function, Node.js by package.json).
ENTRY_FILES = {PYTHON: "main.py", NODEJS: "package.json"}

RUNTIMES = {
    **{f"python{v.replace('.', '')}": PYTHON for v in BUILDER_PYTHONS},
    **{f"nodejs{v}": NODEJS for v in BUILDER_NODEJS},
}
# With no runtime named: a Python source gets the builder's own Python (no runtime, as
# before Node.js was accepted); a Node.js source gets Node.js 22, the newest LTS Cloud Run
# functions runs on the google-22 stack. Named rather than left to the builder (which
# takes its newest Node.js) so the same zip gets the same Node.js on Google Cloud and
# locally, and so the resolved manifest, which is all the later steps see, says the
# source is Node.js.
DEFAULT_RUNTIMES: dict[str, str | None] = {PYTHON: None, NODEJS: "nodejs22"}


def language_of(runtime: str | None) -> str:
    """``python`` or ``nodejs``; no runtime is the builder's Python."""
    if runtime is None:
        return PYTHON
    return RUNTIMES.get(runtime) or (NODEJS if runtime.startswith(NODEJS) else PYTHON)


def version_env(runtime: str) -> dict[str, str]:
    """The variables that make Google's buildpacks build ``runtime``'s language *and*
    version: ``GOOGLE_RUNTIME`` alone picks only the language, the builder then takes its
    newest version of it.

    ``python311`` -> ``GOOGLE_PYTHON_VERSION=3.11.x``
    (https://cloud.google.com/docs/buildpacks/python); ``nodejs22`` ->
    ``GOOGLE_NODEJS_VERSION=22.x.x``, which wins over package.json's ``engines.node``
    (https://cloud.google.com/docs/buildpacks/nodejs).
    """
    env = {"GOOGLE_RUNTIME": runtime}
    if language_of(runtime) == NODEJS:
        env["GOOGLE_NODEJS_VERSION"] = f"{runtime.removeprefix(NODEJS)}.x.x"
    else:
        env["GOOGLE_PYTHON_VERSION"] = f"3.{runtime.removeprefix('python3')}.x"
    return env


def listed(language: str | None = None) -> str:
    """The runtimes as a person reads them: ``python310, python311, ... or nodejs24``."""
    names = [r for r, lang in RUNTIMES.items() if language in (None, lang)]
    return ", ".join(names[:-1]) + f" or {names[-1]}"

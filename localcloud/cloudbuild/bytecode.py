"""Byte code compiled at build time, so an instance imports without compiling.

A Cloud Run instance's layers are read-only and its image sets ``PYTHONDONTWRITEBYTECODE``,
so without byte code in the layers every cold start compiles the function, its
dependencies and functions-framework (Flask, Werkzeug, Jinja...) again. The buildpack
therefore compiles each layer's tree before tarring it, in a way that keeps layers
reproducible (the same tree gives the same digest, on any machine and data directory):

- ``unchecked-hash`` invalidation (PEP 552): the ``.pyc`` header holds a hash of the
  source instead of its modification time, and the interpreter trusts it without reading
  the source, which cannot change inside an image anyway;
- the image's own interpreter (the Python ``select_python`` chose, which the instance
  runs): a ``.pyc`` is only read by the interpreter version whose magic number it carries;
- one fresh process, files in sorted order (``compileall`` sorts each directory), the hash
  seed fixed: ``marshal`` marks shared objects by their reference counts, so what else a
  process compiled can change the bytes (hence no parallel workers, and not localcloud's
  own process), and before Python 3.11 it writes a set constant in hash order;
- the paths recorded in the code objects are the in-image ones (``-d``), not the build's
  temporary directory;
- whatever ``__pycache__`` the tree came with (an upload's stale byte code) is removed
  first: only byte code compiled here goes into a layer.

A file that does not compile (a dependency's Python 2 example, say) is left to the
interpreter, as pip leaves it: the build log lists it, and the source itself was already
checked by ``buildpack.detect``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from localcloud.cloudbuild.layers import PYCACHE

Log = Callable[[str], None]
HASH_SEED = "0"


def remove_pycache(root: Path) -> None:
    """Deletes every ``__pycache__`` under ``root``, never following a symlink."""
    for dirpath, dirnames, _ in os.walk(root):
        for name in list(dirnames):
            if name == PYCACHE:
                path = Path(dirpath) / name
                if path.is_symlink():
                    path.unlink()
                else:
                    shutil.rmtree(path)
                dirnames.remove(name)


# compileall's own function rather than its command line, whose argparse and worker-pool
# imports double what a small source's compile costs (about 50 ms against 110).
COMPILE = (
    "import sys, compileall, py_compile as p; sys.exit(not compileall.compile_dir("
    "sys.argv[1], ddir=sys.argv[2], quiet=1, workers=1, "
    "invalidation_mode=p.PycInvalidationMode.UNCHECKED_HASH))"
)


def compile_command(python: str, root: Path, in_image: str) -> list[str]:
    """Compile ``root``, whose files the image holds under ``in_image``. ``-S``: the
    interpreter's site-packages have nothing compileall needs, and cost start time."""
    return [python, "-S", "-c", COMPILE, str(root), in_image]


def compile_env() -> dict[str, str]:
    """This process's environment without the variables that would change what compileall
    writes or where (PYTHONPYCACHEPREFIX, PYTHONOPTIMIZE...), with the hash seed fixed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONHASHSEED"] = HASH_SEED
    return env


async def compile_tree(python: str, root: Path, in_image: str, log: Log) -> None:
    """Compile every ``.py`` under ``root`` into its ``__pycache__`` with ``python``."""
    await asyncio.to_thread(remove_pycache, root)
    process = await asyncio.create_subprocess_exec(
        *compile_command(python, root, in_image),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        env=compile_env(),
    )
    try:
        out, _ = await process.communicate()
    except asyncio.CancelledError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        # compileall exits 1 when any file fails; the rest are compiled all the same.
        text = out.decode(errors="replace").replace(str(root), in_image).rstrip()
        tail = "\n".join(text.splitlines()[-12:])
        log(f"byte code: some files under {in_image} did not compile (left to the runtime):")
        log(tail)

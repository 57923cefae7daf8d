"""Starting evalboard's own Python processes with nothing of the folder they run in on their import path.

`python -m pkg` puts the current folder first on `sys.path`, so a `torch.py`, `typer.py` or
`outputs/` package dropped into a workspace (a shared folder teammates' jobs write to) would be
imported by a worker started there. Every Python child evalboard starts (the Queue page's worker,
`worker --gpus`' workers, the dashboard's server) is started through `python_module_command`:
Python's safe-path mode (`-P`, 3.11+) or, on 3.10, a bootstrap that drops the folder from
`sys.path` before anything else is imported. `child_env` also sets `PYTHONSAFEPATH=1`, so the
children's own Python children are safe too, drops empty `PYTHONPATH` entries (an empty entry
means the current folder) and makes relative ones absolute, so a child started in another folder
imports from the folders its parent meant.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

__all__ = ["python_module_command", "child_env"]

_BOOTSTRAP = (
    "import runpy, sys; del sys.path[0]; sys.argv[0] = {module!r}; runpy.run_module({module!r}, run_name='__main__')"
)


def python_module_command(module: str, *args: str) -> list[str]:
    """The command line that runs ``python -m module args...`` without the cwd on ``sys.path``."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", module, *args]
    return [sys.executable, "-c", _BOOTSTRAP.format(module=module), *args]


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) for a Python child: safe-path mode, PYTHONPATH entries
    absolute, none empty."""
    out = dict(os.environ if env is None else env)
    out["PYTHONSAFEPATH"] = "1"
    if "PYTHONPATH" in out:
        kept = [os.path.abspath(p) for p in out["PYTHONPATH"].split(os.pathsep) if p.strip()]
        if kept:
            out["PYTHONPATH"] = os.pathsep.join(kept)
        else:
            del out["PYTHONPATH"]
    return out

"""Plain helpers the registry and CLI tests share: copying a built workspace, running the real
CLI in a subprocess, and writing small Track A/B checkpoints without any base model.

The pytest fixtures `session_ws` and `workspace` that use them live in `tests/conftest.py`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evalboard.fixtures import Workspace, make_token_space, write_trainable_rows
from registry.token_space import TokenSpace

__all__ = [
    "HIDDEN",
    "TEXT_VOCAB",
    "BASE_MODEL",
    "copy_workspace",
    "cli_env",
    "run_cli",
    "small_token_space",
    "write_rows",
]

TEXT_VOCAB = 256
HIDDEN = 16
BASE_MODEL = "demo/Qwen3-tiny-Base"
REPO_ROOT = Path(__file__).resolve().parents[2]


def small_token_space(**kw: Any) -> TokenSpace:
    """256 text rows, audio 256–319, image 320–383 (the fixtures' default layout)."""
    return make_token_space(TEXT_VOCAB, **kw)


def write_rows(ckpt_dir: Path, token_space: TokenSpace | None = None, **kw: Any) -> Path:
    """A valid Track B checkpoint with narrow rows (hidden 16): no base model needed."""
    kw.setdefault("base_model", BASE_MODEL)
    kw.setdefault("hidden_size", HIDDEN)
    return write_trainable_rows(ckpt_dir, token_space or small_token_space(), **kw)


def _rebase(value: Any, old: Path, new: Path) -> Any:
    if isinstance(value, Path):
        return new / value.relative_to(old) if value.is_relative_to(old) else value
    if isinstance(value, list):
        return [_rebase(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _rebase(v, old, new) for k, v in value.items()}
    return value


def copy_workspace(ws: Workspace, dest: Path) -> Workspace:
    """A private copy of a workspace built once per session, for a test that edits files.

    The copy's paths are resolved (the scanner registers real paths), and its base model folder
    is a symlink to the original: only `config.json` is ever read from it here.
    """
    dest = Path(os.path.realpath(dest))
    shutil.copytree(ws.root, dest, symlinks=True, ignore=shutil.ignore_patterns("models"))
    (dest / "models").mkdir()
    (dest / "models" / ws.base_dir.name).symlink_to(ws.base_dir, target_is_directory=True)
    fields = {f.name: _rebase(getattr(ws, f.name), ws.root, dest) for f in dataclasses.fields(ws)}
    fields["base_dir"] = ws.base_dir
    return Workspace(**fields)


def cli_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a CLI subprocess: its own EVALBOARD_HOME, no inherited DB/MLflow URLs."""
    env = {k: v for k, v in os.environ.items() if k not in ("EVALBOARD_DB", "EVALBOARD_MODELS", "MLFLOW_TRACKING_URI")}
    env["EVALBOARD_HOME"] = str(home)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def run_cli(
    args: Sequence[str],
    *,
    home: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    prefix: Sequence[str] = (),
) -> subprocess.CompletedProcess:
    """`python -m evalboard.cli ARGS` as a real process (what a user's shell runs), by default
    in the folder that holds `home` (which the CLI creates on first use); `prefix` goes before
    the interpreter (e.g. `unprivileged()`)."""
    cwd = cwd or home.parent
    cwd.mkdir(parents=True, exist_ok=True)
    return evalboard_cli(args, env=cli_env(home, env), cwd=cwd, timeout=timeout, prefix=prefix)


def evalboard_cli(
    args: Sequence[Any],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    timeout: float = 300,
    prefix: Sequence[str] = (),
) -> subprocess.CompletedProcess:
    """The one way tests run the CLI: `python -m evalboard.cli ARGS` as a real process with exactly
    `env` (default: this process's), in `cwd`, under a timeout, its output captured as text."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "evalboard.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=None if cwd is None else str(cwd),
        env=None if env is None else dict(env),
        timeout=timeout,
    )


def unprivileged() -> list[str] | None:
    """A command prefix under which permission bits hold for this user: none needed when we are
    not root; as root, `unshare -U` (a user namespace without root's capabilities, so the owner's
    bits apply); None when neither is available."""
    if os.geteuid() != 0:
        return []
    try:
        probe = subprocess.run(["unshare", "-U", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return ["unshare", "-U"] if probe.returncode == 0 else None

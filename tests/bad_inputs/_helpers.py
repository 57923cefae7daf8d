"""What every bad-input test asserts, in one place.

A refusal is: exit status 2, exactly one line on stderr (`error: ...`) that names the offending
file and says what is wrong, no traceback, nothing on stdout, and the registry and the MLflow
store exactly as they were. Every command runs as a real process under a timeout, so a command
that blocks (a named pipe read for ever) fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests._infra.workspace import run_cli

TIMEOUT = 120


def models_env(ws) -> dict[str, str]:
    """EVALBOARD_MODELS mapping the workspace's base-model id to its folder."""
    return {"EVALBOARD_MODELS": f"{ws.base_model}={ws.base_dir}"}


def cli(
    args: Sequence[Any],
    *,
    home: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT,
    prefix: Sequence[str] = (),
) -> subprocess.CompletedProcess:
    return run_cli([str(a) for a in args], home=home, env=env, timeout=timeout, prefix=prefix)


def refusal(proc: subprocess.CompletedProcess, names: Path | str, *says: str) -> str:
    """Assert the one-line refusal and return its text (after `error: `)."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    assert str(names) in lines[0], (str(names), lines[0])
    for fragment in says:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0].removeprefix("error: ")


def registry_snapshot(home: Path) -> dict:
    """Every row of the registry under `home` ({} when there is none yet)."""
    from registry.store import Registry

    db = home / "registry.db"
    if not db.exists():
        return {}
    with Registry(f"sqlite:///{db}") as reg:
        return reg.snapshot()


def mlflow_counts(home: Path) -> dict[str, int]:
    """Rows per table of the MLflow store under `home` ({} when there is none yet)."""
    db = home / "mlflow.db"
    if not db.exists():
        return {}
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}


def state(home: Path) -> tuple[dict, dict]:
    return registry_snapshot(home), mlflow_counts(home)


def scan(home: Path, *paths: Path, env: Mapping[str, str] | None = None, prefix: Sequence[str] = ()) -> dict:
    """`evalboard scan --json`: must exit 0 without a traceback, whatever is in the tree."""
    proc = cli(["scan", *paths, "--json"], home=home, env=env, prefix=prefix)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def invalid_reason(summary: dict, path: Path) -> str:
    """The reason a scan recorded for `path` (fails when it recorded none)."""
    reasons = {item["path"]: item["reason"] for item in summary["invalid_items"]}
    assert str(path) in reasons, (str(path), reasons)
    return reasons[str(path)]


def edit_json(path: Path, **changes: Any) -> Path:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))
    return path


def scanned_workspace(ws, home: Path, evalset: str) -> dict[str, str]:
    """`ws`'s outputs scanned into `home` and its eval set `evalset` added, as a user would (CLI);
    returns the environment naming its base model."""
    env = models_env(ws)
    scan(home, ws.root / "outputs", env=env)
    proc = cli(["evalset", "add", ws.evalsets[evalset]], home=home, env=env)
    assert proc.returncode == 0, proc.stderr
    return env

"""Worker subprocesses for the fault and CLI tests: `python -m evalboard.cli worker ...`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests._infra.workspace import evalboard_cli

REPO_ROOT = Path(__file__).resolve().parents[2]
FAST = [
    "--lease-seconds",
    "3",
    "--heartbeat-seconds",
    "1",
    "--poll-seconds",
    "0.2",
    "--reconcile-seconds",
    "2",
    "--outbox-seconds",
    "1",
]


def child_env(env: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    out = {
        k: v
        for k, v in os.environ.items()
        if k not in ("EVALBOARD_DB", "EVALBOARD_MODELS", "MLFLOW_TRACKING_URI", "EVALBOARD_HOME")
    }
    out.update(env)
    out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), out.get("PYTHONPATH")]))
    out.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    out.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    out.update(extra or {})
    return out


def start_worker(
    env: Mapping[str, str], log: Path, args: Sequence[str] = FAST, extra_env: Mapping[str, str] | None = None
) -> subprocess.Popen:
    handle = open(log, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "evalboard.cli", "worker", *args],
        cwd=str(log.parent),
        env=child_env(env, extra_env),
        stdout=handle,
        stderr=subprocess.STDOUT,
    )


def run_cli(
    args: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    timeout: float = 120,
    extra_env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    return evalboard_cli(args, env=child_env(env, extra_env), cwd=cwd, timeout=timeout)

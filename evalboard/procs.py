"""Child servers that never outlive their parent.

`evalboard dashboard` runs Streamlit as a child process. A user stops it with Ctrl-C, a process
manager with SIGTERM, a test harness perhaps with SIGKILL: in every case the Streamlit server
(and anything it started) must go too, or it keeps the port and serves a stale registry.

- the child gets its own process group, so the whole group can be signalled at once;
- SIGTERM / SIGINT / SIGHUP received by the parent are forwarded to that group;
- on Linux the child is also asked to receive SIGTERM when the parent dies (PR_SET_PDEATHSIG),
  which covers a parent killed with SIGKILL;
- when the parent leaves for any reason, the group gets SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence

__all__ = ["run_child"]

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run_child(cmd: Sequence[str], env: Mapping[str, str] | None = None, *, grace_seconds: float = 10.0) -> int:
    """Run `cmd` in its own process group until it exits; returns its exit status (0 when it
    ended because we forwarded a stop signal to it)."""
    proc = subprocess.Popen(
        list(cmd), env=dict(env) if env is not None else None, start_new_session=True, preexec_fn=_die_with_parent
    )  # noqa: PLW1509 - only prctl, no locks taken
    forwarded: list[int] = []

    def forward(signum, _frame) -> None:
        forwarded.append(signum)
        _signal_group(proc, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        code = proc.wait()  # a forwarded signal interrupts the wait only to run `forward`
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop_group(proc, grace_seconds)
    return 0 if forwarded else code


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_group(proc: subprocess.Popen, grace_seconds: float) -> None:
    """SIGTERM the child's whole group (its own children too), SIGKILL what is left after the
    grace period."""
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait()

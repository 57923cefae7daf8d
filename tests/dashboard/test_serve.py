"""`evalboard dashboard` takes its Streamlit server (and anything that started) down with it:
SIGTERM or Ctrl-C to the command leaves nothing listening on the port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.dashboard.test_browser import _free_port, _wait_healthy

pytestmark = pytest.mark.slow


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def assert_port_freed(port: int, timeout: float = 20) -> None:
    """Poll until nothing accepts connections on `port` (the server may take a moment to close)."""
    deadline = time.monotonic() + timeout
    while listening(port):
        assert time.monotonic() < deadline, f"something still listens on port {port}"
        time.sleep(0.1)  # polling interval, not synchronisation


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_stops_the_server_too(empty, tmp_path, signum) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "evalboard.cli", "dashboard", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/_stcore/health", proc)
        assert listening(port)
        proc.send_signal(signum)
        assert proc.wait(timeout=30) == 0
        assert_port_freed(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

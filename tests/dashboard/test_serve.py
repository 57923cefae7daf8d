"""`evalboard dashboard` takes its Streamlit server (and anything that started) down with it:
SIGTERM or Ctrl-C to the command leaves nothing listening on the port. `--port 0` serves on a
free port that the printed URL names; a taken port is refused in one line before Streamlit starts."""

from __future__ import annotations

import os
import re
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


def test_port_0_serves_on_the_port_the_printed_url_names(empty, tmp_path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "evalboard.cli", "dashboard", "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )
    try:
        first = proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)", first)
        assert found and found.group(1) != "0", first
        port = int(found.group(1))
        _wait_healthy(f"http://127.0.0.1:{port}/_stcore/health", proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert_port_freed(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_taken_port_is_one_line_before_anything_starts(empty, tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "evalboard.cli", "dashboard", "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=os.environ.copy(),
            timeout=60,
        )
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.splitlines()
    assert f"port {port}" in line and "in use" in line and "--port" in line

"""The real thing: `evalboard dashboard` served on a loopback port, every page opened in headless
Chromium (Debian's package, installed here when missing), its title shown, no Streamlit
exception box, a screenshot of each under test-output/screenshots/, and a hostile run name that
never executes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests._infra.debian import CHROMIUM_ARGS, chromium
from tests.dashboard._helpers import PAGES, ROOT, TITLES

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENSHOTS = ROOT / "test-output" / "screenshots"
XSS_NAME = '<img src=x onerror="window.__xss=1">'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"evalboard dashboard exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)  # polling interval, not synchronisation: we return on the first 200
    raise AssertionError(f"{url} not healthy after {timeout:.0f} s")


@pytest.fixture
def server(populated, tmp_path):
    from sqlalchemy import update

    from registry import models as M
    from registry.store import Registry

    with Registry(populated) as reg, reg.engine.begin() as conn:
        conn.execute(update(M.Run).where(M.Run.name == "stage3_token_lm_wide_image").values(name=XSS_NAME))
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
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(f"{base}/_stcore/health", proc)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        from tests.dashboard.test_serve import assert_port_freed

        assert_port_freed(port)  # `make test` must leave no server behind


def test_every_page_in_chromium(server, tmp_path):
    executable = chromium()
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = ctx.new_page()
            for name in PAGES:
                page.goto(f"{server}/{'' if name == 'runs' else name}", wait_until="domcontentloaded")
                page.locator("h1", has_text=TITLES[name]).first.wait_for(state="visible", timeout=60_000)
                # the script run is over when the app says so; then charts draw client-side
                page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(
                    state="attached", timeout=60_000
                )
                page.wait_for_load_state("networkidle")  # lazily loaded widget code
                page.wait_for_function(
                    "document.querySelectorAll('[data-testid^=\"stSkeleton\"]').length === 0", timeout=30_000
                )
                charts = page.locator('[data-testid="stPlotlyChart"]')
                for i in range(charts.count()):
                    charts.nth(i).locator(".main-svg").first.wait_for(state="attached", timeout=30_000)
                page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
                errors = page.locator('[data-testid="stException"]')
                assert errors.count() == 0, f"{name}: {errors.first.inner_text()}"
                assert page.evaluate("window.__xss") is None, f"{name}: a run name was executed as HTML"
        finally:
            ctx.close()
    assert sorted(p.stem for p in SCREENSHOTS.glob("*.png")) >= sorted(PAGES)

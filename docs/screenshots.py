"""Screenshots of every dashboard page of a workspace, from a real headless Chromium, as the
browser test takes them: `python docs/screenshots.py WORKSPACE OUT_DIR` (after `make demo`,
WORKSPACE is demo-workspace/). The dashboard is started in WORKSPACE and stopped afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests._infra.debian import CHROMIUM_ARGS, chromium  # noqa: E402
from tests.dashboard._helpers import PAGES, TITLES  # noqa: E402
from tests.dashboard.test_browser import _free_port, _wait_healthy  # noqa: E402

WIDTH = 1600
MAIN_HEIGHT = "document.querySelector('[data-testid=\"stMain\"]').scrollHeight"
NO_SKELETONS = "document.querySelectorAll('[data-testid^=\"stSkeleton\"]').length === 0"


def main(workspace: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALBOARD_") and k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "evalboard.cli", "dashboard", "--port", str(port)],
        cwd=workspace,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(f"{base}/_stcore/health", proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
            for name in PAGES:
                page.goto(f"{base}/{'' if name == 'runs' else name}", wait_until="domcontentloaded")
                page.locator("h1", has_text=TITLES[name]).first.wait_for(state="visible", timeout=60_000)
                page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(
                    state="attached", timeout=60_000
                )
                page.wait_for_load_state("networkidle")
                page.wait_for_function(NO_SKELETONS, timeout=30_000)
                charts = page.locator('[data-testid="stPlotlyChart"]')
                for i in range(charts.count()):
                    charts.nth(i).locator(".main-svg").first.wait_for(state="attached", timeout=30_000)
                # Streamlit scrolls inside its main container: grow the viewport to show all of it.
                height = page.evaluate(MAIN_HEIGHT)
                page.set_viewport_size({"width": WIDTH, "height": min(int(height) + 40, 6000)})
                page.wait_for_function(NO_SKELETONS, timeout=30_000)
                for i in range(charts.count()):
                    charts.nth(i).locator(".main-svg").first.wait_for(state="attached", timeout=30_000)
                page.screenshot(path=str(out / f"{name}.png"), full_page=True)
                page.set_viewport_size({"width": WIDTH, "height": 1000})
                print(out / f"{name}.png")
            browser.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve())

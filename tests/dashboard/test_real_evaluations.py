"""Every page on a registry + MLflow store filled by real work: the quick demo trains, scans and
evaluates (real evaluator, real MLflow), then each page renders and shows those numbers."""

from __future__ import annotations

import json

import pytest

from tests._infra.workspace import evalboard_cli
from tests.dashboard._helpers import PAGES, TITLES, assert_ok, run_page

pytestmark = pytest.mark.slow


@pytest.fixture
def demo_home(quick_demo):
    return quick_demo[0] / ".evalboard"


@pytest.fixture
def demo_env(demo_home, monkeypatch):
    monkeypatch.setenv("EVALBOARD_HOME", str(demo_home))
    monkeypatch.setenv("EVALBOARD_DB", f"sqlite:///{demo_home / 'registry.db'}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{demo_home / 'mlflow.db'}")
    return demo_home


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_real_evaluations(demo_env, page):
    assert_ok(run_page(page), TITLES[page])


def test_compare_shows_the_evaluated_runs(demo_env):
    at = run_page("compare")
    assert_ok(at, "Compare runs")
    charts = [c for c in at.get("plotly_chart") if (c.key or "").startswith("compare_chart_")]
    assert len(charts) == 3  # all, a2t, i2t
    names = {t.get("name") for c in charts for t in json.loads(c.proto.spec)["data"]}
    runs = {"stage3_lr0.01", "stage3_lr0.03", "stage3_lr0.05"}
    assert runs <= names
    assert "stage3_wide_image" not in names  # refused: never evaluated
    # each evaluated run has its 95% interval band, read from the per-example losses in MLflow
    for chart in charts:
        bands = [t for t in json.loads(chart.proto.spec)["data"] if t.get("fill") == "toself"]
        assert {t["name"] for t in bands} >= {f"{r} 95% interval" for r in runs}, chart.key
        for band in bands:
            n = len(band["y"]) // 2
            highs, lows = band["y"][:n], band["y"][n:][::-1]
            assert all(lo <= hi for lo, hi in zip(lows, highs)) and any(lo < hi for lo, hi in zip(lows, highs))


def test_the_demo_exports_a_pdf_holding_its_charts_and_intervals(quick_demo, tmp_path):
    """`evalboard export --format pdf` inside the demo's workspace (no environment variable): the
    PDF opens (poppler reads it), holds a drawn chart per task with each run's interval band, and
    the report's tables with the intervals read from the per-example losses in MLflow."""
    import os
    import re
    import subprocess
    from pathlib import Path

    from tests._infra.debian import chromium, poppler

    chromium()
    tools = poppler()
    workdir = quick_demo[0]
    runs = ["stage3_lr0.01", "stage3_lr0.03", "stage3_lr0.05"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALBOARD_") and k != "MLFLOW_TRACKING_URI"}

    def export(fmt: str, out: Path) -> None:
        cmd = ["export", "--runs", ",".join(runs), "--format", fmt, "--out", str(out)]
        done = evalboard_cli(cmd, env=env, cwd=workdir)
        assert done.returncode == 0, done.stderr[-2000:]

    out = tmp_path / "demo.pdf"
    export("pdf", out)
    assert out.read_bytes().startswith(b"%PDF-")
    info = subprocess.run([tools["pdfinfo"], str(out)], capture_output=True, text=True, timeout=60, check=True)
    assert int(re.search(r"^Pages:\s+(\d+)$", info.stdout, re.M).group(1)) >= 1
    text = subprocess.run(
        [tools["pdftotext"], "-layout", str(out), "-"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    charts = text[text.index("Loss vs step") : text.index("Runs", text.index("Loss vs step") + 12)]
    for task in ("all", "a2t", "i2t"):
        assert f"loss ({task})" in charts
    assert charts.count("shaded: 95% interval") == 3  # each chart's legend says what its bands are
    for run in runs:
        assert charts.count(run) >= 3  # a legend entry per chart, drawn as SVG text
    # the tables' losses with their interval bounds (as the Markdown report of the same runs has them)
    export("md", tmp_path / "r.md")
    md = (tmp_path / "r.md").read_text()
    triples = re.findall(r"\|\s*(\d+\.\d{4})\s*\|\s*(\d+\.\d{4})\s*\|\s*(\d+\.\d{4})\s*\|", md)
    assert triples, md[:2000]
    flat = " ".join(text.split())
    assert any(all(v in flat for v in row) for row in triples)

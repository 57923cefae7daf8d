"""Every page on a registry + MLflow store filled by real work: the quick demo trains, scans and
evaluates (real evaluator, real MLflow), then each page renders and shows those numbers."""

from __future__ import annotations

import json

import pytest

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

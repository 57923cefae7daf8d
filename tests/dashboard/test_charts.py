"""The chart functions on plain DataFrames, without Streamlit."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dashboard import analysis, charts


def _results(n_runs: int = 3, n_steps: int = 4) -> pd.DataFrame:
    rows = []
    rid = 0
    for r in range(n_runs):
        for s in range(n_steps):
            rid += 1
            for task, base in (("all", 3.0), ("a2t", 2.5)):
                rows.append(
                    {
                        "result_id": rid,
                        "run_id": r,
                        "run": f"run{r}",
                        "checkpoint_id": rid,
                        "step": 100 * (s + 1),
                        "tokens_seen": 1000.0 * (s + 1),
                        "evalset": "es",
                        "task": task,
                        "loss": base - 0.1 * s + 0.01 * r + (0.5 if (r, s) == (2, 3) else 0),
                    }
                )
    return pd.DataFrame(rows)


def test_loss_curves_one_trace_per_run_plus_best():
    fig = charts.loss_curves(_results(), "all")
    names = [t.name for t in fig.data]
    assert names == ["run0", "run1", "run2", "best checkpoint"]
    assert all(t.type == "scattergl" for t in fig.data)
    assert list(fig.data[0].x) == [100, 200, 300, 400]
    best = fig.data[-1]
    # run2 regressed at its last step, so its best is step 300
    assert list(best.x) == [400, 400, 300]
    assert fig.layout.xaxis.title.text == "step"


def test_loss_curves_tokens_axis_and_empty():
    fig = charts.loss_curves(_results(), "a2t", x="tokens_seen")
    assert max(fig.data[0].x) == 4000
    assert fig.layout.xaxis.title.text == "tokens seen"
    assert len(charts.loss_curves(_results().iloc[0:0], "all").data) == 0


def test_loss_curves_escapes_names():
    df = _results(1).assign(run="<script>alert(1)</script>", evalset="<b>x</b>")
    fig = charts.loss_curves(df, "all")
    text = fig.to_json()
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "<b>x</b>" not in text


def test_hundreds_of_runs_hide_legend():
    df = _results(n_runs=120, n_steps=3)
    fig = charts.loss_curves(df, "all")
    assert len(fig.data) == 121
    assert not fig.data[0].showlegend


def test_analysis_best_regressions_deltas():
    res = _results()
    best = analysis.best_checkpoints(res, "all")
    assert list(best["run"]) == ["run0", "run1", "run2"]
    assert best.set_index("run").loc["run2", "best step"] == 300
    assert "loss a2t" in best.columns and "low all" not in best.columns  # no intervals given
    candidates = analysis.regression_candidates(res)
    assert set(zip(candidates["run"], candidates["step"])) == {("run2", 400)}
    assert candidates["previous best step"].tolist() == [300, 300]
    assert analysis.regressions(candidates).empty  # a worse point value without an interval is not flagged
    base_id = int(res[(res["run"] == "run0") & (res["step"] == 100)]["result_id"].iloc[0])
    deltas = analysis.deltas_vs_baseline(res, base_id).set_index(["run", "task"])
    assert np.isclose(deltas.loc[("run0", "all"), "Δ"], -0.3)
    assert deltas["low"].isna().all()


def test_differences_only_and_examples():
    params = pd.DataFrame({"run": ["a", "b"], "same": [1, 1], "lr": [1e-4, 2e-4]})
    assert list(analysis.differences_only(params).columns) == ["run", "lr"]
    a = pd.DataFrame({"task": ["t", "t"], "example_id": ["e1", "e2"], "loss": [1.0, 2.0]})
    b = pd.DataFrame({"task": ["t", "t"], "example_id": ["e1", "e2"], "loss": [0.5, 2.5]})
    joined, summary = analysis.compare_examples(a, b)
    assert list(joined["example_id"]) == ["e1", "e2"]
    assert summary.iloc[0][["better", "worse"]].tolist() == [1, 1]
    assert len(charts.example_deltas(joined, "A", "B").data) == 1


def test_row_stats_charts():
    from tests.dashboard._helpers import row_stats

    stats = {100: row_stats(100, 0, None), 200: row_stats(200, 1, 100)}
    stats[200]["ranges"]["image"]["embed"]["nonfinite_rows"] = 2
    trend, drift = analysis.row_stats_tables(stats)
    assert set(trend["range"]) == {"audio", "image", "base_text"}
    flagged = analysis.flagged_rows(trend)
    # the base's all-zero padding row is context: only the checkpoint's own rows are flagged
    assert flagged[["step", "range", "matrix"]].values.tolist() == [[200, "image", "embed"]]
    assert analysis.base_zero_rows(trend) == 1
    assert len(charts.row_norm_trend(trend, "embed").data) == 6  # band + line per range
    hist = stats[100]["histograms"]
    names = [t.name for t in charts.norm_histograms(hist["edges"], hist["counts"], "lm_head").data]
    assert names == ["audio", "base text rows", "image"]
    assert len(charts.drift_trend(drift).data) == 4


def test_row_health_is_about_the_checkpoints_rows():
    from registry.row_health import row_health
    from tests.dashboard._helpers import row_stats

    doc = row_stats(100, 0, None)
    health = row_health(doc)
    assert health.ok and health.base_zero_rows == 1 and "health: ok" in health.line()
    assert analysis.flagged_rows(analysis.row_stats_tables({100: doc})[0]).empty  # the pages agree
    doc["ranges"]["audio"]["lm_head"]["zero_rows"] = 3
    health = row_health(doc)
    assert not health.ok and health.dead_rows == 3 and "audio/lm_head" in health.line()
    flagged = analysis.flagged_rows(analysis.row_stats_tables({100: doc})[0])
    assert flagged[["range", "matrix"]].values.tolist() == [["audio", "lm_head"]]


def test_run_parameters_show_nested_trainer_settings_and_only_differences():
    runs = pd.DataFrame(
        {"run_id": [1, 2], "run": ["a", "b"], "track": ["B", "B"], "base_model": ["m", "m"], "token_space": ["t", "t"]}
    )
    cks = pd.DataFrame(
        {
            "run_id": [1, 2],
            "checkpoint_id": [10, 20],
            "step": [5, 5],
            "status": ["valid", "valid"],
            "row_start": [8, 8],
            "row_end": [16, 16],
        }
    )
    meta = {
        10: {"dtype": "float32", "trainer": {"lr": 0.01, "steps": 5, "optimizer": "Adam"}},
        20: {"dtype": "float32", "trainer": {"lr": 0.03, "steps": 5, "optimizer": "Adam"}},
    }
    params = analysis.run_parameters(runs, cks, meta)
    assert params.loc[0, "meta.trainer.lr"] == 0.01
    assert list(analysis.differences_only(params).columns) == ["run", "meta.trainer.lr"]

"""95% intervals where users see them: the loss chart's bands, the regression rule, deltas against
a baseline, the Compare and Checkpoint pages and the reports, all computed through
`registry.comparison` (per-example files written with `registry.per_example.write`, or real
evaluations whose per-example losses come back from MLflow after the local files are gone)."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from dashboard import analysis, charts, data, report
from registry import comparison, per_example
from registry.entities import EvalResultEntity
from tests.dashboard._helpers import assert_ok, registry_from_env, run_page

HASH = "e" * 64


def _result(rid: int, path=None, *, source: str = "evaluator", step: int | None = None) -> EvalResultEntity:
    return EvalResultEntity(
        id=rid,
        checkpoint_id=rid,
        run_id=1,
        evalset_id=1,
        evalset_hash=HASH,
        checkpoint_hash=f"{rid:064x}",
        step=step if step is not None else 100 * rid,
        source=source,
        loss_all=None,
        metrics={},
        mlflow_run_id=None,
        path=None,
        extra={"per_example_path": str(path)} if path else {},
        created_at=datetime.now(timezone.utc),
    )


def _side(tmp_path, rid: int, nll: np.ndarray, tokens: int = 10) -> comparison.ResultExamples:
    """A result whose per-example file holds `nll` (one task, "t"), read back through the one path."""
    path = tmp_path / f"r{rid}.parquet"
    per_example.write(
        path,
        example_ids=[f"ex{k:04d}" for k in range(len(nll))],
        tasks=["t"] * len(nll),
        nll_sums=(nll * tokens).tolist(),
        tokens=[tokens] * len(nll),
        evalset_hash=HASH,
        evalset_name="es",
        subset="all",
        checkpoint_hash=f"{rid:064x}",
    )
    side = data.result_examples(_result(rid, path), None)
    assert side.missing is None, side.missing
    return side


def _long(sides: dict[int, comparison.ResultExamples], run: str = "run") -> pd.DataFrame:
    """The results table the pages read, with the point losses the per-example files hold."""
    rows = []
    for rid, side in sides.items():
        ex = side.examples
        for task in ("all", "t"):
            rows.append(
                {
                    "result_id": rid,
                    "run_id": 1,
                    "run": run,
                    "checkpoint_id": rid,
                    "step": side.result.step,
                    "evalset": "es",
                    "task": task,
                    "loss": ex.loss(),  # one task: "all" and "t" are the same examples
                }
            )
    return pd.DataFrame(rows)


def _lookup(sides, iters: int = 1000):
    return lambda a, b: data.paired_delta(sides[a], sides[b], iters=iters, seed=0)


# -- pure functions ------------------------------------------------------------------------------


def test_a_regression_is_flagged_only_when_its_interval_excludes_zero(tmp_path):
    base = 2.0 + 0.5 * np.sin(np.arange(200))
    wobble = np.where(np.arange(200) % 2 == 0, 0.5, -0.5)  # per-example noise that cancels on average
    sides = {
        1: _side(tmp_path, 1, base),
        2: _side(tmp_path, 2, base + 0.01 + wobble),  # worse by 0.01: noise
        3: _side(tmp_path, 3, base + 0.2 + wobble / 10),  # worse by 0.2 on every draw
    }
    results = _long(sides)
    candidates = analysis.regression_candidates(results, _lookup(sides)).set_index(["step", "task"])
    noisy, real = candidates.loc[(200, "all")], candidates.loc[(300, "all")]
    assert noisy["worse by"] == pytest.approx(0.01) and noisy["previous best step"] == 100
    assert noisy["low"] < 0 < noisy["high"] and noisy["significant"] == "no"
    assert real["low"] > 0 and real["significant"] == "yes" and real["p"] == pytest.approx(1 / 1001)
    flagged = analysis.regressions(candidates.reset_index())
    assert sorted(zip(flagged["step"], flagged["task"])) == [(300, "all"), (300, "t")]
    # the same numbers without intervals: nothing is flagged
    assert analysis.regressions(analysis.regression_candidates(results)).empty
    marked = analysis.mark_regressions(results, candidates.reset_index())
    assert marked.loc[marked["regression"], "step"].tolist() == [300, 300]


def test_deltas_against_a_baseline_carry_the_paired_interval(tmp_path):
    base = 2.0 + 0.5 * np.cos(np.arange(120))
    sides = {1: _side(tmp_path, 1, base), 2: _side(tmp_path, 2, base - 0.1)}
    results = pd.concat([_long({1: sides[1]}, "a"), _long({2: sides[2]}, "b")], ignore_index=True)
    deltas = analysis.deltas_vs_baseline(results, 1, _lookup(sides)).set_index(["run", "task"])
    expected = comparison.compare_results(sides[1], sides[2]).paired.tasks["all"]
    row = deltas.loc[("b", "all")]
    assert row["Δ"] == pytest.approx(-0.1) and row["Δ"] == pytest.approx(expected.delta)
    assert (row["low"], row["high"], row["p"]) == (expected.low, expected.high, expected.p_value)
    assert row["significant"] == "yes"
    same = deltas.loc[("a", "all")]  # the baseline against itself: zero, and an interval of [0, 0]
    assert (same["Δ"], same["low"], same["high"], same["significant"]) == (0.0, 0.0, 0.0, "no")
    vs_best = analysis.deltas_vs_best(results, _lookup(sides))
    assert set(vs_best["baseline"]) == {"b @ step 200"}  # the overall best is b's checkpoint


def test_results_without_per_example_losses_say_why(tmp_path):
    imported = data.result_examples(_result(5, source="import"), None)
    assert imported.missing == "no interval (imported)" and data.examples_frame(imported) is None
    gone = data.result_examples(_result(6, tmp_path / "deleted.parquet"), None)
    assert gone.missing == comparison.NO_INTERVAL_MISSING
    kept = _side(tmp_path, 7, np.full(10, 2.0))
    found = [data.result_intervals(s) for s in (imported, gone, kept)]
    assert data.missing_intervals(found) == {"no interval (imported)": 1, comparison.NO_INTERVAL_MISSING: 1}
    frame = data.intervals_frame(found)
    assert set(frame["result_id"]) == {7} and set(frame["task"]) == {"all", "t"}
    pair = data.paired_delta(kept, imported)
    assert pair.tasks == {} and pair.missing == "no interval (imported)" and not pair.incompatible


def test_pairs_on_different_subsets_are_refused_naming_both(tmp_path):
    a = _side(tmp_path, 1, np.full(6, 2.0))
    path = tmp_path / "sub.parquet"
    per_example.write(
        path,
        example_ids=[f"ex{k:04d}" for k in range(3)],
        tasks=["t"] * 3,
        nll_sums=[20.0] * 3,
        tokens=[10] * 3,
        evalset_hash=HASH,
        evalset_name="es",
        subset="max_examples=3",
        checkpoint_hash="f" * 64,
    )
    pair = data.paired_delta(a, data.result_examples(_result(2, path), None))
    assert pair.incompatible and pair.tasks == {}
    assert pair.missing.count(HASH) == 2 and "max_examples=3" in pair.missing


def test_loss_chart_draws_a_band_per_run_through_its_intervals():
    rows = []
    for run, offset in (("a", 0.0), ("b", 0.5)):
        for k, step in enumerate((100, 200, 300)):
            loss = 3.0 - 0.2 * k + offset
            has = run == "a" or step != 200  # b's step 200 has no interval (an imported result)
            rows.append(
                {
                    "result_id": len(rows) + 1,
                    "run": run,
                    "step": step,
                    "evalset": "es",
                    "task": "all",
                    "loss": loss,
                    "low": loss - 0.05 - 0.01 * k if has else math.nan,
                    "high": loss + 0.04 + 0.01 * k if has else math.nan,
                    "regression": run == "b" and step == 300,
                }
            )
    df = pd.DataFrame(rows)
    fig = charts.loss_curves(df, "all")
    bands = [t for t in fig.data if t.fill == "toself"]
    assert [t.name for t in bands] == ["a 95% interval", "b 95% interval"]
    for band, run in zip(bands, ("a", "b")):
        mine = df[(df["run"] == run) & df["low"].notna()].sort_values("step")
        assert list(band.x) == mine["step"].tolist() + mine["step"].tolist()[::-1]
        assert list(band.y) == mine["high"].tolist() + mine["low"].tolist()[::-1]  # exactly the bounds
        line = next(t for t in fig.data if t.name == run)
        assert band.legendgroup == line.legendgroup == run  # hiding the run hides its band
        assert band.line.color == line.line.color
    assert list(next(t for t in fig.data if t.name == "b").x) == [100, 200, 300]  # the bare point stays
    flagged = next(t for t in fig.data if t.name == charts.REGRESSION_LABEL)
    assert "significant at 95%" in flagged.name and list(flagged.x) == [300]
    assert "95% interval" in fig.layout.legend.title.text
    plain = charts.loss_curves(df.drop(columns=["low", "high", "regression"]), "all")
    assert not any(t.fill for t in plain.data) and not plain.layout.legend.title.text


def test_best_checkpoints_and_losses_carry_low_and_high():
    df = pd.DataFrame(
        {
            "result_id": [1, 1, 2, 2],
            "run_id": [1, 1, 1, 1],
            "run": ["a"] * 4,
            "checkpoint_id": [1, 1, 2, 2],
            "step": [100, 100, 200, 200],
            "evalset": ["es"] * 4,
            "task": ["all", "t", "all", "t"],
            "loss": [3.0, 2.9, 2.5, 2.4],
        }
    )
    intervals = pd.DataFrame({"result_id": [2, 2], "task": ["all", "t"], "low": [2.4, 2.3], "high": [2.6, 2.5]})
    best = analysis.best_checkpoints(analysis.with_intervals(df, intervals))
    assert list(best.columns) == [
        "run",
        "evalset",
        "best step",
        "checkpoint_id",
        "loss all",
        "low all",
        "high all",
        "evaluated checkpoints",
        "loss t",
        "low t",
        "high t",
    ]
    assert best.iloc[0][["low all", "high all", "low t", "high t"]].tolist() == [2.4, 2.6, 2.3, 2.5]


# -- pages and reports on the populated registry ---------------------------------------------------


def _expected_intervals(run_name: str) -> dict[int, dict]:
    """step -> the run's loss intervals, computed straight through `registry.comparison`."""
    from registry.settings import Settings

    settings = Settings.from_env()
    cache = comparison.example_cache(settings.home, settings.mlflow_uri)
    with registry_from_env() as reg:
        run = reg.get_run(name=run_name)
        found = reg.list_eval_results(run_ids=[run.id])
    return {
        r.step: comparison.loss_intervals_of(comparison.load_examples(r, cache))
        for r in found
        if r.source == "evaluator"
    }


def _band(at, chart_key: str, run: str) -> dict:
    chart = next(c for c in at.get("plotly_chart") if c.key == chart_key)
    return next(t for t in json.loads(chart.proto.spec)["data"] if t.get("name") == f"{run} 95% interval")


def test_compare_page_bands_are_the_results_loss_intervals(populated):
    at = run_page("compare")
    assert_ok(at, "Compare runs")
    run = "stage3_token_lm_iter5"
    expected = _expected_intervals(run)
    steps = sorted(expected)
    for task in ("all", "a2t", "i2t"):
        band = _band(at, f"compare_chart_{task}", run)
        assert band["x"] == steps + steps[::-1]
        assert band["y"] == [expected[s][task].high for s in steps] + [expected[s][task].low for s in steps[::-1]]
    assert any("95% interval" in cap.value and "B=1000" in cap.value for cap in at.caption)
    # deltas against the baseline: the paired interval and p as columns
    deltas = next(d.value for d in at.dataframe if "Δ" in d.value.columns)
    assert {"low", "high", "p", "significant"} <= set(deltas.columns)
    assert deltas["low"].notna().all() and set(deltas["significant"]) <= {"yes", "no"}
    flagged = next(d.value for d in at.dataframe if "worse by" in d.value.columns)
    assert flagged[["run", "task", "step"]].values.tolist() == [["stage3_token_lm_wide_image", "i2t", 300]]
    assert (flagged["low"] > 0).all()


def test_imported_results_show_their_point_and_say_no_interval(populated):
    at = run_page("compare")
    imported = next(o for o in at.selectbox(key="compare_evalset").options if "imported" in o)
    at.selectbox(key="compare_evalset").set_value(imported.rsplit(" (", 1)[0]).run()
    assert_ok(at, "Compare runs")
    assert all(not t.get("fill") for c in at.get("plotly_chart") for t in json.loads(c.proto.spec)["data"])
    assert any("the point only: no interval \\(imported\\)" in cap.value for cap in at.caption), [
        cap.value for cap in at.caption
    ]


def test_checkpoint_page_warns_when_a_pair_cannot_be_made(populated, tmp_path):
    from registry.store import Registry
    from tests.dashboard.test_pages import _run_id

    # another checkpoint evaluated on a subset of the same eval set: refused, both hashes named
    with Registry(populated) as reg:
        run = reg.get_run(name="stage3_token_lm_iter5")
        ck = next(c for c in reg.list_checkpoints(run_id=run.id) if c.step == 200)
        es = reg.list_evalsets()[0]
        path = tmp_path / "subset.parquet"
        per_example.write(
            path,
            example_ids=["a2t-0000", "i2t-0000"],
            tasks=["a2t", "i2t"],
            nll_sums=[12.0, 13.0],
            tokens=[6, 6],
            evalset_hash=es.content_hash,
            evalset_name=es.name,
            subset="max_examples=1",
            checkpoint_hash=ck.content_hash,
        )
        sub = reg.add_eval_result(
            checkpoint_id=ck.id,
            run_id=run.id,
            evalset_id=es.id,
            evalset_hash=es.content_hash,
            step=200,
            source="evaluator",
            metrics={"all": {"loss": 2.0}, "a2t": {"loss": 2.0}, "i2t": {"loss": 2.1}},
            extra={"per_example_path": str(path), "max_examples": 1},
        )
    at = run_page("checkpoint")
    at.selectbox(key="checkpoint_run").set_value(_run_id(at, "stage3_token_lm_iter5")).run()
    at.selectbox(key="checkpoint_other").set_value(sub.id).run()
    assert_ok(at, "Checkpoint")
    warnings = [w.value for w in at.warning]
    assert any("cannot be paired" in w and w.count(es.content_hash) == 2 for w in warnings), warnings
    # an imported result of this checkpoint: its point values only
    with Registry(populated) as reg:
        ck_id = at.selectbox(key="checkpoint_id").value
        imported = next(r.id for r in reg.list_eval_results(checkpoint_id=ck_id) if r.source == "import")
    at.selectbox(key="checkpoint_result").set_value(imported).run()
    assert_ok(at, "Checkpoint")
    assert any("no interval \\(imported\\)" in i.value for i in at.info), [i.value for i in at.info]


def test_reports_carry_the_intervals(populated):
    from registry.settings import Settings

    settings = Settings.from_env()
    cache = comparison.example_cache(settings.home, settings.mlflow_uri)
    runs = ["stage3_token_lm_iter5", "stage3_token_lm_wide_image"]
    with registry_from_env() as reg:
        rep = report.collect(reg, runs, examples=cache)
    expected = _expected_intervals("stage3_token_lm_iter5")
    best = min(expected, key=lambda s: expected[s]["all"].loss)
    low, high = expected[best]["all"].low, expected[best]["all"].high
    html, md = report.to_html(rep), report.to_markdown(rep)
    for text in (html, md):
        assert f"{low:.4f}" in text and f"{high:.4f}" in text
        assert "95% bootstrap interval" in text and "B=1000" in text
        assert "2 results without one: no interval (imported)" in text.replace("\\", "")
        assert "vs the overall best" in text
    rows = list(csv.DictReader(io.StringIO(report.to_csv(rep))))
    mine = next(
        r for r in rows if (r["run"], r["step"], r["task"], r["source"]) == (runs[0], str(best), "all", "evaluator")
    )
    assert float(mine["low"]) == pytest.approx(low) and float(mine["high"]) == pytest.approx(high)
    assert all(r["low"] == "" for r in rows if r["source"] == "import")
    vs = rep.vs_best.set_index(["evalset", "run", "task"])
    row = vs.loc[("synthetic-a2t-i2t", "stage3_token_lm_wide_image", "all")]
    assert row["Δ"] > 0 and row["low"] > 0 and row["significant"] == "yes"
    assert f"{row['Δ']:.4f}" in html and f"{row['low']:.4f}" in md
    # the report's loss charts draw the same bands
    assert html.count('"fill":"toself"') >= 2


# -- real evaluations: the intervals come back from MLflow ----------------------------------------

RUN = "stage3_token_lm_iter5"


@pytest.mark.slow
def test_pages_show_the_same_intervals_from_mlflow_after_local_files_are_gone(eval_env):
    from evaluator.service import EvalOptions, Evaluator
    from tests.dashboard.test_pages import _run_id

    cks = {step: eval_env.checkpoint(RUN, step) for step in (100, 300)}
    for ck in cks.values():
        Evaluator(eval_env.reg, eval_env.settings).evaluate(ck, eval_env.evalset, EvalOptions(device="cpu"))
    found = {
        step: next(r for r in eval_env.reg.list_eval_results(checkpoint_id=ck.id) if r.source == "evaluator")
        for step, ck in cks.items()
    }
    assert all(r.mlflow_run_id for r in found.values())
    cache = comparison.example_cache(eval_env.home, eval_env.mlflow_uri)
    sides = {s: comparison.load_examples(r, cache) for s, r in found.items()}
    before = comparison.compare_results(sides[100], sides[300]).paired
    losses = {s: comparison.loss_intervals_of(side) for s, side in sides.items()}
    eval_env.reg.close()

    shutil.rmtree(eval_env.home / "results")
    shutil.rmtree(eval_env.home / "cache" / "per_example")
    at = run_page("checkpoint")
    at.selectbox(key="checkpoint_run").set_value(_run_id(at, RUN)).run()
    at.selectbox(key="checkpoint_id").set_value(cks[300].id).run()
    assert_ok(at, "Checkpoint")
    paired = next(d.value for d in at.dataframe if "Δ (B − A)" in d.value.columns).set_index("task")
    assert list(paired.index) == list(before.tasks)
    for task, d in before.tasks.items():
        assert paired.loc[task, ["Δ (B − A)", "low", "high", "p"]].tolist() == [d.delta, d.low, d.high, d.p_value]
        assert paired.loc[task, "significant"] == ("yes" if d.significant else "no")
    assert len(list((eval_env.home / "cache" / "per_example").glob("*.parquet"))) == 2  # fetched from MLflow

    at = run_page("compare")
    at.selectbox(key="compare_evalset").set_value(eval_env.evalset.name).run()
    assert_ok(at, "Compare runs")
    band = _band(at, "compare_chart_all", RUN)
    assert band["x"] == [100, 300, 300, 100]
    assert band["y"] == [
        losses[100]["all"].high,
        losses[300]["all"].high,
        losses[300]["all"].low,
        losses[100]["all"].low,
    ]

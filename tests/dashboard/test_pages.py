"""Every page under AppTest, on a populated registry and on an empty one, plus each page's main
interaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dashboard._helpers import PAGES, TITLES, assert_ok, run_page


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_populated(populated, page):
    at = run_page(page)
    assert_ok(at, TITLES[page])


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_empty_with_hint(empty, page):
    at = run_page(page)
    assert_ok(at, TITLES[page])
    hints = " ".join(i.value for i in at.info)
    assert "evalboard" in hints, hints


def test_runs_table_and_filter(populated):
    at = run_page("runs")
    table = at.dataframe[0].value
    assert set(table["run"]) == {"stage1_align_trial", "stage3_token_lm_iter5", "stage3_token_lm_wide_image"}
    iter5 = table.set_index("run").loc["stage3_token_lm_iter5"]
    assert iter5["checkpoints"] == 4 and iter5["invalid"] == 1
    assert iter5["best all"] < iter5["best i2t"]  # "all" averages a2t (lower) and i2t
    at.text_input(key="runs_search").input("wide").run()
    assert list(at.dataframe[0].value["run"]) == ["stage3_token_lm_wide_image"]


def _chart_traces(at):
    """Per loss chart, the names of its lines and markers (interval bands left out)."""
    return [[t.get("name") for t in spec["data"] if not t.get("fill")] for spec in _specs(at, "compare_chart_")]


def _bands(at):
    """Per loss chart, the names of its shaded interval bands."""
    return [[t.get("name") for t in spec["data"] if t.get("fill") == "toself"] for spec in _specs(at, "compare_chart_")]


def _specs(at, prefix: str = ""):
    import json

    return [json.loads(chart.proto.spec) for chart in _plotly(at, prefix)]


def _plotly(at, prefix: str = ""):
    return [c for c in at.get("plotly_chart") if (c.key or "").startswith(prefix)]


def test_compare_choosing_runs_changes_charts(populated):
    at = run_page("compare")
    assert_ok(at, "Compare runs")
    runs = ["stage3_token_lm_iter5", "stage3_token_lm_wide_image"]
    # three tasks (all, a2t, i2t), a line per run plus the best-checkpoint markers; i2t also marks
    # the regression planted in wide_image at its last step (significant at 95%)
    assert len(_plotly(at, "compare_chart_")) == 3
    all_, a2t, i2t = _chart_traces(at)
    assert all_ == a2t == [*runs, "best checkpoint"]
    assert i2t == [*runs, "best checkpoint", "regression (significant at 95%)"]
    assert all(bands == [f"{r} 95% interval" for r in runs] for bands in _bands(at))
    assert any("worse than their run's previous best, significant at 95%" in w.value for w in at.warning)
    at.multiselect(key="compare_runs").set_value(["stage3_token_lm_wide_image"]).run()
    assert_ok(at, "Compare runs")
    assert _chart_traces(at)[0] == ["stage3_token_lm_wide_image", "best checkpoint"]
    assert all(bands == ["stage3_token_lm_wide_image 95% interval"] for bands in _bands(at))
    # filter + select all matching
    at.multiselect(key="compare_runs").set_value([]).run()
    at.text_input(key="compare_filter").input("ITER5").run()
    at.button(key="compare_select_all").click().run()
    assert at.multiselect(key="compare_runs").value == ["stage3_token_lm_iter5"]
    assert all(names == ["stage3_token_lm_iter5", "best checkpoint"] for names in _chart_traces(at))


def test_compare_without_intervals_flags_no_regression(populated):
    at = run_page("compare")
    at.toggle(key="compare_intervals").set_value(False).run()
    assert_ok(at, "Compare runs")
    assert all(bands == [] for bands in _bands(at))
    assert not at.warning  # a worse point value alone is never flagged
    assert any("significant at 95%" in i.value for i in at.info)
    deltas = next(d.value for d in at.dataframe if "Δ" in d.value.columns)
    assert "low" not in deltas.columns


def test_compare_example_by_example(populated):
    at = run_page("compare")
    summaries = [d.value for d in at.dataframe if "better" in d.value.columns]
    assert summaries and set(summaries[0]["task"]) == {"a2t", "i2t"}
    assert (summaries[0]["examples"] == 8).all()


def test_compare_tokens_seen_axis(populated):
    at = run_page("compare")
    at.radio(key="compare_x").set_value("tokens seen").run()
    assert_ok(at, "Compare runs")
    import json

    spec = json.loads(_plotly(at)[0].proto.spec)
    assert spec["layout"]["xaxis"]["title"]["text"] == "tokens seen"
    assert max(spec["data"][0]["x"]) == 300 * 4096


def test_checkpoint_page_links_and_history(populated):
    at = run_page("checkpoint")
    assert_ok(at, "Checkpoint")
    # defaults to the first run alphabetically (Track A, not evaluated): switch to an evaluated one
    at.selectbox(key="checkpoint_run").set_value(_run_id(at, "stage3_token_lm_iter5")).run()
    assert_ok(at, "Checkpoint")
    buttons = at.get("link_button")
    urls = [b.proto.url for b in buttons]
    assert any("/#/experiments/7/runs/mlflowrun" in u for u in urls), urls
    assert any("/#/experiments/7/models/m-" in u for u in urls), urls
    assert len(_plotly(at)) == 1  # per-example distribution
    # against the run's previous evaluated step: the interval of the whole delta, per task
    paired = next(d.value for d in at.dataframe if "Δ (B − A)" in d.value.columns)
    assert list(paired["task"]) == ["all", "a2t", "i2t"]
    assert (paired["low"] <= paired["Δ (B − A)"]).all() and (paired["Δ (B − A)"] <= paired["high"]).all()
    assert set(paired["significant"]) <= {"yes", "no"}


def test_compatibility_matrix_marks_mismatch(populated):
    at = run_page("compatibility")
    matrix = at.dataframe[0].value
    if hasattr(matrix, "data"):  # a Styler
        matrix = matrix.data
    m = matrix.set_index("run")
    assert m.loc["stage3_token_lm_wide_image", "synthetic-a2t-i2t"] == "error"
    assert m.loc["stage3_token_lm_iter5", "synthetic-a2t-i2t"] in ("ok", "warning")
    assert m.loc["stage1_align_trial", "synthetic-a2t-i2t"] == "n/a"
    assert m.loc["stage3_token_lm_iter5", "run token_space.json"] == "ok"
    assert m.loc["stage3_token_lm_iter5", "checkpoints"] == "error"  # the truncated checkpoint_400
    diff = [d.value for d in at.dataframe if "field" in getattr(d.value, "columns", [])]
    assert diff and "range:image" in set(diff[0]["field"])


def test_row_stats_charts(populated):
    at = run_page("row_stats")
    assert_ok(at, "Weight statistics")
    assert len(_plotly(at)) == 5  # trend ×2, histogram ×2, drift
    assert at.success and "No dead" in at.success[0].value


def _enqueue(at, run_name: str, checkpoints=()):
    """Submit the Evaluate form: the chosen checkpoints, or (none chosen) all unevaluated ones."""
    at.selectbox(key="eval_run").set_value(_run_id(at, run_name)).run()
    at.multiselect(key="eval_checkpoints").set_value(list(checkpoints))
    at.button(key="FormSubmitter:evaluate_form-Enqueue").click()
    return at.run()


def _run_id(at, name: str) -> int:
    from dashboard.data import load_runs
    from tests.dashboard._helpers import registry_from_env

    runs = load_runs(registry_from_env())
    return int(runs.loc[runs["run"] == name, "run_id"].iloc[0])


def _checkpoint_ids(run_name: str) -> list[int]:
    from tests.dashboard._helpers import registry_from_env

    with registry_from_env() as reg:
        run = reg.get_run(name=run_name)
        return [c.id for c in sorted(reg.list_checkpoints(run_id=run.id), key=lambda c: c.step)]


def test_evaluate_form_creates_jobs_and_dedups(populated):
    from registry.store import Registry

    at = run_page("queue")
    assert_ok(at, "Queue")
    at.selectbox(key="eval_run").set_value(_run_id(at, "stage3_token_lm_iter5")).run()
    valid = _checkpoint_ids("stage3_token_lm_iter5")[:2]  # steps 100 and 200
    at.multiselect(key="eval_checkpoints").set_value(valid)
    at.button(key="FormSubmitter:evaluate_form-Enqueue").click().run()
    assert_ok(at, "Queue")
    assert any("Enqueued 2 jobs" in s.value for s in at.success), [s.value for s in at.success]
    with Registry(populated) as reg:
        jobs = reg.list_jobs()
    assert sorted(j.checkpoint_id for j in jobs) == sorted(valid)
    assert all(j.status == "queued" for j in jobs)
    # the jobs table shows them, and submitting again reports "already queued"
    assert len(at.dataframe[0].value) == 2
    at.button(key="FormSubmitter:evaluate_form-Enqueue").click().run()
    assert any("already queued" in i.value for i in at.info)
    with Registry(populated) as reg:
        assert len(reg.list_jobs()) == 2


def test_evaluate_refuses_mismatched_token_space(populated):
    from registry.store import Registry

    at = run_page("queue")
    at.selectbox(key="eval_run").set_value(_run_id(at, "stage3_token_lm_wide_image")).run()
    at.multiselect(key="eval_checkpoints").set_value(_checkpoint_ids("stage3_token_lm_wide_image")[:1])
    at.button(key="FormSubmitter:evaluate_form-Enqueue").click().run()
    assert_ok(at, "Queue")
    errors = [e.value for e in at.error]
    assert errors and "Refused" in errors[0]
    assert "image range" in errors[0] and "vocab" in errors[0], errors
    with Registry(populated) as reg:
        assert reg.list_jobs() == []


def test_queue_cancel_and_retry(populated):
    from registry.store import Registry

    with Registry(populated) as reg:
        ck = next(c for c in reg.list_checkpoints() if c.status == "valid" and c.track == "B")
        job, _ = reg.enqueue_job(checkpoint_id=ck.id, evalset_id=reg.list_evalsets()[0].id)
    at = run_page("queue")
    at.multiselect(key="jobs_picked").set_value([job.id])
    at.button(key="jobs_cancel").click().run()
    assert_ok(at, "Queue")
    with Registry(populated) as reg:
        assert reg.get_job(id=job.id).status == "cancelled"
    assert at.dataframe[0].value.iloc[0]["status"] == "cancelled"
    at.multiselect(key="jobs_picked").set_value([job.id])
    at.button(key="jobs_retry").click().run()
    with Registry(populated) as reg:
        again = reg.get_job(id=job.id)
    assert again.status == "queued" and again.attempts == 0


def test_export_page_builds_checked_file(populated):
    at = run_page("export")
    assert_ok(at, "Export")
    at.radio(key="export_format").set_value("md")
    at.button(key="export_build").click().run()
    assert_ok(at, "Export")
    payload = at.session_state["export_payload"]
    assert payload.startswith("# evalboard report")
    assert "stage3\\_token\\_lm\\_iter5" in payload
    assert "## Audit findings" in payload
    at.radio(key="export_format").set_value("csv")
    at.button(key="export_build").click().run()
    lines = at.session_state["export_payload"].splitlines()
    assert lines[0].startswith("run,step,tokens_seen,evalset,task,loss")
    assert len(lines) == 1 + (6 + 2) * 3  # 6 evaluated + 2 imported eval_step300.json, × (all, a2t, i2t)


def test_new_results_show_up_without_restart(populated):
    from registry.store import Registry

    at = run_page("runs")
    # losses are shown as text (a dash when missing), 4 decimals
    before = float(at.dataframe[0].value.set_index("run").loc["stage3_token_lm_iter5", "best all"])
    with Registry(populated) as reg:
        run = reg.get_run(name="stage3_token_lm_iter5")
        ck = next(c for c in reg.list_checkpoints(run_id=run.id) if c.step == 300)
        reg.add_eval_result(
            checkpoint_id=ck.id,
            run_id=run.id,
            evalset_id=reg.list_evalsets()[0].id,
            step=300,
            source="evaluator",
            metrics={"all": {"loss": 0.5, "tokens": 1, "examples": 1}},
        )
    at.run()
    after = float(at.dataframe[0].value.set_index("run").loc["stage3_token_lm_iter5", "best all"])
    assert before > 1 and after == pytest.approx(0.5)


def test_queue_says_whether_a_worker_is_alive(populated):
    from registry import queue
    from registry.store import Registry

    at = run_page("queue")
    assert_ok(at, "Queue")
    assert any("No worker is running" in w.value for w in at.warning)
    assert at.button(key="queue_start_worker")
    with Registry(populated) as reg:
        queue.claim(reg, worker_id="gpu-7:123")  # a claim attempt is a sign of life, even with nothing to claim
        at.run()
        assert any("1 worker alive: gpu\\-7\\:123" in s.value for s in at.success), [s.value for s in at.success]
        queue.worker_gone(reg, "gpu-7:123")
    at.run()
    assert any("No worker is running" in w.value for w in at.warning)


def test_queue_opens_on_a_run_with_work_and_groups_refusals(populated):
    at = run_page("queue")
    default = at.selectbox(key="eval_run")
    assert "(0 to evaluate)" not in default.format_func(default.value)  # a run whose checkpoints can be queued
    at.selectbox(key="eval_run").set_value(_run_id(at, "stage3_token_lm_wide_image")).run()
    at.multiselect(key="eval_checkpoints").set_value(_checkpoint_ids("stage3_token_lm_wide_image")[:2])
    at.button(key="FormSubmitter:evaluate_form-Enqueue").click().run()
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "Refused 2 checkpoints (steps" in errors[0], errors


def test_start_local_worker_runs_a_real_worker(populated, tmp_path):
    import time

    from dashboard import data
    from registry.settings import Settings

    started = data.start_local_worker(Settings.from_env())
    log = Path(started["log"])
    deadline = time.monotonic() + 120
    while "stopping after" not in (log.read_text() if log.exists() else ""):  # nothing queued: --once exits
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)  # polling interval
    assert "worker started" in log.read_text()


def test_runs_table_links_the_training_run_when_one_was_recorded(populated, monkeypatch):
    from registry.store import Registry

    at = run_page("runs")
    assert "training_run" not in at.dataframe[0].value.columns  # none recorded: no empty column
    monkeypatch.setenv("EVALBOARD_MLFLOW_UI", "http://mlflow.example:5000")
    with Registry(populated) as reg:
        run = reg.get_run(name="stage3_token_lm_iter5")
        reg.link_training_run(run.id, mlflow_run_id="abc123", mlflow_experiment_id="7")
    at = run_page("runs")
    links = at.dataframe[0].value.set_index("run")["training_run"]
    assert links["stage3_token_lm_iter5"] == "http://mlflow.example:5000/#/experiments/7/runs/abc123"
    assert links.drop("stage3_token_lm_iter5").isna().all()

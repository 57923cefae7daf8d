"""End-to-end evaluation of real checkpoints: exact against a plain reference, resident swaps,
MLflow layout, refusals that log nothing, materialize, stats, import."""

from __future__ import annotations

import json
import math

import pytest
import torch

from evaluator.options import subset_examples
from evaluator.service import EvalOptions, Evaluator
from registry.errors import Incompatible, IntegrityError, NotFound
from registry.evalset import EvalSet
from tests._infra.workspace import evalboard_cli

RUN = "stage3_token_lm_iter5"
OTHER = "stage3_token_lm_wide_image"


def reference_losses(env, ck) -> dict[str, tuple[float, int]]:
    """The plain recipe, written independently of evaluator/: load the base with transformers,
    build the resized matrices by hand, copy the rows, then `model(input_ids, labels=)` one
    example at a time in fp32. Returns example_id -> (loss, scored tokens)."""
    from transformers import AutoModelForCausalLM

    from registry.token_space import TokenSpace
    from registry.trainable_rows import TrainableRows

    rows = TrainableRows.load(ck.path)
    space: TokenSpace = rows.token_space
    model = AutoModelForCausalLM.from_pretrained(env.root / "models" / "tiny-qwen3", dtype=torch.float32).eval()
    text, total = space.text_vocab_size, space.vocab_size_total
    with torch.no_grad():
        old_e = model.get_input_embeddings().weight
        old_h = model.get_output_embeddings().weight
        mean_e, mean_h = old_e[:text].mean(0), old_h[:text].mean(0)
        new_e = mean_e.repeat(total, 1)
        new_h = mean_h.repeat(total, 1)
        new_e[:text], new_h[:text] = old_e[:text], old_h[:text]
        new_e[rows.row_start : rows.row_end] = rows.embed
        new_h[rows.row_start : rows.row_end] = rows.lm_head
        model.resize_token_embeddings(total)
        model.get_input_embeddings().weight.copy_(new_e)
        model.get_output_embeddings().weight.copy_(new_h)
    out = {}
    for ex in EvalSet.load(env.evalset.path).examples:
        ids = torch.tensor([ex.input_ids])
        labels = torch.tensor([ex.labels])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss.item()
        out[ex.example_id] = (loss, ex.n_scored)
    return out


def test_losses_match_the_plain_reference(eval_env):
    ck = eval_env.checkpoint(RUN, 300)
    ev = Evaluator(eval_env.reg, eval_env.settings)
    outcome = ev.evaluate(ck, eval_env.evalset, EvalOptions(device="cpu", log_to_mlflow=False))
    ref = reference_losses(eval_env, ck)
    per_example = {e.example_id: e for e in outcome.report.examples}
    assert set(per_example) == set(ref)
    for ex_id, (loss, n) in ref.items():
        assert abs(per_example[ex_id].loss - loss) < 1e-4, ex_id
        assert per_example[ex_id].tokens == n
    for task in ("a2t", "i2t", "all"):
        items = [v for k, v in ref.items() if task == "all" or k.startswith(task)]
        expected = sum(loss * n for loss, n in items) / sum(n for _, n in items)
        assert abs(outcome.result.losses[task] - expected) < 1e-4, task
        assert outcome.result.tokens[task] == sum(n for _, n in items)
        assert outcome.result.examples[task] == len(items)


def test_swapping_rows_on_a_resident_base_equals_fresh_loads(eval_env):
    cks = [eval_env.checkpoint(RUN, s) for s in (100, 200, 300)]
    resident = Evaluator(eval_env.reg, eval_env.settings)
    swapped = [
        resident.evaluate(
            c, eval_env.evalset, EvalOptions(device="cpu", log_to_mlflow=False, write_eval_json=False)
        ).result.losses
        for c in cks
    ]
    assert resident.loads == 1
    for c, losses in zip(cks, swapped):
        fresh = (
            Evaluator(eval_env.reg, eval_env.settings).compute(c, eval_env.evalset, EvalOptions(device="cpu")).result
        )
        for task, value in fresh.losses.items():
            assert abs(losses[task] - value) < 1e-6
    assert len({round(s["all"], 6) for s in swapped}) == 3  # the checkpoints really differ


def test_mlflow_runs_models_datasets_and_artifacts(eval_env):
    from mlflow.tracking import MlflowClient

    ck = eval_env.checkpoint(RUN, 200)
    ev = Evaluator(eval_env.reg, eval_env.settings)
    outcome = ev.evaluate(ck, eval_env.evalset, EvalOptions(device="cpu"))
    client = MlflowClient(eval_env.mlflow_uri)
    exp = client.get_experiment_by_name(f"evalboard/{RUN}")
    assert exp is not None
    run = client.get_run(outcome.mlflow["run_id"])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "loss_all")
    assert [(m.step, round(m.value, 6)) for m in history] == [(200, round(outcome.result.losses["all"], 6))]
    assert {"loss_a2t", "loss_i2t"} <= set(run.data.metrics)
    tags = run.data.tags
    assert tags["evalboard.checkpoint_hash"] == ck.content_hash
    assert tags["evalboard.evalset_hash"] == eval_env.evalset.content_hash
    params = run.data.params
    for key in (
        "evalboard_version",
        "torch_version",
        "transformers_version",
        "device",
        "dtype",
        "max_tokens_per_batch",
    ):
        assert key in params, key
    assert params["device"] == "cpu" and params["dtype"] == "float32"
    # dataset: digest is the eval set's hash (MLflow keeps 36 characters)
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1
    assert inputs[0].dataset.digest == eval_env.evalset.content_hash[:36]
    assert inputs[0].dataset.name == eval_env.evalset.name
    # the LoggedModel of the checkpoint, linked to the run's metrics
    model = client.get_logged_model(outcome.mlflow["model_id"])
    assert model.tags["evalboard.checkpoint_hash"] == ck.content_hash
    assert model.params["step"] == "200" and model.params["row_start"] == str(ck.row_start)
    assert model.params["token_space_hash"] == outcome.result.token_space_hash
    linked = {(m.key, m.run_id, m.step) for m in (model.metrics or [])}
    assert ("loss_all", run.info.run_id, 200) in linked
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"eval_step200.json", "per_example_losses.parquet", "row_stats.json"} <= artifacts
    # eval_step json next to the checkpoint, in the seed's place
    written = json.loads((eval_env.root / "outputs" / RUN / "eval_step200.json").read_text())
    assert written["loss"]["all"] == pytest.approx(outcome.result.losses["all"])
    # the registry has the result, with its MLflow run
    res = eval_env.reg.list_eval_results(checkpoint_id=ck.id)
    assert [r.mlflow_run_id for r in res if r.source == "evaluator"] == [run.info.run_id]
    # again: no second run; with force: a second one
    again = Evaluator(eval_env.reg, eval_env.settings).evaluate(ck, eval_env.evalset, EvalOptions(device="cpu"))
    assert again.skipped
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    forced = ev.evaluate(ck, eval_env.evalset, EvalOptions(device="cpu", force=True))
    assert forced.mlflow["run_id"] != run.info.run_id
    assert len(client.search_runs([exp.experiment_id])) == 2
    assert len(client.search_logged_models([exp.experiment_id])) == 1


def test_max_examples_is_a_deterministic_subset_recorded_in_mlflow(eval_env):
    from mlflow.tracking import MlflowClient

    examples = EvalSet.load(eval_env.evalset.path).examples
    a, b = subset_examples(examples, 3), subset_examples(list(reversed(examples)), 3)
    assert sorted(e.example_id for e in a) == sorted(e.example_id for e in b)
    assert sum(e.task == "a2t" for e in a) == 3 and sum(e.task == "i2t" for e in a) == 3
    ck = eval_env.checkpoint(RUN, 100)
    out = Evaluator(eval_env.reg, eval_env.settings).evaluate(
        ck, eval_env.evalset, EvalOptions(device="cpu", max_examples=3)
    )
    assert out.result.examples["all"] == 6
    run = MlflowClient(eval_env.mlflow_uri).get_run(out.mlflow["run_id"])
    assert run.data.params["max_examples"] == "3"
    assert run.data.tags["evalboard.subset"] == "max_examples=3"


def _mlflow_run_count(uri: str) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return len(client.search_runs(exps)) if exps else 0


def test_token_space_mismatch_is_refused_unless_allowed(eval_env):
    ck = eval_env.checkpoint(OTHER, 100)
    before = eval_env.reg.snapshot()
    with pytest.raises(Incompatible, match=r"image range 320–415 \(96 rows\).*320–383 \(64 rows\)"):
        Evaluator(eval_env.reg, eval_env.settings).evaluate(ck, eval_env.evalset, EvalOptions(device="cpu"))
    assert eval_env.reg.snapshot() == before
    assert _mlflow_run_count(eval_env.mlflow_uri) == 0
    out = Evaluator(eval_env.reg, eval_env.settings).evaluate(
        ck, eval_env.evalset, EvalOptions(device="cpu", allow_mismatch=True)
    )
    from mlflow.tracking import MlflowClient

    run = MlflowClient(eval_env.mlflow_uri).get_run(out.mlflow["run_id"])
    assert run.data.tags["evalboard.allow_mismatch"] == "true"


def test_a_changed_file_is_refused_before_evaluation(eval_env):
    ck = eval_env.checkpoint(RUN, 100)
    pt = eval_env.root / "outputs" / RUN / "checkpoint_100" / "trainable_rows.pt"
    data = bytearray(pt.read_bytes())
    data[-100] ^= 0x01  # a flipped bit inside the tensor data: torch would load it silently
    pt.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="changed on disk"):
        Evaluator(eval_env.reg, eval_env.settings).evaluate(ck, eval_env.evalset, EvalOptions(device="cpu"))
    assert eval_env.reg.list_eval_results(checkpoint_id=ck.id) == []


def test_missing_base_model_is_a_clear_error(eval_env, monkeypatch):
    from registry.settings import Settings

    monkeypatch.setenv("EVALBOARD_MODELS", "other/model=/nonexistent")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ck = eval_env.checkpoint(RUN, 100)
    with pytest.raises(NotFound, match="demo/Qwen3-tiny-Base"):
        Evaluator(eval_env.reg, Settings.from_env()).evaluate(ck, eval_env.evalset, EvalOptions(device="cpu"))
    assert eval_env.reg.list_eval_results(checkpoint_id=ck.id) == []


def _cli(env, *args, check_rc=None):
    proc = evalboard_cli(args, env=env.env())
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr
    return proc


@pytest.mark.slow
def test_cli_refusals_exit_2_with_one_line_and_log_nothing(eval_env):
    eval_env.reg.close()
    # non-finite rows: registered invalid at scan, refused at eval
    from evalboard.fixtures import write_trainable_rows
    from registry.token_space import TokenSpace

    space = TokenSpace.load(eval_env.root / "outputs" / RUN / "token_space.json")
    rows = torch.zeros(space.vocab_size_total - space.text_vocab_size, 64)
    rows[3, 5] = math.nan
    bad = write_trainable_rows(
        eval_env.root / "outputs" / RUN / "checkpoint_900",
        space,
        base_model="demo/Qwen3-tiny-Base",
        hidden_size=64,
        step=900,
        rows=rows,
    )
    cases = [
        ([str(eval_env.root / "outputs" / OTHER / "checkpoint_100")], "image range"),
        ([str(bad)], "NaN"),
    ]
    for ckpts, needle in cases:
        proc = _cli(eval_env, "eval", *ckpts, "--evalset", "synthetic-a2t-i2t", check_rc=2)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert _mlflow_run_count(eval_env.mlflow_uri) == 0


@pytest.mark.slow
def test_cli_eval_json_and_materialize_gives_the_same_logits(eval_env, tmp_path):
    from transformers import AutoModelForCausalLM

    ck = eval_env.checkpoint(RUN, 300)
    eval_env.reg.close()
    proc = _cli(eval_env, "eval", ck.path, "--evalset", "synthetic-a2t-i2t", "--json", "--device", "cpu", check_rc=0)
    [row] = json.loads(proc.stdout)
    assert row["step"] == 300 and set(row["losses"]) == {"all", "a2t", "i2t"}
    out = tmp_path / "full"
    _cli(eval_env, "materialize", ck.path, "--out", str(out), check_rc=0)
    plain = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ev = Evaluator(eval_env.reg, eval_env.settings)
    ev.compute(ck, eval_env.evalset, EvalOptions(device="cpu"))
    patched = ev.resident.model
    ids = torch.tensor([EvalSet.load(eval_env.evalset.path).examples[0].input_ids])
    with torch.no_grad():
        a, b = plain(input_ids=ids).logits, patched(input_ids=ids).logits
    assert a.shape[-1] == 384
    assert torch.allclose(a, b, atol=1e-5)
    assert (out / "token_space.json").exists()


@pytest.mark.slow
def test_cli_stats_json(eval_env):
    ck = eval_env.checkpoint(RUN, 200)
    eval_env.reg.close()
    doc = json.loads(_cli(eval_env, "stats", ck.path, "--json", check_rc=0).stdout)
    assert set(doc["ranges"]) == {"audio", "image"}
    for rng in doc["ranges"].values():
        for m in ("embed", "lm_head"):
            s = rng[m]
            assert s["count"] == 64 and s["nonfinite_rows"] == 0 and s["zero_rows"] == 0
            assert s["min"] <= s["p5"] <= s["p50"] <= s["p95"] <= s["max"]
            assert s["unchanged_rows"] == 0
    assert doc["base_text"]["embed"]["count"] == 256
    assert doc["drift"]["previous_step"] == 100
    assert -1.0 <= doc["drift"]["ranges"]["audio"]["embed"]["mean_cosine"] <= 1.0


def test_unchanged_and_dead_rows_are_counted():
    from evaluator.stats import norm_stats

    rows = torch.randn(10, 8)
    init = torch.full((8,), 0.25)
    rows[2] = 0
    rows[4] = init
    rows[7, 1] = math.inf
    s = norm_stats(rows, init)
    assert (s["count"], s["zero_rows"], s["nonfinite_rows"], s["unchanged_rows"]) == (10, 1, 1, 1)


@pytest.mark.slow
def test_import_eval_backfills_mlflow_once(eval_env):
    from mlflow.tracking import MlflowClient

    path = eval_env.root / "outputs" / RUN / "eval_step300.json"
    eval_env.reg.close()
    first = json.loads(_cli(eval_env, "import-eval", str(path), "--json", check_rc=0).stdout)
    second = json.loads(_cli(eval_env, "import-eval", str(path), "--json", check_rc=0).stdout)
    assert first[0]["linked"] and not first[0]["already_imported"] and second[0]["already_imported"]
    client = MlflowClient(eval_env.mlflow_uri)
    exp = client.get_experiment_by_name(f"evalboard/{RUN}")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    hist = client.get_metric_history(runs[0].info.run_id, "loss_a2t")
    assert [(m.step, m.value) for m in hist] == [(300, 2.3606)]
    # linked like an evaluated result: the never-evaluated checkpoint got its external LoggedModel
    from registry.store import Registry

    with Registry(eval_env.settings.db_url) as reg:
        (result,) = [r for r in reg.list_eval_results() if r.path == str(path)]
        ck = reg.get_checkpoint(id=result.checkpoint_id)
    assert result.mlflow_run_id == runs[0].info.run_id
    (model,) = client.search_logged_models([exp.experiment_id])
    assert (
        model.tags["evalboard.checkpoint_hash"] == ck.content_hash and model.tags["mlflow.model.isExternal"] == "true"
    )
    assert [m.model_id for m in client.get_run(runs[0].info.run_id).inputs.model_inputs] == [model.model_id]
    assert {m.key for m in client.get_logged_model(model.model_id).metrics or []} >= {"loss_a2t", "loss_all"}


def test_a_queued_job_for_an_evaluated_pair_reuses_the_result_unless_forced(eval_env):
    from mlflow.tracking import MlflowClient

    from evaluator.worker import Worker, WorkerConfig
    from registry import queue

    ck = eval_env.checkpoint(RUN, 100)
    first = Evaluator(eval_env.reg, eval_env.settings).evaluate(ck, eval_env.evalset, EvalOptions(device="cpu"))
    job, created = queue.enqueue(eval_env.reg, checkpoint_id=ck.id, evalset_id=eval_env.evalset.id)
    assert created
    assert Worker(eval_env.reg, eval_env.settings, WorkerConfig(device="cpu", once=True)).run() == 0
    done = eval_env.reg.get_job(id=job.id)
    assert (done.status, done.mlflow_run_id) == ("done", first.mlflow["run_id"])
    client = MlflowClient(eval_env.mlflow_uri)
    exp = client.get_experiment_by_name(f"evalboard/{RUN}")
    assert len(client.search_runs([exp.experiment_id])) == 1
    forced, created = queue.enqueue(eval_env.reg, checkpoint_id=ck.id, evalset_id=eval_env.evalset.id, force=True)
    assert created and forced.options["force"] is True
    assert Worker(eval_env.reg, eval_env.settings, WorkerConfig(device="cpu", once=True)).run() == 0
    again = eval_env.reg.get_job(id=forced.id)
    assert again.status == "done" and again.mlflow_run_id != first.mlflow["run_id"]
    assert len(client.search_runs([exp.experiment_id])) == 2

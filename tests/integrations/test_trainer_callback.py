"""`EvalboardCallback` with a real `transformers.Trainer` training a tiny Qwen3's new rows: every
save is a seed-format checkpoint, registered, with a job queued; a worker drains the queue and
MLflow holds one evaluation per checkpoint, tagged with the training's MLflow run."""

from __future__ import annotations

import pytest
import torch

from evalboard.integrations.hf import EvalboardCallback
from registry.errors import NotFound
from registry.trainable_rows import TrainableRows
from tests.integrations.conftest import BASE_ID, EVALSET, rows_model, train_examples, training_args


def _drain(stack) -> int:
    from evaluator.worker import Worker, WorkerConfig

    return Worker(stack.reg, stack.settings, WorkerConfig(once=True, device="cpu")).run()


def _eval_runs(stack, run_name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stack.settings.mlflow_uri)
    exp = client.get_experiment_by_name(f"evalboard/{run_name}")
    return client, client.search_runs([exp.experiment_id], max_results=100) if exp else []


@pytest.mark.slow
def test_every_save_is_queued_and_evaluated_linked_to_the_training_run(assets, stack):
    from transformers import Trainer

    out = stack.root / "outputs" / "rows_trainer_run"
    model = rows_model(assets)
    callback = EvalboardCallback(EVALSET, assets.space, base_model=BASE_ID, settings=stack.settings)
    trainer = Trainer(model=model, args=training_args(out), train_dataset=train_examples(assets), callbacks=[callback])
    trainer.train()

    events = callback.events
    assert [e.step for e in events] == [2, 4, 6]
    assert {e.action for e in events} == {"enqueued"}, [(e.step, e.action, e.detail) for e in events]
    # next to the Trainer's own checkpoints, in the seed format
    assert {p.name for p in out.iterdir()} >= {
        "checkpoint_2",
        "checkpoint_4",
        "checkpoint_6",
        "checkpoint-2",
        "checkpoint-6",
        "token_space.json",
    }
    rows = [TrainableRows.load(out / f"checkpoint_{s}") for s in (2, 4, 6)]
    assert all(r.step == s and r.base_model == BASE_ID for r, s in zip(rows, (2, 4, 6)))
    assert not torch.equal(rows[0].embed, rows[-1].embed)  # the rows trained between saves
    # the last checkpoint holds exactly the model's final new rows
    text, total = assets.space.text_vocab_size, assets.space.vocab_size_total
    assert torch.equal(rows[-1].embed, model.get_input_embeddings().weight[text:total].detach())
    assert torch.equal(rows[-1].lm_head, model.get_output_embeddings().weight[text:total].detach())

    cks = {c.step: c for c in stack.reg.list_checkpoints()}
    assert sorted(cks) == [2, 4, 6] and all(c.is_valid for c in cks.values())
    jobs = stack.reg.list_jobs()
    assert sorted(j.checkpoint_id for j in jobs) == sorted(c.id for c in cks.values())
    assert {j.status for j in jobs} == {"queued"}

    run = stack.reg.get_run(path=str(out))
    training = _training_run(stack)
    assert run.training_mlflow_run_id == training.info.run_id
    assert run.training_mlflow_experiment_id == training.info.experiment_id

    assert _drain(stack) == 0
    assert {j.status for j in stack.reg.list_jobs()} == {"done"}
    client, evals = _eval_runs(stack, run.name)
    assert sorted(r.data.tags["evalboard.checkpoint_path"] for r in evals) == sorted(c.path for c in cks.values())
    assert all({"loss_all", "loss_a2t", "loss_i2t"} <= set(r.data.metrics) for r in evals)
    assert {r.data.tags.get("evalboard.training_run_id") for r in evals} == {training.info.run_id}
    assert {r.info.status for r in evals} == {"FINISHED"}


def _training_run(stack):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(stack.settings.mlflow_uri)
    exp = client.get_experiment_by_name("training")
    (run,) = client.search_runs([exp.experiment_id])
    assert "loss" in run.data.metrics  # the Trainer's own curve is in it
    return run


@pytest.mark.slow
def test_instead_of_the_trainers_checkpoints_and_the_last_step_saved_at_train_end(assets, stack):
    """`keep_trainer_checkpoints=False`: only rows are saved; a final step no save covered is
    saved when training ends (save_steps=4, max_steps=6: steps 4, then 6 at train end)."""
    from transformers import Trainer

    out = stack.root / "outputs" / "rows_only"
    rows_dir = stack.root / "outputs" / "evalboard_rows"
    callback = EvalboardCallback(
        EVALSET,
        assets.space,
        base_model=BASE_ID,
        settings=stack.settings,
        run_dir=rows_dir,
        keep_trainer_checkpoints=False,
        rows_format="pt",
    )
    args = training_args(out, save_steps=4, max_steps=6, report_to=[], save_strategy="steps")
    trainer = Trainer(model=rows_model(assets), args=args, train_dataset=train_examples(assets), callbacks=[callback])
    trainer.train()
    assert not any(p.name.startswith("checkpoint-") for p in out.iterdir()) if out.exists() else True
    assert sorted(p.name for p in rows_dir.iterdir()) == ["checkpoint_4", "checkpoint_6", "token_space.json"]
    assert (rows_dir / "checkpoint_6" / "trainable_rows.pt").exists()
    assert [(e.step, e.action) for e in callback.events] == [(4, "enqueued"), (6, "enqueued")]
    assert stack.reg.get_run(path=str(rows_dir)).training_mlflow_run_id is None  # no MLflow run was active


def test_an_unknown_evalset_fails_before_the_first_step(assets, stack):
    from transformers import Trainer

    callback = EvalboardCallback("no-such-evalset", assets.space, base_model=BASE_ID, settings=stack.settings)
    trainer = Trainer(
        model=rows_model(assets),
        args=training_args(stack.root / "out", max_steps=1, report_to=[]),
        train_dataset=train_examples(assets, n_per_task=2),
        callbacks=[callback],
    )
    with pytest.raises(NotFound, match="no-such-evalset"):
        trainer.train()
    assert trainer.state.global_step == 0 and stack.reg.list_checkpoints() == []

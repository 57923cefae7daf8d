"""`EvalboardLightningCallback` with a real Lightning Trainer (skipped when `lightning` is not
installed: it is an optional extra): the same guarantees as the `transformers.Trainer` callback."""

from __future__ import annotations

import pytest
import torch

from tests.integrations.conftest import BASE_ID, EVALSET, rows_model, train_examples

pl = pytest.importorskip("lightning.pytorch")


class RowsModule(pl.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model.train()

    def training_step(self, batch, batch_idx):
        loss = self.model(**batch).loss
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=1e-2)


@pytest.mark.slow
def test_every_n_steps_is_queued_and_evaluated_linked_to_the_mlflow_logger_run(assets, stack):
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    from evalboard.integrations.lightning import EvalboardLightningCallback
    from evaluator.worker import Worker, WorkerConfig

    run_dir = stack.root / "outputs" / "lightning_rows"
    logger = MLFlowLogger(experiment_name="training", tracking_uri=stack.settings.mlflow_uri)
    callback = EvalboardLightningCallback(
        EVALSET, assets.space, every_n_steps=2, run_dir=run_dir, base_model=BASE_ID, settings=stack.settings
    )
    trainer = pl.Trainer(
        max_steps=5,
        accelerator="cpu",
        logger=logger,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=str(stack.root / "lightning"),
    )
    data = torch.utils.data.DataLoader(train_examples(assets), batch_size=8, shuffle=True)
    module = RowsModule(rows_model(assets))
    trainer.fit(module, data)

    assert [(e.step, e.action) for e in callback.events] == [(2, "enqueued"), (4, "enqueued"), (5, "enqueued")]
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "checkpoint_2",
        "checkpoint_4",
        "checkpoint_5",
        "token_space.json",
    ]
    cks = stack.reg.list_checkpoints()
    assert sorted(c.step for c in cks) == [2, 4, 5] and all(c.is_valid for c in cks)
    run = stack.reg.get_run(path=str(run_dir))
    assert run.training_mlflow_run_id == logger.run_id

    assert Worker(stack.reg, stack.settings, WorkerConfig(once=True, device="cpu")).run() == 0
    client = MlflowClient(stack.settings.mlflow_uri)
    exp = client.get_experiment_by_name(f"evalboard/{run.name}")
    evals = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["evalboard.checkpoint_path"] for r in evals) == sorted(c.path for c in cks)
    assert {r.data.tags["evalboard.training_run_id"] for r in evals} == {logger.run_id}
    assert "train_loss" in client.get_run(logger.run_id).data.metrics

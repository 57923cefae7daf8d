"""`EvalboardCallback`: the Hugging Face `Trainer` saves each checkpoint in a seed format, registers
it and queues its evaluation; workers evaluate while training goes on.

    callback = EvalboardCallback(evalset="synthetic-a2t-i2t", token_space="token_space.json")
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()

Where: ``checkpoint_<step>/`` in ``run_dir`` (default: the Trainer's ``output_dir``, next to its
own ``checkpoint-<step>/`` folders, which its ``save_total_limit`` may delete without touching
ours). With ``keep_trainer_checkpoints=False`` the Trainer's own (full-model) save is replaced by
ours: at every step or epoch where it would save, only the rows are written.

Only the main process (``state.is_world_process_zero``) writes and talks to the registry. When
training ends, the final step is saved if no save covered it, and saves whose registry calls
failed are retried. The MLflow run active during training (the Trainer's ``report_to="mlflow"``
starts one) is recorded on the evalboard run; each evaluation's MLflow run is tagged with it. With
``report_to="mlflow"`` and no tracking URI chosen (no ``MLFLOW_TRACKING_URI``, no
``mlflow.set_tracking_uri``), the Trainer's MLflow callback is pointed at the workspace's MLflow
store, where the dashboard's link to the training run finds it (the Trainer would otherwise log to
a store in the working folder that nothing else reads).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from evalboard.integrations.publisher import CheckpointFormat, Publisher, SaveEvent, checkpoint_format
from registry.errors import InvalidInput
from registry.settings import Settings
from registry.token_space import TokenSpace

__all__ = ["EvalboardCallback"]

log = logging.getLogger("evalboard.integrations")


class EvalboardCallback(TrainerCallback):
    """Save, register and queue every checkpoint the `Trainer` saves.

    ``evalset``: a registered eval set's name (or a path to one). ``token_space``: the token space
    the rows are trained in (a `TokenSpace` or its JSON file); for a connector, give
    ``format=ConnectorFormat(...)`` instead. ``run_dir``: the evalboard run folder (default: the
    Trainer's ``output_dir``). ``base_model``: the base's id as workers know it (default: the id
    the model was loaded from). ``settings``: registry and MLflow (default: the workspace's).
    ``max_examples``: evaluate a deterministic subset (at most N examples per task).
    """

    def __init__(
        self,
        evalset: str,
        token_space: TokenSpace | str | Path | None = None,
        *,
        format: CheckpointFormat | None = None,
        run_dir: str | Path | None = None,
        base_model: str | None = None,
        rows_format: str = "safetensors",
        keep_trainer_checkpoints: bool = True,
        settings: Settings | None = None,
        max_examples: int | None = None,
        priority: int = 0,
        trainer_settings: Mapping[str, Any] | None = None,
    ):
        self.format = checkpoint_format(
            "EvalboardCallback",
            token_space,
            format,
            base_model=base_model,
            rows_format=rows_format,
            trainer_settings=trainer_settings,
        )
        self.evalset = evalset
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.keep_trainer_checkpoints = keep_trainer_checkpoints
        self.settings = settings
        self.max_examples = max_examples
        self.priority = priority
        self.publisher: Publisher | None = None

    @property
    def events(self) -> list[SaveEvent]:
        """One per saved step: where it went, its job, and the time the save took."""
        return list(self.publisher.events) if self.publisher is not None else []

    def on_init_end(self, args, state, control, **kwargs):
        """Runs when the Trainer is built, before its MLflow callback picks a store at train begin."""
        if "mlflow" not in (args.report_to or []) or os.environ.get("MLFLOW_TRACKING_URI"):
            return
        mlflow = sys.modules.get("mlflow")
        if mlflow is not None and mlflow.is_tracking_uri_set():
            return  # the training code chose a store
        self.settings = self.settings or Settings.from_env()
        os.environ["MLFLOW_TRACKING_URI"] = self.settings.mlflow_uri  # what the Trainer's MLflowCallback reads
        log.info("the Trainer's MLflow run goes to the workspace's store %s", self.settings.mlflow_uri)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.publisher = Publisher(
            self.run_dir or Path(args.output_dir),
            self.evalset,
            self.format,
            settings=self.settings,
            max_examples=self.max_examples,
            priority=self.priority,
        )
        self.publisher.open()  # an unknown eval set fails here, before the first step
        self.publisher.link_training_run()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        return self._instead_of_trainer(state, control, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        return self._instead_of_trainer(state, control, model)

    def on_save(self, args, state, control, model=None, **kwargs):
        self._save(state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.publisher is None:
            return
        try:
            if state.global_step not in self.publisher.saved_steps and state.global_step > 0:
                self._save(state, model)
            for event in self.publisher.retry_failed():
                if event.action == "error":
                    log.warning(
                        "step %d was saved to %s but could not be queued: %s", event.step, event.path, event.detail
                    )
        finally:
            self.publisher.close()

    def _instead_of_trainer(self, state, control, model):
        """Without the Trainer's own checkpoints: save ours where it would have saved."""
        if not self.keep_trainer_checkpoints and control.should_save:
            control.should_save = False
            self._save(state, model)
        return control

    def _save(self, state, model) -> None:
        if self.publisher is None or not state.is_world_process_zero:
            return
        if model is None:
            raise InvalidInput("EvalboardCallback: the Trainer passed no model to the callback")
        self.publisher.save(model, state.global_step)

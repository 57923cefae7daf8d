"""`EvalboardLightningCallback`: Lightning saves each checkpoint in a seed format, registers it and
queues its evaluation (needs the optional extra: ``pip install 'evalboard[lightning]'``).

    callback = EvalboardLightningCallback("synthetic-a2t-i2t", "token_space.json", every_n_steps=500)
    trainer = lightning.Trainer(max_steps=5000, callbacks=[callback])
    trainer.fit(module, data)

Lightning's ``on_save_checkpoint`` fires before its file is written (and writes the whole
module), so this callback does not hook into Lightning's checkpointing: it writes its own
checkpoint after the optimizer step of every ``every_n_steps``-th step (or at the end of every
``every_n_epochs``-th epoch), and at the end of training when no save covered the last step.
Only global rank 0 writes. With an `MLFlowLogger`, its run is recorded as the training's run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

from evalboard.integrations.publisher import CheckpointFormat, Publisher, SaveEvent, checkpoint_format
from registry.errors import InvalidInput
from registry.settings import Settings
from registry.token_space import TokenSpace

__all__ = ["EvalboardLightningCallback"]


def _default_model(pl_module: Any) -> Any:
    """The Hugging Face model a LightningModule wraps (``self.model``), else the module itself."""
    return getattr(pl_module, "model", pl_module)


class EvalboardLightningCallback(Callback):
    """Save, register and queue a checkpoint every ``every_n_steps`` optimizer steps or every
    ``every_n_epochs`` epochs (default: every epoch). ``model`` picks what the checkpoint is read
    from (default: ``pl_module.model``, else ``pl_module``). Other arguments: see
    `evalboard.integrations.hf.EvalboardCallback`; ``run_dir`` defaults to the Trainer's
    ``default_root_dir``."""

    def __init__(
        self,
        evalset: str,
        token_space: TokenSpace | str | Path | None = None,
        *,
        format: CheckpointFormat | None = None,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = None,
        run_dir: str | Path | None = None,
        base_model: str | None = None,
        rows_format: str = "safetensors",
        model: Callable[[Any], Any] = _default_model,
        settings: Settings | None = None,
        max_examples: int | None = None,
        priority: int = 0,
        trainer_settings: Mapping[str, Any] | None = None,
    ):
        self.format = checkpoint_format(
            "EvalboardLightningCallback",
            token_space,
            format,
            base_model=base_model,
            rows_format=rows_format,
            trainer_settings=trainer_settings,
        )
        for name, n in (("every_n_steps", every_n_steps), ("every_n_epochs", every_n_epochs)):
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise InvalidInput(f"EvalboardLightningCallback: {name} must be a positive integer, got {n!r}")
        self.evalset = evalset
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs if (every_n_epochs or every_n_steps) else 1
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.model = model
        self.settings = settings
        self.max_examples = max_examples
        self.priority = priority
        self.publisher: Publisher | None = None

    @property
    def events(self) -> list[SaveEvent]:
        return list(self.publisher.events) if self.publisher is not None else []

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        self.publisher = Publisher(
            self.run_dir or Path(trainer.default_root_dir),
            self.evalset,
            self.format,
            settings=self.settings,
            max_examples=self.max_examples,
            priority=self.priority,
            training_run=_mlflow_logger_run(trainer),
        )
        self.publisher.open()
        self.publisher.link_training_run(self.publisher.training_run)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self._save(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.every_n_epochs and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._save(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.publisher is None:
            return
        try:
            self._save(trainer, pl_module)  # the final step, unless a save covered it
            self.publisher.retry_failed()
        finally:
            self.publisher.close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self.publisher is not None:
            self.publisher.close()

    def _save(self, trainer, pl_module) -> None:
        """Once per optimizer step (gradient accumulation calls batch hooks several times)."""
        if self.publisher is None or not trainer.is_global_zero or trainer.global_step == 0:
            return
        if trainer.global_step in self.publisher.saved_steps:
            return
        self.publisher.save(self.model(pl_module), trainer.global_step)


def _mlflow_logger_run(trainer) -> tuple[str, str] | None:
    """(run id, experiment id) of the Trainer's MLFlowLogger, if it has one."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "MLFlowLogger" and getattr(logger, "run_id", None):
            return str(logger.run_id), str(logger.experiment_id)
    return None

"""Save, register, enqueue: the work a training callback does on the training process.

Per save: write the checkpoint in a seed format (atomically, `registry/writers.py`), register it
(`registry.scanner.scan` of that one checkpoint) and queue its evaluation (`register_and_enqueue`).
Nothing else: evaluation runs in workers (`evalboard worker`), so a save costs the training process
one small write and a few registry statements (`benchmarks/callback_save.py` measures it).

A registry that cannot be reached does not stop training: the save is kept as an ``error`` event
and retried by `Publisher.retry_failed` (the callbacks call it when training ends). Bad settings
(an unknown eval set, a run folder holding another token space) fail in `Publisher.open`, before
the first training step.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from registry.atomic import write_file
from registry.errors import EvalboardError, Incompatible, InvalidInput
from registry.settings import Settings
from registry.store import Registry
from registry.token_space import TokenSpace
from registry.trainable_rows import TOKEN_SPACE_FILENAME

__all__ = [
    "SaveEvent",
    "Queued",
    "RowsFormat",
    "ConnectorFormat",
    "Publisher",
    "checkpoint_format",
    "register_and_enqueue",
    "active_mlflow_run",
]

log = logging.getLogger("evalboard.integrations")


@dataclass(frozen=True)
class SaveEvent:
    """What happened to one saved checkpoint."""

    step: int
    path: str
    action: str
    """'enqueued', 'already-queued' (this content was queued before), 'already-evaluated' (a
    result for this content reached MLflow; not queued again), 'invalid' (registered as
    invalid, with its reason), 'refused' (the audit refuses it on the eval set) or 'error' (the
    registry failed; retried at train end)."""
    detail: str = ""
    checkpoint_id: int | None = None
    job_id: int | None = None
    write_seconds: float = 0.0
    registry_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        """Time the save took on the training process."""
        return self.write_seconds + self.registry_seconds


@dataclass(frozen=True)
class Queued:
    action: str
    detail: str = ""
    checkpoint_id: int | None = None
    job_id: int | None = None


def register_and_enqueue(
    reg: Registry,
    path: str | Path,
    evalset,
    *,
    models: Mapping[str, str] | None = None,
    max_attempts: int = 3,
    options: Mapping[str, Any] | None = None,
    priority: int = 0,
) -> Queued:
    """Register a checkpoint a training process just wrote, then apply the enqueue policy
    (`registry.policy`): skip it when invalid, refused by the audit on ``evalset`` or already
    evaluated, else queue it (once per content: a second call for the same bytes returns the
    first job)."""
    from registry.policy import enqueue_checkpoints
    from registry.scanner import scan

    scan(reg, [path])
    ck = reg.get_checkpoint(path=os.path.realpath(path))
    if not ck.is_valid:
        return Queued("invalid", ck.reason or "invalid", ck.id)
    (d,) = enqueue_checkpoints(
        reg, [ck], evalset, models=models, max_attempts=max_attempts, options=dict(options or {}), priority=priority
    )
    return Queued(d.action, d.detail, ck.id, d.job.id if d.job is not None else None)


def active_mlflow_run() -> tuple[str, str] | None:
    """(run id, experiment id) of the MLflow run active in this process, if the training uses
    MLflow (imported and a run started, e.g. by the Trainer's MLflowCallback); never imports it."""
    mlflow = sys.modules.get("mlflow")
    run = mlflow.active_run() if mlflow is not None else None
    return (run.info.run_id, run.info.experiment_id) if run is not None else None


class CheckpointFormat(Protocol):
    def prepare(self, run_dir: Path) -> None:
        """Check or write what the run folder needs, before training starts."""

    def for_workers(self, model: Any, settings: Settings) -> CheckpointFormat:
        """This format with the models it names as workers know them (`Settings.model_id_for`):
        raises, before anything is written, when a worker could not load one."""

    def path(self, run_dir: Path, step: int) -> Path: ...

    def write(self, model: Any, path: Path, step: int) -> Path: ...


@dataclass(frozen=True)
class RowsFormat:
    """Track B: ``checkpoint_<step>/`` with the model's rows ``[text_vocab_size, vocab_size_total)``
    of the input embedding and lm_head (`registry.writers.save_rows_of_model`)."""

    token_space: TokenSpace
    base_model: str | None = None
    """The frozen base's id as workers know it (default: the id the model was loaded from)."""
    fmt: str = "safetensors"
    trainer: Mapping[str, Any] | None = None
    """Training settings recorded in trainable_rows.json (the dashboard shows them)."""

    def for_workers(self, model: Any, settings: Settings) -> RowsFormat:
        named = self.base_model or getattr(getattr(model, "config", None), "_name_or_path", None)
        if not named:
            raise InvalidInput(
                "the model names no base (its config has no _name_or_path): pass base_model='<id>' to the callback"
            )
        return replace(self, base_model=settings.model_id_for(str(named)))

    def prepare(self, run_dir: Path) -> None:
        """The run-level token_space.json: written when absent, and must agree when present."""
        existing = run_dir / TOKEN_SPACE_FILENAME
        if existing.exists():
            if TokenSpace.load(existing).abi_hash != self.token_space.abi_hash:
                raise Incompatible(
                    "holds a token space with another ABI than this training's; save into another run folder",
                    path=existing,
                )
            return
        write_file(existing, json.dumps(self.token_space.to_dict(), indent=2) + "\n", overwrite=False)

    def path(self, run_dir: Path, step: int) -> Path:
        return run_dir / f"checkpoint_{step}"

    def write(self, model: Any, path: Path, step: int) -> Path:
        from registry.writers import save_rows_of_model

        return save_rows_of_model(
            model,
            path,
            self.token_space,
            base_model=self.base_model,
            step=step,
            fmt=self.fmt,
            trainer=self.trainer,
            overwrite=True,
        )


@dataclass(frozen=True)
class ConnectorFormat:
    """Track A: ``checkpoint_<step>.pt`` with the connector's weights (`registry.writers.save_connector`)."""

    connector: Callable[[Any], Any]
    """Model -> the connector module (e.g. ``lambda model: model.connector``)."""
    base_llm: str
    vision_tower: str
    config: Mapping[str, Any] = field(default_factory=dict)
    """``connector_builder``, ``num_heads``, ``vision_feature_layer``, ...: what rebuilds and feeds it."""

    def prepare(self, run_dir: Path) -> None:
        return None

    def for_workers(self, model: Any, settings: Settings) -> ConnectorFormat:
        return replace(
            self,
            base_llm=settings.model_id_for(self.base_llm, what="the connector's base LLM"),
            vision_tower=settings.model_id_for(self.vision_tower, what="the vision tower"),
        )

    def path(self, run_dir: Path, step: int) -> Path:
        return run_dir / f"checkpoint_{step}.pt"

    def write(self, model: Any, path: Path, step: int) -> Path:
        from registry.writers import save_connector

        return save_connector(
            path,
            self.connector(model),
            step=step,
            base_llm=self.base_llm,
            vision_tower=self.vision_tower,
            config=self.config,
            overwrite=True,
        )


def checkpoint_format(
    owner: str,
    token_space: TokenSpace | str | Path | None,
    format: CheckpointFormat | None,
    *,
    base_model: str | None = None,
    rows_format: str = "safetensors",
    trainer_settings: Mapping[str, Any] | None = None,
) -> CheckpointFormat:
    """What a training callback writes: ``format`` as given, or the rows of ``token_space`` (a
    `TokenSpace` or its JSON file); exactly one of the two. ``owner`` names the callback in errors."""
    if (token_space is None) == (format is None):
        raise InvalidInput(
            f"{owner}: give token_space (trainable rows) or format= (e.g. a ConnectorFormat), exactly one"
        )
    if format is not None:
        return format
    assert token_space is not None
    space = token_space if isinstance(token_space, TokenSpace) else TokenSpace.load(token_space)
    return RowsFormat(space, base_model=base_model, fmt=rows_format, trainer=trainer_settings)


@dataclass
class Publisher:
    """Saves one training run's checkpoints into ``run_dir`` and queues each on ``evalset``."""

    run_dir: Path
    evalset: str
    """A registered eval set's name, or a path to one (registered on the fly)."""
    format: CheckpointFormat
    settings: Settings | None = None
    """Registry, MLflow and models (default: `Settings.from_env()`, the workspace's)."""
    max_examples: int | None = None
    priority: int = 0
    max_attempts: int = 3
    training_run: tuple[str, str] | None = None
    """The training's MLflow (run id, experiment id) when known without an active fluent run
    (Lightning's MLFlowLogger); else the run active at each save is used."""
    events: list[SaveEvent] = field(default_factory=list)
    _reg: Registry | None = field(default=None, init=False, repr=False)
    _es: Any = field(default=None, init=False, repr=False)
    _linked: tuple[str, str] | None = field(default=None, init=False, repr=False)
    _writes: CheckpointFormat | None = field(default=None, init=False, repr=False)

    def open(self) -> None:
        """Connect, find the eval set and prepare the run folder: raises before training starts."""
        from evalboard.cli_common import resolve_evalset

        if self._reg is not None:
            return
        self.settings = self.settings or Settings.from_env()
        self.run_dir = Path(os.path.realpath(self.run_dir))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.format.prepare(self.run_dir)
        self._reg = Registry(self.settings.db_url)
        try:
            self._es = resolve_evalset(self._reg, self.evalset)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._reg is not None:
            self._reg.close()
            self._reg = None

    @property
    def saved_steps(self) -> set[int]:
        return {e.step for e in self.events}

    def save(self, model: Any, step: int) -> SaveEvent:
        """Write the checkpoint of ``step``, register it and queue it. The first save checks that
        workers can load the models the checkpoint names (a base loaded from a local folder is
        recorded under the id the models mapping gives it), and raises before writing if not."""
        self.open()
        assert self.settings is not None
        if self._writes is None:
            self._writes = self.format.for_workers(model, self.settings)
        start = time.perf_counter()
        path = self._writes.write(model, self._writes.path(self.run_dir, step), step)
        written = time.perf_counter()
        event = self._queue(step, path, written - start)
        self.events = [e for e in self.events if e.step != step] + [event]
        return event

    def retry_failed(self) -> list[SaveEvent]:
        """Register and queue again the saves whose registry calls failed."""
        retried = [self._queue(e.step, Path(e.path), e.write_seconds) for e in self.events if e.action == "error"]
        steps = {e.step for e in retried}
        self.events = [e for e in self.events if e.step not in steps] + retried
        return retried

    def link_training_run(self, current: tuple[str, str] | None = None) -> None:
        """Record the training's MLflow run ``(run id, experiment id)`` (default: the run active
        in this process) on the evalboard run, once per run id."""
        current = current or active_mlflow_run() or self._linked
        if current is None or current == self._linked:
            return
        try:
            run = self._reg.upsert_run(path=str(self.run_dir), name=self.run_dir.name)
            self._reg.link_training_run(run.id, mlflow_run_id=current[0], mlflow_experiment_id=current[1])
            self._linked = current
        except EvalboardError as e:
            log.warning("could not record the training's MLflow run %s: %s", current[0], e)

    def _queue(self, step: int, path: Path, write_seconds: float) -> SaveEvent:
        start = time.perf_counter()
        options = {"max_examples": self.max_examples} if self.max_examples else {}
        try:
            self.link_training_run(self.training_run)
            q = register_and_enqueue(
                self._reg,
                path,
                self._es,
                models=self.settings.models,
                max_attempts=self.max_attempts,
                options=options,
                priority=self.priority,
            )
        except EvalboardError as e:
            q = Queued("error", str(e))
        event = SaveEvent(
            step, str(path), q.action, q.detail, q.checkpoint_id, q.job_id, write_seconds, time.perf_counter() - start
        )
        level = logging.INFO if q.action in ("enqueued", "already-queued", "already-evaluated") else logging.WARNING
        log.log(
            level,
            "step %d: %s %s%s",
            step,
            event.action,
            path,
            f": {event.detail}" if event.detail else f" (job {event.job_id})",
        )
        return event

"""Plain, immutable copies of registry rows: what `Registry` returns instead of ORM objects.

Field names equal column names (see `registry/models.py`), so the store converts rows
generically. Timestamps are timezone-aware UTC. Returning copies means a caller can hold an
entity after its session closed, and cannot change the database by mutating it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

__all__ = [
    "TokenSpaceEntity",
    "RunEntity",
    "CheckpointEntity",
    "EvalSetEntity",
    "EvalResultEntity",
    "RowStatsEntity",
    "EvalJobEntity",
    "WorkerEntity",
    "CheckpointRow",
    "ResultRow",
    "JobRow",
]


@dataclass(frozen=True, slots=True)
class TokenSpaceEntity:
    id: int
    abi_hash: str
    text_vocab_size: int
    vocab_size_total: int
    spec: dict[str, Any]
    codec_versions: dict[str, Any]
    tokenizer_version: str | None
    first_path: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RunEntity:
    id: int
    name: str
    path: str
    track: str
    base_model: str | None
    token_space_id: int | None
    token_space_path: str | None
    created_at: datetime
    updated_at: datetime
    training_mlflow_run_id: str | None = None
    training_mlflow_experiment_id: str | None = None


@dataclass(frozen=True, slots=True)
class CheckpointEntity:
    id: int
    run_id: int
    path: str
    step: int | None
    track: str
    status: str
    reason: str | None
    content_hash: str | None
    files: list[dict[str, Any]]
    base_model: str | None
    token_space_id: int | None
    has_token_space: bool
    row_start: int | None
    row_end: int | None
    meta: dict[str, Any]
    registered_at: datetime
    updated_at: datetime

    @property
    def is_valid(self) -> bool:
        return self.status == "valid"


@dataclass(frozen=True, slots=True)
class EvalSetEntity:
    id: int
    name: str
    path: str
    content_hash: str
    token_space_hash: str | None
    manifest: dict[str, Any]
    tasks: dict[str, dict[str, int]]
    n_examples: int
    files: list[dict[str, Any]]
    registered_at: datetime


@dataclass(frozen=True, slots=True)
class EvalResultEntity:
    id: int
    checkpoint_id: int | None
    run_id: int | None
    evalset_id: int | None
    evalset_hash: str | None
    checkpoint_hash: str | None
    step: int | None
    source: str
    loss_all: float | None
    metrics: dict[str, dict[str, float]]
    mlflow_run_id: str | None
    path: str | None
    extra: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RowStatsEntity:
    id: int
    checkpoint_id: int
    stats: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class EvalJobEntity:
    id: int
    checkpoint_id: int
    evalset_id: int
    dedupe_key: str
    status: str
    priority: int
    attempts: int
    max_attempts: int
    lease_expires_at: datetime | None
    fencing_token: int
    worker_id: str | None
    enqueued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    mlflow_run_id: str | None
    last_error: str | None
    result: dict[str, Any] | None
    outbox_state: str
    options: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WorkerEntity:
    worker_id: str
    first_seen: datetime
    last_seen: datetime
    expires_at: datetime


# -- the rows of the read-only tables the dashboard draws (one query each) ---------------------


class CheckpointRow(NamedTuple):
    """One checkpoint as `Registry.checkpoint_table` lists it."""

    checkpoint_id: int
    run_id: int
    step: int | None
    track: str
    status: str
    reason: str | None
    path: str
    content_hash: str | None
    base_model: str | None
    token_space_id: int | None
    row_start: int | None
    row_end: int | None
    registered_at: datetime
    size_bytes: int


class ResultRow(NamedTuple):
    """One eval result as `Registry.result_table` lists it (on the checkpoint that shows it)."""

    result_id: int
    run_id: int | None
    checkpoint_id: int | None
    step: int | None
    evalset_id: int | None
    source: str
    metrics: dict[str, Any]
    extra: dict[str, Any]
    mlflow_run_id: str | None
    created_at: datetime


class JobRow(NamedTuple):
    """One eval job as `Registry.job_table` lists it, with its run's and eval set's names."""

    job_id: int
    status: str
    run: str | None
    step: int | None
    evalset: str | None
    worker: str | None
    attempts: int
    max_attempts: int
    enqueued_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    last_error: str | None
    mlflow_run_id: str | None
    checkpoint_id: int | None
    evalset_id: int | None

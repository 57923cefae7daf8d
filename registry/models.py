"""SQLAlchemy ORM tables of the registry. Only `registry/store/` touches these rows.

`registry/migrations/versions/*.py` create exactly these tables, written by hand;
`tests/registry/test_migrations.py` fails when the two drift apart. Constraint names come from
one naming convention so that SQLite and PostgreSQL agree and batch migrations can find them.

Timestamps are `DateTime(timezone=True)` holding UTC; SQLite drops the offset when storing, so
the store re-attaches UTC when it turns rows into entities.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    false,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Base",
    "TokenSpace",
    "Run",
    "Checkpoint",
    "EvalSet",
    "EvalResult",
    "RowStats",
    "EvalJob",
    "Worker",
    "RUN_TRACKS",
    "CHECKPOINT_TRACKS",
    "CHECKPOINT_STATUSES",
    "RESULT_SOURCES",
    "JOB_STATUSES",
    "OUTBOX_STATES",
]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

RUN_TRACKS = ("A", "B", "mixed", "unknown")
CHECKPOINT_TRACKS = ("A", "B")
CHECKPOINT_STATUSES = ("valid", "invalid")
RESULT_SOURCES = ("evaluator", "import")
JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled")
OUTBOX_STATES = ("none", "pending", "logged")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _one_of(column: str, values: tuple[str, ...]) -> CheckConstraint:
    allowed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=column)


def _created() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), default=utcnow, server_default=func.now())


def _updated() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow, server_default=func.now())


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class TokenSpace(Base):
    """One token-space ABI, identified by its canonical hash; many files may share it."""

    __tablename__ = "token_spaces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    abi_hash: Mapped[str] = mapped_column(String(64), unique=True)
    text_vocab_size: Mapped[int] = mapped_column(Integer)
    vocab_size_total: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    codec_versions: Mapped[dict[str, Any]] = mapped_column(JSON)
    tokenizer_version: Mapped[str | None] = mapped_column(String)
    first_path: Mapped[str] = mapped_column(String)
    created_at: Mapped[datetime] = _created()


class Run(Base):
    """A training output folder holding checkpoints (and maybe a run-level token_space.json)."""

    __tablename__ = "runs"
    __table_args__ = (_one_of("track", RUN_TRACKS),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String)
    path: Mapped[str] = mapped_column(String, unique=True)
    track: Mapped[str] = mapped_column(String(16), default="unknown", server_default="unknown")
    base_model: Mapped[str | None] = mapped_column(String)
    token_space_id: Mapped[int | None] = mapped_column(ForeignKey("token_spaces.id", ondelete="SET NULL"))
    token_space_path: Mapped[str | None] = mapped_column(String)
    training_mlflow_run_id: Mapped[str | None] = mapped_column(String)
    """The MLflow run of the training that wrote the checkpoints (set by the training callbacks)."""
    training_mlflow_experiment_id: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class Checkpoint(Base):
    """A checkpoint folder (Track B) or file (Track A), valid or not; invalid ones say why."""

    __tablename__ = "checkpoints"
    __table_args__ = (
        _one_of("track", CHECKPOINT_TRACKS),
        _one_of("status", CHECKPOINT_STATUSES),
        Index(None, "run_id", "step"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String, unique=True)
    step: Mapped[int | None] = mapped_column(Integer)
    track: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    content_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    files: Mapped[list[Any]] = mapped_column(JSON)
    base_model: Mapped[str | None] = mapped_column(String)
    token_space_id: Mapped[int | None] = mapped_column(ForeignKey("token_spaces.id", ondelete="SET NULL"))
    has_token_space: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    row_start: Mapped[int | None] = mapped_column(Integer)
    row_end: Mapped[int | None] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    registered_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _updated()


class EvalSet(Base):
    """A tokenized eval set; its content hash is what results and jobs refer to."""

    __tablename__ = "evalsets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    path: Mapped[str] = mapped_column(String)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    token_space_hash: Mapped[str | None] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    tasks: Mapped[dict[str, Any]] = mapped_column(JSON)
    n_examples: Mapped[int] = mapped_column(Integer)
    files: Mapped[list[Any]] = mapped_column(JSON)
    registered_at: Mapped[datetime] = _created()


class EvalResult(Base):
    """Losses of one checkpoint on one eval set. Hashes are kept so a result outlives its rows
    (a deleted checkpoint nulls the foreign key, not the result); re-evaluation adds a row."""

    __tablename__ = "eval_results"
    __table_args__ = (
        _one_of("source", RESULT_SOURCES),
        Index(None, "checkpoint_hash", "evalset_hash", "source"),
        Index(None, "run_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    checkpoint_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id", ondelete="SET NULL"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    evalset_id: Mapped[int | None] = mapped_column(ForeignKey("evalsets.id", ondelete="SET NULL"))
    evalset_hash: Mapped[str | None] = mapped_column(String(64))
    checkpoint_hash: Mapped[str | None] = mapped_column(String(64))
    step: Mapped[int | None] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))
    loss_all: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    mlflow_run_id: Mapped[str | None] = mapped_column(String)
    path: Mapped[str | None] = mapped_column(String)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = _created()


class RowStats(Base):
    """Row-norm statistics of one checkpoint (computed once; replaced on recompute)."""

    __tablename__ = "row_stats"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"), unique=True)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = _created()


class EvalJob(Base):
    """One evaluation to run. `fencing_token` and the lease let `registry/queue.py` reject a
    worker that lost its lease; `result` + `outbox_state` keep a computed result until it is
    logged to MLflow, so a crash between computing and logging loses nothing."""

    __tablename__ = "eval_jobs"
    __table_args__ = (
        _one_of("status", JOB_STATUSES),
        _one_of("outbox_state", OUTBOX_STATES),
        Index(None, "status", "priority"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    checkpoint_id: Mapped[int] = mapped_column(ForeignKey("checkpoints.id", ondelete="CASCADE"))
    evalset_id: Mapped[int] = mapped_column(ForeignKey("evalsets.id", ondelete="CASCADE"))
    dedupe_key: Mapped[str] = mapped_column(String, index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued", server_default="queued")
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    fencing_token: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    worker_id: Mapped[str | None] = mapped_column(String)
    enqueued_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    duration_s: Mapped[float | None] = mapped_column(Float)
    mlflow_run_id: Mapped[str | None] = mapped_column(String)
    last_error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    outbox_state: Mapped[str] = mapped_column(String(16), default="none", server_default="none")
    options: Mapped[dict[str, Any]] = mapped_column(JSON)


class Worker(Base):
    """A worker's last sign of life: each claim attempt (also when the queue is empty) and each
    job heartbeat moves `expires_at` to now + its lease, by the database's clock. Rows whose
    `expires_at` passed are workers that stopped or died; nothing depends on them being removed."""

    __tablename__ = "workers"

    worker_id: Mapped[str] = mapped_column(String, primary_key=True)
    first_seen: Mapped[datetime] = _created()
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

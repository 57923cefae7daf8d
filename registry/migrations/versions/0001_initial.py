"""Initial registry schema: token spaces, runs, checkpoints, eval sets, results, row stats, jobs.

Written by hand to match `registry/models.py`; constraint names follow its naming convention.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _ts(name: str, *, nullable: bool = False, server_now: bool = True) -> sa.Column:
    default = sa.func.now() if server_now else None
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=default)


def _one_of(table: str, column: str, values: tuple[str, ...]) -> sa.CheckConstraint:
    allowed = ", ".join(f"'{v}'" for v in values)
    # op.f(): the name is final; without it the naming convention would prefix it again.
    return sa.CheckConstraint(f"{column} IN ({allowed})", name=op.f(f"ck_{table}_{column}"))


def upgrade() -> None:
    op.create_table(
        "token_spaces",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("abi_hash", sa.String(64), nullable=False),
        sa.Column("text_vocab_size", sa.Integer(), nullable=False),
        sa.Column("vocab_size_total", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("codec_versions", sa.JSON(), nullable=False),
        sa.Column("tokenizer_version", sa.String(), nullable=True),
        sa.Column("first_path", sa.String(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_token_spaces"),
        sa.UniqueConstraint("abi_hash", name="uq_token_spaces_abi_hash"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("track", sa.String(16), nullable=False, server_default="unknown"),
        sa.Column("base_model", sa.String(), nullable=True),
        sa.Column("token_space_id", sa.Integer(), nullable=True),
        sa.Column("token_space_path", sa.String(), nullable=True),
        _ts("created_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
        sa.UniqueConstraint("path", name="uq_runs_path"),
        sa.ForeignKeyConstraint(
            ["token_space_id"],
            ["token_spaces.id"],
            name="fk_runs_token_space_id_token_spaces",
            ondelete="SET NULL",
        ),
        _one_of("runs", "track", ("A", "B", "mixed", "unknown")),
    )
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("track", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("base_model", sa.String(), nullable=True),
        sa.Column("token_space_id", sa.Integer(), nullable=True),
        sa.Column("has_token_space", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("row_start", sa.Integer(), nullable=True),
        sa.Column("row_end", sa.Integer(), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=False),
        _ts("registered_at"),
        _ts("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_checkpoints"),
        sa.UniqueConstraint("path", name="uq_checkpoints_path"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_checkpoints_run_id_runs", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["token_space_id"],
            ["token_spaces.id"],
            name="fk_checkpoints_token_space_id_token_spaces",
            ondelete="SET NULL",
        ),
        _one_of("checkpoints", "track", ("A", "B")),
        _one_of("checkpoints", "status", ("valid", "invalid")),
    )
    op.create_index("ix_checkpoints_run_id_step", "checkpoints", ["run_id", "step"])
    op.create_index("ix_checkpoints_content_hash", "checkpoints", ["content_hash"])

    op.create_table(
        "evalsets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("path", sa.String(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("token_space_hash", sa.String(64), nullable=True),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("tasks", sa.JSON(), nullable=False),
        sa.Column("n_examples", sa.Integer(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        _ts("registered_at"),
        sa.PrimaryKeyConstraint("id", name="pk_evalsets"),
        sa.UniqueConstraint("name", name="uq_evalsets_name"),
        sa.UniqueConstraint("content_hash", name="uq_evalsets_content_hash"),
    )
    op.create_table(
        "eval_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("checkpoint_id", sa.Integer(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("evalset_id", sa.Integer(), nullable=True),
        sa.Column("evalset_hash", sa.String(64), nullable=True),
        sa.Column("checkpoint_hash", sa.String(64), nullable=True),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("loss_all", sa.Float(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("mlflow_run_id", sa.String(), nullable=True),
        sa.Column("path", sa.String(), nullable=True),
        sa.Column("extra", sa.JSON(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_eval_results"),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["checkpoints.id"],
            name="fk_eval_results_checkpoint_id_checkpoints",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_eval_results_run_id_runs", ondelete="SET NULL"),
        sa.ForeignKeyConstraint(
            ["evalset_id"],
            ["evalsets.id"],
            name="fk_eval_results_evalset_id_evalsets",
            ondelete="SET NULL",
        ),
        _one_of("eval_results", "source", ("evaluator", "import")),
    )
    op.create_index(
        "ix_eval_results_checkpoint_hash_evalset_hash_source",
        "eval_results",
        ["checkpoint_hash", "evalset_hash", "source"],
    )
    op.create_index("ix_eval_results_run_id", "eval_results", ["run_id"])

    op.create_table(
        "row_stats",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("checkpoint_id", sa.Integer(), nullable=False),
        sa.Column("stats", sa.JSON(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_row_stats"),
        sa.UniqueConstraint("checkpoint_id", name="uq_row_stats_checkpoint_id"),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["checkpoints.id"],
            name="fk_row_stats_checkpoint_id_checkpoints",
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "eval_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("checkpoint_id", sa.Integer(), nullable=False),
        sa.Column("evalset_id", sa.Integer(), nullable=False),
        sa.Column("dedupe_key", sa.String(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("priority", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer(), nullable=False, server_default="3"),
        _ts("lease_expires_at", nullable=True, server_now=False),
        sa.Column("fencing_token", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("worker_id", sa.String(), nullable=True),
        _ts("enqueued_at"),
        _ts("started_at", nullable=True, server_now=False),
        _ts("finished_at", nullable=True, server_now=False),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("mlflow_run_id", sa.String(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("outbox_state", sa.String(16), nullable=False, server_default="none"),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_eval_jobs"),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["checkpoints.id"],
            name="fk_eval_jobs_checkpoint_id_checkpoints",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["evalset_id"],
            ["evalsets.id"],
            name="fk_eval_jobs_evalset_id_evalsets",
            ondelete="CASCADE",
        ),
        _one_of("eval_jobs", "status", ("queued", "running", "done", "failed", "cancelled")),
        _one_of("eval_jobs", "outbox_state", ("none", "pending", "logged")),
    )
    op.create_index("ix_eval_jobs_dedupe_key", "eval_jobs", ["dedupe_key"])
    op.create_index("ix_eval_jobs_status_priority", "eval_jobs", ["status", "priority"])


def downgrade() -> None:
    for table in ("eval_jobs", "row_stats", "eval_results", "evalsets", "checkpoints", "runs", "token_spaces"):
        op.drop_table(table)

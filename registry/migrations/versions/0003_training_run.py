"""The MLflow run of the training behind a run: the training callbacks (evalboard/integrations)
record it, so eval results link to the training curves (dashboard Runs page, MLflow tags).

Revision ID: 0003
Revises: 0002
Create Date: 2025-03-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("training_mlflow_run_id", sa.String(), nullable=True))
        batch.add_column(sa.Column("training_mlflow_experiment_id", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("training_mlflow_experiment_id")
        batch.drop_column("training_mlflow_run_id")

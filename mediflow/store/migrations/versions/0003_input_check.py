"""the input check: its verdict on each study, and a table of refused uploads (no pixels)

Studies saved before this revision have no verdict (NULL): the check did not exist yet.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mediflow.store.models import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:  # batch: SQLite cannot ALTER every column type in place
        batch.add_column(sa.Column("input_check", sa.JSON(), nullable=True))
    op.create_table(
        "refused_inputs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("image_sha256", sa.String(64), nullable=False),
        sa.Column("source_format", sa.String(16), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("input_check", sa.JSON(), nullable=False),
        sa.Column("model_sha256", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    for col in ("received_at", "image_sha256"):
        op.create_index(op.f(f"ix_refused_inputs_{col}"), "refused_inputs", [col])


def downgrade() -> None:
    for col in ("received_at", "image_sha256"):
        op.drop_index(op.f(f"ix_refused_inputs_{col}"), table_name="refused_inputs")
    op.drop_table("refused_inputs")
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("input_check")

"""the DICOM node: received instances (the analysis queue), result objects to deliver, and the
identifiers a reader needs to find a DICOM study in the PACS

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from mediflow.store.models import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

STUDY_COLUMNS = (("accession_number", 64), ("study_date", 8), ("modality", 16))


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        for name, length in STUDY_COLUMNS:
            batch.add_column(sa.Column(name, sa.String(length), nullable=True))
    op.create_table(
        "dicom_instances",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("calling_ae", sa.String(16), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=True),
        sa.Column("accession_number", sa.String(64), nullable=True),
        sa.Column("study_date", sa.String(8), nullable=True),
        sa.Column("modality", sa.String(16), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("data", sa.LargeBinary(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(64), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("study_id", sa.Uuid(), nullable=True),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sop_instance_uid"),
    )
    for col in ("received_at", "study_instance_uid", "state"):
        op.create_index(op.f(f"ix_dicom_instances_{col}"), "dicom_instances", [col])
    op.create_table(
        "dicom_results",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("instance_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(64), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("sent_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["instance_id"], ["dicom_instances.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sop_instance_uid"),
    )
    for col in ("instance_id", "state"):
        op.create_index(op.f(f"ix_dicom_results_{col}"), "dicom_results", [col])


def downgrade() -> None:
    for col in ("instance_id", "state"):
        op.drop_index(op.f(f"ix_dicom_results_{col}"), table_name="dicom_results")
    op.drop_table("dicom_results")
    for col in ("received_at", "study_instance_uid", "state"):
        op.drop_index(op.f(f"ix_dicom_instances_{col}"), table_name="dicom_instances")
    op.drop_table("dicom_instances")
    with op.batch_alter_table("studies") as batch:
        for name, _ in STUDY_COLUMNS:
            batch.drop_column(name)

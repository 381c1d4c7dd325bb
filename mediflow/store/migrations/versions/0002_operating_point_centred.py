"""studies: the calibrated operating point, and stored findings re-expressed on the centred scale

Before this revision a two-class study stored calibrated probabilities beside a call made at the
model's threshold t (e.g. "NORMAL, confidence 0.068" with P(PNEUMONIA) 0.93 < t 0.937). From this
revision on, findings report p' = sigmoid(logit(p) - logit(t)), which puts the operating point at
0.5 (mediflow/decision.py). Old rows are rewritten the same way, so that the worklist shows one
scale and sorts old and new studies together: the call is kept as stored (it was made by the same
rule), probabilities/confidence/priority/margin are re-expressed, `threshold` becomes 0.5 and the
old value moves to `calibrated_threshold`, and the review flag is recomputed as confidence < 0.70
(the default cut-off; the cut-off a server ran with is not stored). Multi-class rows and rows
without a threshold are unchanged. The rewrite is inverted exactly (up to the stored 4 decimals) by
the downgrade.

Revision ID: 0002
Revises: 0001
Create Date: 2026-02-10
"""
from __future__ import annotations

import math

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

POSITIVE = "PNEUMONIA"  # the only positive class name MediFlow models have used
REVIEW_BELOW = 0.70
EPS = 1e-12

studies = sa.table(
    "studies",
    sa.column("id", sa.Uuid()), sa.column("prediction", sa.String()), sa.column("confidence", sa.Float()),
    sa.column("probabilities", sa.JSON()), sa.column("threshold", sa.Float()),
    sa.column("calibrated_threshold", sa.Float()), sa.column("needs_review", sa.Boolean()),
    sa.column("priority", sa.Float()), sa.column("margin", sa.Float()),
)


def _logit(p: float) -> float:
    p = min(max(p, EPS), 1 - EPS)
    return math.log(p) - math.log1p(-p)


def _sigmoid(z: float) -> float:
    return 0.5 * (1.0 + math.tanh(0.5 * z))


def _rewrite(row, shift_sign: int) -> dict | None:
    """New column values for one two-class row: shift_sign -1 centres (upgrade), +1 un-centres."""
    probs = dict(row.probabilities or {})
    t = row.threshold if shift_sign < 0 else row.calibrated_threshold
    if t is None or len(probs) != 2 or POSITIVE not in probs:
        return None
    (neg,) = [k for k in probs if k != POSITIVE]
    q = _sigmoid(_logit(float(probs[POSITIVE])) + shift_sign * _logit(float(t)))
    cut = 0.5 if shift_sign < 0 else float(t)
    # Keep the stored call: rounding of the stored 4-decimal values must not move q across the cut.
    if row.prediction == POSITIVE:
        q = max(q, cut)
    else:
        q = min(q, math.nextafter(cut, 0.0))
    shown = {POSITIVE: round(q, 4), neg: round(1 - q, 4)}
    if row.prediction != POSITIVE and shown[POSITIVE] >= round(cut, 4):  # as DecisionRule.finding
        shown = {POSITIVE: round(cut - 1e-4, 4), neg: round(1 - cut + 1e-4, 4)}
    confidence = shown[row.prediction] if row.prediction in shown else row.confidence
    return {"probabilities": {k: shown[k] for k in probs}, "confidence": confidence,
            "needs_review": confidence < REVIEW_BELOW, "priority": shown[POSITIVE], "margin": abs(q - cut),
            "threshold": 0.5 if shift_sign < 0 else float(t),
            "calibrated_threshold": float(t) if shift_sign < 0 else None}


def _migrate(shift_sign: int) -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(studies)).all()
    for row in rows:
        new = _rewrite(row, shift_sign)
        if new is not None:
            bind.execute(studies.update().where(studies.c.id == row.id).values(**new))


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        batch.add_column(sa.Column("calibrated_threshold", sa.Float(), nullable=True))
    _migrate(-1)


def downgrade() -> None:
    _migrate(+1)
    with op.batch_alter_table("studies") as batch:
        batch.drop_column("calibrated_threshold")

"""Decision records: hook calls, per-order decisions with their criteria trace, card feedback.

Revision ID: 0001
Revises:
Create Date: 2026-11-01
"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hook_calls",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("hook_instance", sa.String(128)),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("hook", sa.String(64)),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("elapsed_ms", sa.Float),
        sa.Column("client", sa.String(256)),
        sa.Column("tenant", sa.String(128)),
        sa.Column("orders", sa.Integer, nullable=False),
        sa.Column("fhir_queries", sa.Integer),
        sa.Column("fhir_errors", sa.Integer),
        sa.Column("fhir_ms", sa.Float),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_hook_calls"),
    )
    op.create_index("ix_hook_calls_hook_instance", "hook_calls", ["hook_instance"])
    op.create_index("ix_hook_calls_received_at", "hook_calls", ["received_at"])

    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("call_id", sa.String(36), nullable=False),
        sa.Column("hook_instance", sa.String(128)),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("order_ref", sa.String(256)),
        sa.Column("code", sa.String(64)),
        sa.Column("codes", sa.JSON, nullable=False),
        sa.Column("payer", sa.String(64)),
        sa.Column("policy", sa.String(64)),
        sa.Column("revision", sa.String(64)),
        sa.Column("determination", sa.String(40), nullable=False),
        sa.Column("t0", sa.String(10)),
        sa.Column("r", sa.String(10)),
        sa.Column("episode_of", sa.String(256)),
        sa.Column("advisories", sa.JSON, nullable=False),
        sa.Column("deciding", sa.JSON, nullable=False),
        sa.Column("criteria", sa.JSON, nullable=False),
        sa.Column("card_uuid", sa.String(64)),
        sa.Column("coverage_assertion_id", sa.String(128)),
        sa.Column("fhir_queries", sa.Integer),
        sa.Column("fhir_errors", sa.Integer),
        sa.ForeignKeyConstraint(["call_id"], ["hook_calls.id"], name="fk_decisions_call_id_hook_calls", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_decisions"),
    )
    for col in ("call_id", "hook_instance", "received_at", "payer", "policy", "determination", "card_uuid"):
        op.create_index(f"ix_decisions_{col}", "decisions", [col])

    op.create_table(
        "feedback",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("card_uuid", sa.String(128), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("accepted_suggestions", sa.JSON, nullable=False),
        sa.Column("override_system", sa.String(256)),
        sa.Column("override_code", sa.String(128)),
        sa.Column("override_display", sa.String(256)),
        sa.Column("has_comment", sa.Boolean, nullable=False),
        sa.Column("outcome_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client", sa.String(256)),
        sa.Column("tenant", sa.String(128)),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
    )
    for col in ("card_uuid", "outcome", "received_at"):
        op.create_index(f"ix_feedback_{col}", "feedback", [col])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("decisions")
    op.drop_table("hook_calls")

"""Tables of the decision store (SQLAlchemy Core). Change them only with a new Alembic revision.

Nothing here holds patient names or other free-text patient data: codes, policy and criterion IDs,
truth values, FHIR references (``Type/id``), card uuids and counts. ``decisions.criteria`` also keeps,
per node, what the card detail showed of it (engine-written evidence descriptions: resource, value,
unit, date; resolution; note), with birth dates withheld, for the console's decision page
(``recorder.shown_text``); the JSON API leaves them out.
"""
from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# One row per hook call (including refused ones), keyed by a uuid made when the call was recorded:
# a retried write of the same record is recognised and skipped, never doubled.
hook_calls = sa.Table(
    "hook_calls",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("hook_instance", sa.String(128), index=True),
    sa.Column("service", sa.String(64), nullable=False),
    sa.Column("hook", sa.String(64)),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("elapsed_ms", sa.Float),
    sa.Column("client", sa.String(256)),
    sa.Column("tenant", sa.String(128)),
    sa.Column("orders", sa.Integer, nullable=False, default=0),
    sa.Column("fhir_queries", sa.Integer),
    sa.Column("fhir_errors", sa.Integer),
    sa.Column("fhir_ms", sa.Float),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)

# One row per evaluated order of a hook call.
decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("call_id", sa.String(36), sa.ForeignKey("hook_calls.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("hook_instance", sa.String(128), index=True),
    sa.Column("service", sa.String(64), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("order_ref", sa.String(256)),
    sa.Column("code", sa.String(64)),
    sa.Column("codes", sa.JSON, nullable=False),
    sa.Column("payer", sa.String(64), index=True),
    sa.Column("policy", sa.String(64), index=True),
    sa.Column("revision", sa.String(64)),
    sa.Column("determination", sa.String(40), nullable=False, index=True),
    sa.Column("t0", sa.String(10)),
    sa.Column("r", sa.String(10)),
    sa.Column("episode_of", sa.String(256)),
    sa.Column("advisories", sa.JSON, nullable=False),
    sa.Column("deciding", sa.JSON, nullable=False),
    sa.Column("criteria", sa.JSON, nullable=False),  # [{id, value, evidence: ["Type/id"], text?, resolution?, note?}] in outline order
    sa.Column("card_uuid", sa.String(64), index=True),
    sa.Column("coverage_assertion_id", sa.String(128)),
    sa.Column("fhir_queries", sa.Integer),
    sa.Column("fhir_errors", sa.Integer),
)

# One row per feedback entry. Linked to the decision whose card it names by card_uuid
# (decisions.card_uuid); a card this service never issued stays unlinked.
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("service", sa.String(64), nullable=False),
    sa.Column("card_uuid", sa.String(128), nullable=False, index=True),
    sa.Column("outcome", sa.String(16), nullable=False, index=True),
    sa.Column("accepted_suggestions", sa.JSON, nullable=False),
    sa.Column("override_system", sa.String(256)),
    sa.Column("override_code", sa.String(128)),
    sa.Column("override_display", sa.String(256)),
    sa.Column("has_comment", sa.Boolean, nullable=False, default=False),
    sa.Column("outcome_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("client", sa.String(256)),
    sa.Column("tenant", sa.String(128)),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
)

# The JWT replay cache shared by every worker and instance: one row per client token id (``iss``,
# ``jti``) accepted, kept until ``expires_at`` (the token's ``exp``, at least 15 minutes). A second
# insert of a live key is a replay; an expired row is overwritten. Token ids only: no claims.
jwt_replay = sa.Table(
    "jwt_replay",
    metadata,
    sa.Column("iss", sa.String(256), primary_key=True),
    sa.Column("jti", sa.String(256), primary_key=True),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
)

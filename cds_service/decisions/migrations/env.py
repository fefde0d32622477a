"""Alembic environment: run with the connection the store hands over (``config.attributes``)."""
from __future__ import annotations

from alembic import context

from cds_service.decisions.models import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the store always passes its connection
    raise RuntimeError("run migrations through cds_service.decisions.store.DecisionStore.migrate()")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

"""Alembic environment. culm runs migrations itself on start (see ``culm.storage.migrate``)
on a connection it passes in ``config.attributes["connection"]``."""

from __future__ import annotations

from alembic import context

from culm.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only when run as plain `alembic` without culm
    raise RuntimeError("run migrations through culm: `culm.storage.migrate.upgrade`")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

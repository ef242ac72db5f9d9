"""Every test here runs on both backends (SQLite and PostgreSQL), same body: see ``backend``."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _on_each_backend(backend: str) -> str:
    return backend

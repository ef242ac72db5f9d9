"""Whether the store works: the outcome of its last write, and what counts as a store failure.

A store failure is the database refusing or failing to do its job (disk full, an I/O error,
the server gone): ``sqlalchemy.exc.OperationalError`` / ``InterfaceError``, a connection that was
invalidated, an ``OSError``, or a PostgreSQL error whose SQLSTATE says the server cannot serve
now (asyncpg's errors reach SQLAlchemy as plain ``DBAPIError``): a connection exception (class
08), insufficient resources (53: disk full, out of memory, too many connections), an operator
intervention (57P: shutting down, starting up — a restart), a system error (58: I/O), or a
database that does not accept connections (55000, ``ALLOW_CONNECTIONS false``); and the
transient refusals that a retry gets past: a transaction rolled back by the server (class 40: a
deadlock, a serialization failure), a lock not available (55P03), a statement cancelled
(57014, e.g. a statement timeout). A constraint
violation or bad data is not: that is the caller's business, and says nothing about the store's
health.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import sqlalchemy as sa

from culm.errors import StorageUnavailableError, describe

UNAVAILABLE_SQLSTATES = ("08", "40", "53", "55000", "55P03", "57014", "57P", "58")


def is_store_failure(exc: BaseException) -> bool:
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError | OSError):
        return True
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    return exc.connection_invalidated or sqlstate.startswith(UNAVAILABLE_SQLSTATES)


def unavailable(exc: BaseException) -> StorageUnavailableError:
    origin = getattr(exc, "orig", None) or exc
    return StorageUnavailableError(f"the store is unavailable: {describe(origin)}")


@contextlib.contextmanager
def failures_unavailable() -> Iterator[None]:
    """A store failure raised inside is raised as ``StorageUnavailableError``; anything else
    as it is (the reads' rule: unlike a write's, it leaves the store's health alone)."""
    try:
        yield
    except Exception as exc:
        if is_store_failure(exc):
            raise unavailable(exc) from exc
        raise


class StoreHealth:
    """Failing since when (monotonic clock), and why; None while the store works."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.failing_since: float | None = None
        self.last_error: str | None = None

    def succeeded(self) -> None:
        self.failing_since = None
        self.last_error = None

    def failed(self, exc: BaseException) -> None:
        if self.failing_since is None:
            self.failing_since = self._clock()
        self.last_error = str(unavailable(exc))

    @property
    def failing_for(self) -> float:
        """Seconds the store has been failing (0 while it works)."""
        return 0.0 if self.failing_since is None else self._clock() - self.failing_since

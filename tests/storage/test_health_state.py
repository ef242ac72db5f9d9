"""``StoreHealth`` and ``unavailable`` as units (found by mutation testing, issue #22): failing
since the first failure of a run of them, on an injected clock, and named by the database's
own error rather than SQLAlchemy's wrapper."""

from __future__ import annotations

import sqlalchemy as sa

from culm.storage.health import StoreHealth, is_store_failure, unavailable


def _operational(message: str) -> sa.exc.OperationalError:
    return sa.exc.OperationalError("INSERT INTO runs", {}, OSError(message))


def test_unavailable_names_the_databases_error_not_the_wrapper() -> None:
    assert str(unavailable(_operational("disk I/O error"))) == (
        "the store is unavailable: disk I/O error"
    )
    assert str(unavailable(OSError("no route"))) == "the store is unavailable: no route"


def test_health_fails_since_the_first_failure_until_a_success() -> None:
    now = [100.0]
    health = StoreHealth(clock=lambda: now[0])
    assert (health.failing_since, health.failing_for, health.last_error) == (None, 0.0, None)

    health.failed(_operational("disk full"))
    now[0] = 103.0
    health.failed(_operational("still full"))
    now[0] = 110.0

    assert health.failing_since == 100.0
    assert health.failing_for == 10.0
    assert health.last_error == "the store is unavailable: still full"
    health.succeeded()
    assert (health.failing_since, health.failing_for, health.last_error) == (None, 0.0, None)


class _DriverError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


def test_a_driver_error_is_a_store_failure_by_its_sqlstate() -> None:
    def wrapped(sqlstate: str) -> sa.exc.DBAPIError:
        return sa.exc.DBAPIError("UPDATE runs", {}, _DriverError(sqlstate))

    assert is_store_failure(wrapped("40P01")) is True  # a deadlock: a retry gets past it
    assert is_store_failure(wrapped("57P01")) is True  # the server shutting down
    assert is_store_failure(wrapped("23505")) is False  # a unique violation: the caller's

"""``CULM_TEST_SCHEDULE_CLOCK``: a faster schedule clock, for tests of real processes only.

The value ``T0,REAL0,SPEED`` makes the schedules' time T0 (ISO-8601, with offset) at Unix time
REAL0, running SPEED times faster than real time, so that every process given the same value
agrees on it. The distributed tests use it to make real ``culm worker`` processes fire an
every-minute schedule every half second. It changes nothing but the time schedules see; it is
not a setting and is not meant for production (docs/testing.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from culm.domain.time import as_utc
from culm.errors import ConfigError

VARIABLE = "CULM_TEST_SCHEDULE_CLOCK"


def from_env(environ: Mapping[str, str] = os.environ) -> Callable[[], datetime] | None:
    """The clock the variable asks for; None when it is not set."""
    value = environ.get(VARIABLE, "").strip()
    if not value:
        return None
    try:
        t0_text, real0_text, speed_text = value.split(",")
        t0 = as_utc(datetime.fromisoformat(t0_text))
        real0, speed = float(real0_text), float(speed_text)
    except ValueError as exc:
        raise ConfigError(f"{VARIABLE} must be T0,REAL0,SPEED, not {value!r}") from exc

    def now() -> datetime:
        return t0 + timedelta(seconds=(time.time() - real0) * speed)

    return now

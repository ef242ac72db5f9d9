"""Which bus a process gets, and what it costs a process without Redis to start."""

from __future__ import annotations

import subprocess
import sys

from culm.bus.factory import build_bus
from culm.bus.local import LocalBus
from culm.settings import Settings


def test_without_redis_the_bus_is_local_and_redis_is_never_imported() -> None:
    # A fresh interpreter: importing the engine's wiring and building its bus without
    # CULM_REDIS_URL must not import the redis client (most of a second of cold start).
    code = (
        "import sys\n"
        "from culm.bus.factory import build_bus\n"
        "import culm.services\n"
        "from culm.settings import Settings\n"
        "bus = build_bus(Settings(redis_url=None))\n"
        "print(type(bus).__name__, sorted(m for m in sys.modules if m.split('.')[0] == 'redis'))\n"
    )
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.split() == ["LocalBus", "[]"]


def test_with_redis_the_bus_is_redis() -> None:
    bus = build_bus(Settings(redis_url="redis://127.0.0.1:6379/0"))
    assert type(bus).__name__ == "RedisBus"
    assert not isinstance(bus, LocalBus)

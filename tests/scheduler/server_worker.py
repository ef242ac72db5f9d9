"""A culm server in its own process, for the two-process test (``test_two_processes.py``).

    python server_worker.py DATABASE_URL HOME T0 REAL0 SPEED

Its schedule clock runs SPEED times faster than real time from T0 (ISO-8601) at REAL0 (a Unix
time), so both processes agree on it. It prints ``ready <port>`` once listening and serves until
SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import uvicorn

import culm
from culm.api.app import create_app


def fast_clock(t0: datetime, real0: float, speed: float) -> Callable[[], datetime]:
    def now() -> datetime:
        return t0 + timedelta(seconds=(time.time() - real0) * speed)

    return now


async def main(url: str, home: str, t0: str, real0: str, speed: str) -> None:
    settings = culm.Settings(
        home=Path(home), database_url=url, schedule_tick=0.02, schedule_misfire_grace=600
    )
    engine = culm.Engine(
        settings, clock=fast_clock(datetime.fromisoformat(t0), float(real0), float(speed))
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings, engine=engine), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            serving.result()
        await asyncio.sleep(0.01)
    print("ready", port, flush=True)
    await serving


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))

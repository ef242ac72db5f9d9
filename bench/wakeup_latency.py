"""Would waking the workers through Redis beat PostgreSQL's NOTIFY? (issue 15, "Wake-ups")

    .venv/bin/python bench/wakeup_latency.py [--postgres URL] [--redis URL] [--rounds 500]

A wake-up tells the workers that a run became ready; it must not arrive before the run is
committed (a claim would miss it). So the two ways compared are, from the moment the writer
sends its COMMIT to the moment a listener on another connection has the wake-up:

- ``notify``: ``NOTIFY`` inside the transaction (what culm does: delivered at commit);
- ``redis``: the transaction commits, then the writer ``PUBLISH``es on Redis (the listener is a
  pub/sub subscriber), which is the earliest a Redis wake-up could go.

Rounds alternate the two ways (the machine is shared and noisy) and each round writes a row, as
the reservation of a run does. Prints p50/p99/max per way and their ratio. Not a test: the
figures and the command are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from typing import Any

import asyncpg
import redis.asyncio as redis
import sqlalchemy as sa


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(args: argparse.Namespace) -> int:
    url = sa.make_url(args.postgres)
    connect: dict[str, Any] = {"host": url.host, "port": url.port or 5432, "user": url.username,
                               "password": url.password, "database": url.database}  # fmt: skip
    writer = await asyncpg.connect(**connect)
    listener = await asyncpg.connect(**connect)
    channel = f"culm_bench_{uuid.uuid4().hex[:8]}"
    table = f"{channel}_rows"
    await writer.execute(f"CREATE TABLE {table} (id serial PRIMARY KEY, at double precision)")
    client = redis.Redis.from_url(args.redis)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    arrived: asyncio.Queue[float] = asyncio.Queue()
    await listener.add_listener(channel, lambda *_: arrived.put_nowait(time.perf_counter()))

    async def redis_reader() -> None:
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is not None:
                arrived.put_nowait(time.perf_counter())

    reader = asyncio.create_task(redis_reader())
    took: dict[str, list[float]] = {"notify": [], "redis": []}
    try:
        for i in range(2 * args.rounds):
            way = "notify" if i % 2 == 0 else "redis"
            transaction = writer.transaction()
            await transaction.start()
            await writer.execute(f"INSERT INTO {table} (at) VALUES ($1)", time.time())
            if way == "notify":
                await writer.execute("SELECT pg_notify($1, '')", channel)
            sent = time.perf_counter()
            await transaction.commit()
            if way == "redis":
                await client.publish(channel, b"")
            got = await asyncio.wait_for(arrived.get(), 10)
            took[way].append((got - sent) * 1000)
            await asyncio.sleep(0.005)  # idle between wake-ups, as a real queue mostly is
    finally:
        reader.cancel()
        await writer.execute(f"DROP TABLE {table}")
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()
        await listener.close()
        await writer.close()
    print(f"load_1m {os.getloadavg()[0]:.2f}, {args.rounds} rounds per way (interleaved)")
    for way, values in took.items():
        print(f"{way:7} commit -> listener  p50 {percentile(values, 0.5):6.3f} ms"
              f"  p99 {percentile(values, 0.99):6.3f} ms  max {max(values):6.3f} ms")  # fmt: skip
    ratio = percentile(took["redis"], 0.5) / percentile(took["notify"], 0.5)
    print(f"redis / notify p50 ratio {ratio:.2f}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres", default=os.environ.get(
        "CULM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))  # fmt: skip
    parser.add_argument("--redis", default=os.environ.get(
        "CULM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))  # fmt: skip
    parser.add_argument("--rounds", type=int, default=500)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))

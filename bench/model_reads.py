"""CPU per read of a streamed model answer: httpx2's default network backend against the model
client's (``culm.providers.http.model_client``, see ``culm.providers.netio``), alternating in
one process, order reversed every other pair; each sample one answer of ``--chunks`` chunks
``--chunk-delay-ms`` apart (so that each chunk is a read of its own, as a model's tokens are)::

    .venv/bin/python bench/fake_openai.py --port 9180 --chunks 100 --chunk-delay-ms 1 &
    .venv/bin/python bench/model_reads.py --base-url http://127.0.0.1:9180/v1 --pairs 60

Prints the median CPU (``time.thread_time``: the event loop's thread, wake-ups included) per
read of each and the median of the pairs' ratios with its quartiles.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx2

from culm.providers.http import DEFAULT_TIMEOUT, model_client

BODY = {"model": "gpt-bench", "stream": True, "messages": [{"role": "user", "content": "x"}]}


async def sample(client: httpx2.AsyncClient, url: str) -> float:
    """CPU µs per read of one streamed answer."""
    reads = 0
    cpu = time.thread_time()
    async with client.stream("POST", url, json=BODY) as response:
        async for _ in response.aiter_bytes():
            reads += 1
    return (time.thread_time() - cpu) / max(reads, 1) * 1e6


async def main(args: argparse.Namespace) -> None:
    url = f"{args.base_url}/chat/completions"
    limits = httpx2.Limits(max_connections=4, max_keepalive_connections=4)
    clients = {
        "default": httpx2.AsyncClient(timeout=DEFAULT_TIMEOUT, limits=limits),
        "culm": model_client(4),
    }
    for client in clients.values():
        await sample(client, url)  # connect and warm up
    samples: dict[str, list[float]] = {name: [] for name in clients}
    ratios = []
    for pair in range(args.pairs):
        names = ["default", "culm"] if pair % 2 == 0 else ["culm", "default"]
        got = {name: await sample(clients[name], url) for name in names}
        for name, value in got.items():
            samples[name].append(value)
        ratios.append(got["culm"] / got["default"])
    low, _, high = statistics.quantiles(ratios, n=4)
    print(
        f"{args.pairs} pairs: default {statistics.median(samples['default']):.1f} µs per read, "
        f"culm {statistics.median(samples['culm']):.1f} µs per read; culm / default "
        f"{statistics.median(ratios):.3f} (quartiles {low:.3f}–{high:.3f})"
    )
    for client in clients.values():
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base-url", default="http://127.0.0.1:9180/v1")
    parser.add_argument("--pairs", type=int, default=60)
    asyncio.run(main(parser.parse_args()))

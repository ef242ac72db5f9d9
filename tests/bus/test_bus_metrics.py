"""The Redis bus's figures on /metrics include its publish queue's depth (the distributed
deployment's queue gauge): batches wait there until Redis has taken them."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from culm.bus.prometheus import BusCollector
from culm.bus.redis import RedisBus
from tests.bus.conftest import redis_pair
from tests.bus.test_bus import tokens


def _depth(bus: RedisBus) -> float:
    registry = CollectorRegistry()
    registry.register(BusCollector(bus))
    text = generate_latest(registry).decode()
    (value,) = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "culm_bus_publish_queue_depth"
    ]
    return value


async def test_the_publish_queue_depth_is_a_gauge() -> None:
    async with redis_pair() as (bus, _):
        bus.publish(tokens("r", 1, 2))
        bus.publish(tokens("r", 3, 4))
        assert _depth(bus) == 2  # queued: the publisher's task has not run since
        async with asyncio.timeout(10):
            while bus.publisher.queued:
                await asyncio.sleep(0.01)
        assert _depth(bus) == 0

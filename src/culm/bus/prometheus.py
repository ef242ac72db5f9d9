"""The bus's figures on ``/metrics`` (a collector read at each scrape):

``culm_redis_up``                      1 while Redis answers, 0 while degraded (absent without
                                       ``CULM_REDIS_URL``)
``culm_redis_reconnects_total``        Redis outages this process recovered from
``culm_bus_events_published_total``    run events published to other processes
``culm_bus_events_dropped_total``      run events not published (queue full, or Redis down);
                                       subscribers read them from the store
``culm_bus_events_received_total``     run events received from other processes
``culm_bus_topics_followed``           runs and sessions this process follows on the bus now
``culm_bus_publish_queue_depth``       event batches waiting to be published to Redis now
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from culm.bus.base import EventBus


class BusCollector(Collector):
    def __init__(self, bus: EventBus) -> None:
        self._bus = bus

    def collect(self) -> Iterable[Metric]:
        stats = self._bus.stats()
        if stats.state == "disabled":
            return
        yield GaugeMetricFamily(
            "culm_redis_up", "1 while Redis answers, 0 while degraded.", int(stats.state == "ok")
        )
        yield CounterMetricFamily(
            "culm_redis_reconnects", "Redis outages recovered from.", value=stats.reconnects
        )
        yield CounterMetricFamily(
            "culm_bus_events_published",
            "Run events published to other processes.",
            value=stats.published,
        )
        yield CounterMetricFamily(
            "culm_bus_events_dropped",
            "Run events not published (queue full, or Redis down): read from the store.",
            value=stats.dropped,
        )
        yield CounterMetricFamily(
            "culm_bus_events_received",
            "Run events received from other processes.",
            value=stats.received,
        )
        yield GaugeMetricFamily(
            "culm_bus_topics_followed", "Runs and sessions followed on the bus.", stats.followed
        )
        yield GaugeMetricFamily(
            "culm_bus_publish_queue_depth",
            "Run event batches waiting to be published to Redis.",
            stats.publish_queue,
        )

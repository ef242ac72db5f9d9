"""Which bus a process gets: Redis when ``CULM_REDIS_URL`` is set, else the in-process one.

The Redis modules are imported only then: importing the ``redis`` client costs a process
without Redis most of a second of its cold start (its observability layer imports
OpenTelemetry's metrics)."""

from __future__ import annotations

from culm.bus.base import EventBus
from culm.bus.local import LocalBus
from culm.settings import Settings


def build_bus(settings: Settings) -> EventBus:
    if not settings.redis_url:
        return LocalBus()
    from culm.bus.link import RedisLink  # here, not at the top: see the docstring
    from culm.bus.redis import RedisBus

    link = RedisLink(settings.redis_url, prefix=settings.redis_prefix)
    return RedisBus(
        link,
        maxlen=settings.bus_stream_maxlen,
        ttl=settings.bus_stream_ttl_seconds,
        queue_size=settings.bus_publish_queue_size,
    )

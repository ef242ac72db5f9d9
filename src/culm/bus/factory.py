"""Which bus a process gets: Redis when ``CULM_REDIS_URL`` is set, else the in-process one."""

from __future__ import annotations

from culm.bus.base import EventBus
from culm.bus.link import RedisLink
from culm.bus.local import LocalBus
from culm.bus.redis import RedisBus
from culm.settings import Settings


def build_bus(settings: Settings) -> EventBus:
    if not settings.redis_url:
        return LocalBus()
    link = RedisLink(settings.redis_url, prefix=settings.redis_prefix)
    return RedisBus(
        link,
        maxlen=settings.bus_stream_maxlen,
        ttl=settings.bus_stream_ttl_seconds,
        queue_size=settings.bus_publish_queue_size,
    )

"""IANA time zones, by name: the zone a schedule's times are read in."""

from __future__ import annotations

from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


@lru_cache(maxsize=256)
def load_zone(name: str) -> ZoneInfo:
    """The zone called ``name`` (``"Europe/Paris"``, ``"UTC"``); ValueError if there is none.

    Zones come from the system's database or, where it has none, the ``tzdata`` package.
    """
    if not name or name != name.strip():
        raise ValueError(f"unknown time zone {name!r}: expected an IANA name like 'Europe/Paris'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(
            f"unknown time zone {name!r}: expected an IANA name like 'Europe/Paris'"
        ) from exc

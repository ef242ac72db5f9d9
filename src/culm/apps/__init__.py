"""Apps: the user's own tools, agents and schedules (:class:`App`), and how culm finds them
(:mod:`culm.apps.loading`)."""

from culm.apps.app import App
from culm.apps.loading import (
    ENTRY_POINT_GROUP,
    create_app_schedules,
    entry_point_apps,
    load_app,
    resolve_apps,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "App",
    "create_app_schedules",
    "entry_point_apps",
    "load_app",
    "resolve_apps",
]

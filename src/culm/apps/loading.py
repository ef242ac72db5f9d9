"""Finding apps: ``module:attr`` (``culm serve --app``, ``CULM_APP``) and the entry point group
``culm.apps`` of installed packages.

An app that cannot be loaded stops start-up with an :class:`~culm.errors.AppLoadError` naming
the app, its module and the problem (an import error, a bad tool, an attribute that is not an
app). Several apps load into one engine; two that define the same tool or agent are refused.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from culm.apps.app import App
from culm.errors import AppLoadError, CulmError, describe

if TYPE_CHECKING:
    from culm.scheduler.service import Schedules
    from culm.settings import Settings

ENTRY_POINT_GROUP = "culm.apps"


def load_app(spec: str | App) -> App:
    """The app ``spec`` names: ``package.module:attr`` (``attr`` defaults to ``app``)."""
    if isinstance(spec, App):
        return spec
    module_name, _, attr = spec.strip().partition(":")
    attr = attr or "app"
    if not module_name:
        raise AppLoadError(f"app {spec!r}: expected `module:attr`, like `myagents.main:app`")
    where = f"app {module_name}:{attr}"
    try:
        module = importlib.import_module(module_name)
    except CulmError as exc:  # a bad tool or agent, found while the module ran
        raise AppLoadError(f"{where}: module {module_name!r}: {exc}") from exc
    except Exception as exc:
        raise AppLoadError(
            f"{where}: module {module_name!r} failed to import: {describe(exc)}"
        ) from exc
    try:
        found = getattr(module, attr)
    except AttributeError:
        raise AppLoadError(f"{where}: module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(found, App):
        kind = type(found).__name__
        raise AppLoadError(f"{where}: {attr!r} is a {kind}, not a culm.App")
    if found.name == "app":
        found.name = f"{module_name}:{attr}"
    return found


def entry_point_apps() -> list[App]:
    """The apps of installed packages (entry point group ``culm.apps``), by name."""
    apps = []
    for point in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=_name):
        try:
            apps.append(load_app(point.value))
        except AppLoadError as exc:
            raise AppLoadError(f"entry point {point.name!r} ({ENTRY_POINT_GROUP}): {exc}") from exc
    return apps


def _name(point: importlib.metadata.EntryPoint) -> str:
    return point.name


def resolve_apps(given: App | str | Iterable[App | str] | None, settings: Settings) -> list[App]:
    """The apps of an engine: those given, those configured (``CULM_APP``), and unless
    ``CULM_ENTRY_POINT_APPS`` is off the installed ones; each once, checked for clashes."""
    specs = [given] if isinstance(given, App | str) else list(given or ())
    apps: list[App] = []
    for spec in [*specs, *settings.app]:
        app = load_app(spec)
        if all(app is not other for other in apps):
            apps.append(app)
    if settings.entry_point_apps:
        apps += [app for app in entry_point_apps() if all(app is not a for a in apps)]
    _check_clashes(apps)
    return apps


def _check_clashes(apps: Sequence[App]) -> None:
    tools: dict[str, str] = {}
    agents: dict[str, str] = {}
    for app in apps:
        for kind, names, seen in (("tool", app.tools, tools), ("agent", app.agents, agents)):
            for name in names:
                if name in seen:
                    raise AppLoadError(
                        f"{kind} {name!r} is defined by two apps: {seen[name]} and {app.name}"
                    )
                seen[name] = app.name


async def create_app_schedules(schedules: Schedules, apps: Sequence[App]) -> None:
    """Create the apps' schedules that do not exist yet (by name): one changed or paused
    through the API stays as it is; one deleted comes back at the next start."""
    wanted = {name: body for app in apps for name, body in app.schedules.items()}
    if not wanted:
        return
    existing = {schedule.name for schedule in await schedules.list(limit=100_000)}
    for name, body in wanted.items():
        if name not in existing:
            try:
                await schedules.create(body)
            except CulmError as exc:
                raise AppLoadError(f"schedule {name!r}: {exc}") from exc

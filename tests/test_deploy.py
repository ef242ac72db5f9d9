"""The deployment files say what culm really has: deploy/compose.yaml starts the topology of
docs/deploy.md with the settings alike where they must be, and every ``CULM_`` variable that
the compose file, the Dockerfile or the Deploy page names is a real setting.

(The compose file is also checked against the Compose specification's JSON schema when it
changes; Docker is not available to the test suite.)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # (PyYAML comes with schemathesis, a dev dependency)

import culm

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
VARIABLE = re.compile(r"\bCULM_[A-Z][A-Z0-9_]*")
# Variables of the culm client and of its logging, not settings of the engine.
NOT_SETTINGS = {"CULM_SERVER", "CULM_DEBUG"}
# What every process must see alike (docs/deploy.md, "Settings").
ALIKE = ("CULM_DATABASE_URL", "CULM_RECOVERY_POLICY", "CULM_MAX_ATTEMPTS", "CULM_LEASE_SECONDS")


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def _settings_variables() -> set[str]:
    return {f"CULM_{name.upper()}" for name in culm.Settings.model_fields}


def test_compose_starts_postgres_workers_api_processes_and_a_load_balancer() -> None:
    services = _compose()["services"]
    assert services["api"]["command"] == ["culm", "serve", "--no-worker"]
    assert services["worker"]["command"][:2] == ["culm", "worker"]
    assert services["api"]["deploy"]["replicas"] >= 2
    assert services["worker"]["deploy"]["replicas"] >= 2
    assert services["postgres"]["image"].startswith("postgres:")
    assert "api" in services["lb"]["depends_on"]
    for name in ("api", "worker"):
        assert services[name]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_every_culm_process_shares_the_database_the_home_and_the_recovery_settings() -> None:
    services = _compose()["services"]
    api, worker = services["api"], services["worker"]
    for variable in ALIKE:
        assert variable in api["environment"], variable
        assert api["environment"][variable] == worker["environment"][variable], variable
    assert api["environment"]["CULM_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert api["volumes"] == worker["volumes"]
    home = api["environment"]["CULM_HOME"]
    assert any(volume.endswith(f":{home}") for volume in api["volumes"])


def test_a_worker_stops_within_the_orchestrators_grace() -> None:
    worker = _compose()["services"]["worker"]
    grace = float(worker["environment"]["CULM_SHUTDOWN_GRACE"])
    assert worker["environment"]["CULM_SHUTDOWN_POLICY"] == "recover"
    assert float(worker["stop_grace_period"].removesuffix("s")) > grace


def test_the_image_installs_this_checkout_pinned() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "COPY src/ src/" in dockerfile
    assert "pip install -c requirements/constraints.txt '.[all]'" in dockerfile
    assert "CULM_PORT=8420" in dockerfile
    assert "dynamic a api 8420" in (DEPLOY / "Caddyfile").read_text()


def test_every_variable_named_is_a_setting() -> None:
    known = _settings_variables() | NOT_SETTINGS
    for path in (DEPLOY / "compose.yaml", DEPLOY / "Dockerfile", ROOT / "docs" / "deploy.md"):
        named = set(VARIABLE.findall(path.read_text()))
        groups = {name for name in named if name.endswith("_")}  # CULM_BASH_* and the like
        assert named - groups <= known, (path.name, sorted(named - groups - known))
        for prefix in groups:
            assert any(setting.startswith(prefix) for setting in known), (path.name, prefix)

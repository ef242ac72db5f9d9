"""Configuration mistakes are user errors that name the setting; logs never touch stdout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import culm
from culm.settings import load_settings


def test_a_bad_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CULM_HOME", str(tmp_path))
    monkeypatch.setenv("CULM_MAX_ROUNDS", "0")
    with pytest.raises(culm.ConfigError, match="invalid setting CULM_MAX_ROUNDS"):
        load_settings()


def test_config_toml_is_read_and_a_broken_one_is_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CULM_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('default_model = "scripted:echo"\nmax_rounds = 7\n')
    settings = load_settings()
    assert (settings.default_model, settings.max_rounds) == ("scripted:echo", 7)
    monkeypatch.setenv("CULM_MAX_ROUNDS", "9")  # the environment wins over the file
    assert load_settings().max_rounds == 9
    (tmp_path / "config.toml").write_text("max_rounds = = 3\n")
    with pytest.raises(culm.ConfigError, match="config.toml"):
        load_settings()


def test_provider_keys_use_the_providers_own_variable_names(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CULM_HOME", str(tmp_path))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    settings = load_settings()
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-env"
    assert "sk-env" not in repr(settings)
    assert settings.anthropic_base_url == "http://127.0.0.1:9"


async def test_a_home_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    home = tmp_path / "file"
    home.write_text("")
    with pytest.raises(culm.ConfigError, match="CULM_HOME"):
        async with culm.Engine(culm.Settings(home=home)):
            pass


async def test_unknown_provider_lists_every_known_one(tmp_path: Path) -> None:
    async with culm.Engine(culm.Settings(home=tmp_path)) as engine:
        with pytest.raises(culm.UnknownModelError) as info:
            await engine.create_session(model="foo:bar")
    assert "anthropic, openai, scripted" in str(info.value)


def test_engine_logs_go_to_stderr_not_stdout(tmp_path: Path) -> None:
    script = f"""
import asyncio, culm
async def main():
    settings = culm.Settings(home={str(tmp_path)!r}, model_retry_base_delay=0.01)
    async with culm.Engine(settings) as engine:
        turn = [{{"error": {{"status": 503, "message": "busy"}}, "times": 1}}, {{"text": "ok"}}]
        engine.scripts.register("flaky", {{"turns": [turn]}})
        run = await engine.run("hi", model="scripted:flaky")
        print((await engine.wait(run.run_id)).status.value)
asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout == "completed\n"
    assert "model call failed; retrying" in done.stderr


@pytest.mark.parametrize("name", ["../../etc/x", "a/b", ".hidden", ""])
async def test_scripted_names_cannot_reach_outside_the_scripts_folder(
    tmp_path: Path, name: str
) -> None:
    (tmp_path / "x.json").write_text('{"turns": [[{"text": "leaked"}]]}')
    async with culm.Engine(culm.Settings(home=tmp_path / "home")) as engine:
        with pytest.raises(culm.UnknownModelError):
            await engine.create_session(model=f"scripted:{name}")


@pytest.mark.parametrize("workspace", ["0" * 300, "bad\x00path", "~nosuchuser_culm/x"])
async def test_unusable_workspaces_are_config_errors(tmp_path: Path, workspace: str) -> None:
    async with culm.Engine(culm.Settings(home=tmp_path)) as engine:
        with pytest.raises(culm.ConfigError, match="workspace"):
            await engine.create_session(model="scripted:echo", workspace=workspace)


async def test_wait_with_zero_timeout_returns_a_finished_run(tmp_path: Path) -> None:
    async with culm.Engine(culm.Settings(home=tmp_path)) as engine:
        run = await engine.run("hi", model="scripted:echo")
        await engine.wait(run.run_id)
        assert (await engine.wait(run.run_id, timeout=0)).status is culm.RunStatus.COMPLETED


def test_list_settings_are_comma_separated_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CULM_HOME", str(tmp_path))
    monkeypatch.setenv("CULM_BASH_ENV_PASSTHROUGH", "GITHUB_TOKEN, NPM_TOKEN")
    monkeypatch.setenv("CULM_WORKSPACE_ROOTS", f"{tmp_path}/a,{tmp_path}/b")
    monkeypatch.setenv("CULM_BASH_SANDBOX", "none")
    settings = load_settings()
    assert settings.bash_env_passthrough == ["GITHUB_TOKEN", "NPM_TOKEN"]
    assert settings.workspace_roots == [tmp_path / "a", tmp_path / "b"]
    assert settings.allowed_workspace_roots == [
        (tmp_path / "workspaces").resolve(),
        (tmp_path / "a").resolve(),
        (tmp_path / "b").resolve(),
    ]
    assert settings.bash_sandbox == "none"
    assert settings.allow_session_mcp_commands is False
    assert settings.bash_network is True


def test_the_event_writers_linger_defaults_per_store_backend(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """100 ms on SQLite (one writer: tokens share a commit), none on PostgreSQL (a subscriber
    on another process waits for the commit); CULM_EVENT_FLUSH_INTERVAL wins on either."""
    monkeypatch.delenv("CULM_EVENT_FLUSH_INTERVAL", raising=False)
    postgres = "postgresql+asyncpg://culm@127.0.0.1/culm"
    assert culm.Settings(home=tmp_path).resolved_event_flush_interval == 0.1
    assert culm.Settings(home=tmp_path, database_url=postgres).resolved_event_flush_interval == 0
    monkeypatch.setenv("CULM_EVENT_FLUSH_INTERVAL", "0.005")
    assert culm.Settings(home=tmp_path).resolved_event_flush_interval == 0.005
    assert (
        culm.Settings(home=tmp_path, database_url=postgres).resolved_event_flush_interval == 0.005
    )

"""The ``culm`` app itself: version, help, and the error boundary in :func:`culm.cli.main`."""

from __future__ import annotations

import pytest

from culm import __version__, cli
from culm.errors import ConfigError
from tests.cli.conftest import CulmRunner


def test_version(culm: CulmRunner) -> None:
    result = culm("--version")

    assert result.code == 0
    assert result.stdout.strip() == f"culm {__version__}"


def test_help_lists_the_commands(culm: CulmRunner) -> None:
    result = culm("--help")

    assert result.code == 0
    assert "run" in result.stdout
    assert "Usage: culm" in result.stdout


def _raise(exc: BaseException) -> None:
    raise exc


def test_a_user_error_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "app", lambda **_: _raise(ConfigError("FOO is not\nset")))

    with pytest.raises(SystemExit) as exit_info:
        cli.main()

    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: FOO is not set\n"


def test_an_internal_error_is_one_line_with_a_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CULM_DEBUG", raising=False)
    monkeypatch.setattr(cli, "app", lambda **_: _raise(RuntimeError("boom")))

    with pytest.raises(SystemExit) as exit_info:
        cli.main()

    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: internal error: RuntimeError: boom (rerun with CULM_DEBUG=1 to see the traceback)"
    ]


def test_culm_debug_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CULM_DEBUG", "1")
    monkeypatch.setattr(cli, "app", lambda **_: _raise(RuntimeError("boom")))

    with pytest.raises(SystemExit):
        cli.main()

    err = capsys.readouterr().err
    assert err.startswith("Traceback")
    assert err.splitlines()[-1] == "error: internal error: RuntimeError: boom"

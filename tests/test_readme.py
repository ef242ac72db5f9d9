"""The README's quick start and make targets are what the repository really has: its test
command appears verbatim in .ci/run, and every ``make`` target it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELLS = {"sh", "bash", "shell", "console"}


def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def quick_start_commands() -> list[str]:
    """The command lines of the README's first fenced shell block."""
    for language, body in FENCE.findall(readme()):
        if language in SHELLS:
            lines = (line.strip().removeprefix("$ ") for line in body.splitlines())
            return [line for line in lines if line and not line.startswith("#")]
    raise AssertionError("README.md has no fenced shell block")


def test_quick_start_is_install_and_run_then_test() -> None:
    install, test = quick_start_commands()
    assert "-c requirements/constraints.txt" in install
    assert install.endswith("culm serve")  # the main job, on the embedded default
    assert "-c requirements/constraints.txt" in test
    assert test.endswith("pytest")


def test_ci_runs_the_readme_test_command() -> None:
    _, test = quick_start_commands()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test in ci, ".ci/run must run the README's test command verbatim"
    assert "set -euo pipefail" in ci


def test_make_targets_named_in_the_readme_exist() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    defined = set(re.findall(r"^([a-z][\w-]*):", makefile, re.MULTILINE))
    named = set(re.findall(r"`make ([a-z][\w-]*)`", readme()))
    assert named, "the README names no make targets"
    assert named <= defined, f"not in the Makefile: {sorted(named - defined)}"

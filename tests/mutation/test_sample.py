"""CI's mutation sample: each mutant of ``sample.py``, put into a copy of ``src/``, makes its
tests fail; the same tests pass on an unmutated copy (the control).

Each run copies ``src/culm`` to a temporary directory, applies at most one mutant there (the
working tree is never touched), and runs the mutant's tests in a new interpreter whose
``PYTHONPATH`` is the copy. That interpreter reports where it imported ``culm`` from, and the
test checks it is the copy. Its working directory is the temporary directory, so hypothesis
keeps the failing examples of mutants in a database of its own, not the repository's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mutation.sample import MUTANTS, Mutant

ROOT = Path(__file__).resolve().parents[2]
# Import culm from PYTHONPATH (checked), say where from, then run pytest on the arguments.
PROBE = (
    "import sys, culm, pytest; "
    "print('culm imported from', culm.__file__, flush=True); "
    "sys.exit(pytest.main(sys.argv[1:]))"
)
TEST_TIMEOUT = 30  # per test, in the inner run: a mutant that hangs a test fails it


def copy_of_src(tmp_path: Path, mutant: Mutant | None) -> Path:
    src = tmp_path / "src"
    shutil.copytree(
        ROOT / "src" / "culm", src / "culm", ignore=shutil.ignore_patterns("__pycache__")
    )
    if mutant is not None:
        path = src / mutant.file
        text = path.read_text()
        found = text.count(mutant.original)
        if found != 1:
            pytest.fail(
                f"mutant {mutant.name}: its original text is found {found} times in "
                f"src/{mutant.file} (must be once): update it in tests/mutation/sample.py",
                pytrace=False,
            )
        path.write_text(text.replace(mutant.original, mutant.mutated))
    return src


def run_tests(src: Path, node_ids: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, "-c", PROBE, *(str(ROOT / node) for node in node_ids)]
    command += ["--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml")]
    command += ["-q", "-x", "-p", "no:cacheprovider", "-p", "no:schemathesis"]
    command += [f"--timeout={TEST_TIMEOUT}"]
    result = subprocess.run(
        command, cwd=src.parent, env=env, capture_output=True, text=True, timeout=150
    )
    imported = f"culm imported from {src / 'culm' / '__init__.py'}\n"
    assert result.stdout.startswith(imported), result.stdout[:2000] + result.stderr[-2000:]
    return result


def test_every_sampled_test_passes_without_a_mutant(tmp_path: Path) -> None:
    node_ids = sorted({node for mutant in MUTANTS for node in mutant.tests})
    result = run_tests(copy_of_src(tmp_path, None), node_ids)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    # Every node ran (a node id may stand for several items: one per backend), none skipped
    # (a backend a test module leaves out is deselected, not skipped).
    summary = result.stdout.strip().splitlines()[-1]
    passed = re.match(r"(\d+) passed(?:, \d+ deselected)? in ", summary)
    assert passed is not None and int(passed.group(1)) >= len(node_ids), result.stdout[-4000:]


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda mutant: mutant.name)
def test_each_mutant_makes_its_tests_fail(tmp_path: Path, mutant: Mutant) -> None:
    result = run_tests(copy_of_src(tmp_path, mutant), list(mutant.tests))
    # 1: tests ran and some failed (not 2-5: interrupted, internal or usage error, none found).
    assert result.returncode == 1, (
        f"mutant {mutant.name} survived (exit {result.returncode}):\n"
        + result.stdout[-4000:]
        + result.stderr[-2000:]
    )
    assert " failed" in result.stdout, result.stdout[-4000:]

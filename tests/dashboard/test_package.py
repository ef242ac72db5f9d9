"""Every file the dashboard serves is package data, so a wheel (not only a checkout) has it."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from pathlib import Path

import culm.dashboard

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "culm"


def test_every_static_file_is_package_data() -> None:
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["culm"]
    static = Path(culm.dashboard.__file__).parent / "static"
    files = [path for path in static.rglob("*") if path.is_file()]
    assert len(files) > 10
    for path in files:
        relative = path.relative_to(PACKAGE).as_posix()
        # setuptools' "*" does not cross "/": a file in a new folder needs a pattern of its own
        assert any(
            fnmatch(relative, pattern) and relative.count("/") == pattern.count("/")
            for pattern in patterns
        ), relative


def test_no_page_loads_anything_from_another_host() -> None:
    static = Path(culm.dashboard.__file__).parent / "static"
    for path in [*static.glob("*.html"), *static.glob("js/*.js"), static / "style.css"]:
        text = path.read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", ""), path
        assert "https://" not in text, path

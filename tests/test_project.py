"""Promises the project makes about itself: the README's commands are what CI runs; modules stay small."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "python -m pip install -e '.[dev]' && python -m pytest"
    assert f"\n{command}\n" in readme
    assert f"\n{command}\n" in ci
    assert "\nmypy\n" in ci


def test_no_module_is_over_400_lines() -> None:
    sizes = {p: len(p.read_text().splitlines()) for p in (ROOT / "lazybn").rglob("*.py")}
    too_big = {str(p.relative_to(ROOT)): n for p, n in sizes.items() if n > 400}
    assert not too_big, f"split these modules: {too_big}"

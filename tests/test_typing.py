"""mypy must reject every misuse in tests/typing/fail and accept tests/typing/pass.

Each rejected line carries ``# type: ignore[<expected code>]``. Run with ``--warn-unused-ignores``,
the fail directory must come out clean: a line that stops being an error reports an unused
ignore, and an error of another kind is not covered by the ignore. Pass files are also run.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from mypy import api

HERE = Path(__file__).parent / "typing"
ROOT = HERE.parent.parent
FAIL = sorted((HERE / "fail").glob("*.py"))
PASS = sorted((HERE / "pass").glob("*.py"))


def _mypy(files: list[Path], tmp: Path) -> tuple[str, int]:
    out, err, status = api.run([
        "--config-file", str(ROOT / "mypy.ini"), "--strict", "--warn-unused-ignores",
        "--cache-dir", str(tmp / "mypy-cache"), "--no-incremental", *map(str, files),
    ])
    return out + err, status


def test_every_fail_case_is_rejected_with_its_expected_error(tmp_path: Path) -> None:
    assert FAIL, "no fail cases found"
    for f in FAIL:
        assert "# type: ignore[" in f.read_text(), f"{f.name} states no expected error"
    out, status = _mypy(FAIL, tmp_path)
    assert status == 0, out


def test_without_the_ignores_mypy_reports_each_line(tmp_path: Path) -> None:
    """The fail cases really fail: strip the ignores and count one error per marked line."""
    stripped = []
    expected = 0
    for f in FAIL:
        text = f.read_text()
        expected += text.count("# type: ignore[")
        target = tmp_path / f.name
        target.write_text("\n".join(ln.split("  # type: ignore[")[0] for ln in text.splitlines()) + "\n")
        stripped.append(target)
    out, status = _mypy(stripped, tmp_path)
    assert status == 1
    lines_with_errors = {ln.split(": error")[0] for ln in out.splitlines() if ": error" in ln}
    assert len(lines_with_errors) == expected, out


def test_pass_cases_are_accepted(tmp_path: Path) -> None:
    out, status = _mypy(PASS, tmp_path)
    assert status == 0, out


@pytest.mark.parametrize("path", PASS, ids=lambda p: p.name)
def test_pass_cases_run(path: Path) -> None:
    runpy.run_path(str(path))


def test_the_readmes_code_type_checks(tmp_path: Path) -> None:
    """The README's code blocks, as the one session ``test_project`` runs them in, pass mypy --strict:
    what a reader copies from the README is typed code."""
    from .test_project import _python_blocks

    session = tmp_path / "readme_session.py"
    session.write_text("\n".join(b for b in _python_blocks(ROOT / "README.md") if not b.startswith("    ")))
    out, status = _mypy([session], tmp_path)
    assert status == 0, out

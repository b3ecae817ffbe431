"""Promises the project makes about itself: the README's commands are what CI runs, its code
runs as written, its lists are complete; modules stay small."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


def _python_blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text())


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


def test_readme_code_runs_as_written() -> None:
    """The README's code blocks run in order, as one session; an indented block is an excerpt of
    lazybn's source, and every line of it (but ``...``) is in that source."""
    blocks = _python_blocks(ROOT / "README.md")
    assert len(blocks) >= 3
    source = "\n".join(p.read_text() for p in (ROOT / "lazybn").rglob("*.py"))
    namespace: dict[str, object] = {"__name__": "readme"}
    for block in blocks:
        if block.startswith("    "):
            missing = [ln for ln in block.splitlines() if ln.strip() not in ("", "...") and ln not in source]
            assert not missing, f"README excerpt lines not in lazybn's source: {missing}"
        else:
            exec(compile(block, "README.md", "exec"), namespace)


def test_readme_names_every_benchmark() -> None:
    readme = (ROOT / "README.md").read_text()
    unnamed = [p.name for p in sorted((ROOT / "benchmarks").glob("bench_*.py")) if f"`{p.name}`" not in readme
               and f"benchmarks/{p.name}`" not in readme]
    assert not unnamed, f"README's benchmark list leaves out {unnamed}"


def test_reliability_table_is_what_the_error_cases_print() -> None:
    """docs/reliability.md's table of bad inputs is the output of ``python -m tests.test_errors``."""
    from .test_errors import CASES

    table = [ln for ln in (ROOT / "docs" / "reliability.md").read_text().splitlines() if ln.startswith("| ")]
    for name, call, error, _ in CASES:
        try:
            call()
        except error as exc:
            row = f"| {name} | `{type(exc).__name__}`: {exc} |"
        else:
            raise AssertionError(f"{name}: no error")
        assert row in table, f"docs/reliability.md lacks or misstates: {row}"


def test_mnist_example_trains_on_digit_shaped_data() -> None:
    """``examples/train_mnist.py``'s loop learns a task it can learn: each class lights its own
    block of pixels, under noise. One epoch takes it from chance (10%) to most of the samples."""
    import importlib.util

    import numpy as np

    import lazybn as lb

    spec = importlib.util.spec_from_file_location("train_mnist", ROOT / "examples" / "train_mnist.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 2000).astype(np.int64)
    images = rng.integers(0, 100, (2000, 784)).astype(np.uint8)
    for k in range(10):
        images[labels == k, 78 * k:78 * k + 78] += 150
    x = lb.prepare(images, lb.Pixels.standard)
    layers = example.train(lb.mlp(example.SIZES, batchnorm=True, init=lb.Init.small, seed=0), x, labels, 1)
    assert lb.accuracy(layers, x, labels) > 0.9


def test_every_test_the_docs_cite_exists() -> None:
    """README.md and docs/*.md cite tests as ``tests/<file>.py::<name>``; each must be there."""
    missing = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for m in re.finditer(r"tests/([\w/]+\.py)::(\w+)", doc.read_text()):
            path = ROOT / "tests" / m.group(1)
            if not path.exists() or not re.search(rf"def {m.group(2)}\b", path.read_text()):
                missing.append(f"{doc.name}: {m.group(0)}")
    assert not missing, missing

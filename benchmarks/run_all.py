"""Run every benchmark and write their tables into docs/performance.md.

Each benchmark runs as its own process, exactly as its own command would; the markdown tables
it prints replace the block between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in
docs/performance.md, under the command that produced them, and the machine facts replace the
``machine`` block. The prose around the blocks is written by hand: re-read it against the new
figures. The file is replaced atomically.

    python benchmarks/run_all.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_facts  # noqa: E402

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "performance.md"
BENCHES = {  # name -> script arguments
    "fusion": ["bench_fusion.py"],
    "transcendental": ["bench_transcendental.py"],
    "bn": ["bench_bn.py"],
    "memory": ["bench_memory.py"],
    "epoch": ["bench_epoch.py"],
    "variants": ["bench_variants.py"],
    "inference": ["bench_inference.py"],
    "startup": ["bench_startup.py"],
    "blas-threads": ["bench_blas_threads.py"],
}


def tables(output: str) -> str:
    """The markdown tables in a benchmark's output (runs of lines starting with '|')."""
    blocks: list[list[str]] = []
    previous = False
    for line in output.splitlines():
        is_row = line.startswith("|")
        if is_row and not previous:
            blocks.append([])
        if is_row:
            blocks[-1].append(line)
        previous = is_row
    return "\n\n".join("\n".join(b) for b in blocks)


def replace_block(doc: str, name: str, body: str) -> str:
    open_, close = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    pattern = re.compile(re.escape(open_) + r"\n.*?" + re.escape(close), re.S)
    if not pattern.search(doc):
        raise SystemExit(f"docs/performance.md has no {open_} ... {close} block")
    return pattern.sub(lambda _: f"{open_}\n{body}\n{close}", doc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=sorted(BENCHES), help="run these benchmarks only")
    args = ap.parse_args()
    names = args.only or list(BENCHES)
    for name in ["machine", *names]:  # fail before hours of benchmarks, not after
        replace_block(DOC.read_text(encoding="utf-8"), name, "")
    facts = machine_facts()
    bodies = {"machine": "\n".join(f"* {k}: {v}" for k, v in facts.items())}
    for name in names:
        script, *extra = BENCHES[name]
        cmd = [sys.executable, str(HERE / script), *extra]
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        sys.stdout.write(proc.stdout)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"{script} failed (exit {proc.returncode}); docs/performance.md is unchanged")
        shown = " ".join(["python", f"benchmarks/{script}", *extra])
        bodies[name] = f"`{shown}`\n\n{tables(proc.stdout)}"
    doc = DOC.read_text(encoding="utf-8")  # read now: the prose may have been edited meanwhile
    for name, body in bodies.items():
        doc = replace_block(doc, name, body)
    sys.path.insert(0, str(HERE.parent))
    from lazybn._files import atomic_write_bytes

    atomic_write_bytes(DOC, doc.encode("utf-8"))
    print(f"wrote {DOC}")
    print(json.dumps(facts, indent=1))


if __name__ == "__main__":
    main()

"""Start-up of each rule's script: the seconds a fresh Python takes to import what scripts/<rule>.py imports (the
package stages, torch where they need it), best of N fresh processes, and whether torch was imported.

Usage: python tools/job_startup.py [repeats] [checkout]   (prints one row per rule; `checkout` defaults to this
repository: give another checkout, e.g. a `git worktree` of an older commit, to compare)
The Snakemake parse of the workflow (every Slurm job pays it too) is `snakemake -n all` against `snakemake --version`.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def script_imports(script: Path) -> str:
    """The script's own import statements, as code to run."""
    tree = ast.parse(script.read_text())
    return "\n".join(ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))


def startup_seconds(code: str, repeats: int, root: Path) -> tuple[float, bool]:
    probe = code + "\nimport sys\nprint('torch' in sys.modules)"
    best, uses_torch = float("inf"), False
    env = {**os.environ, "PYTHONPATH": str(root)}
    for _ in range(repeats):
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, check=True,
                             env=env)
        best = min(best, time.perf_counter() - start)
        uses_torch = run.stdout.strip() == "True"
    return best, uses_torch


def main(repeats: int = 3, root: Path = ROOT) -> None:
    bare, _ = startup_seconds("", repeats, root)
    print(f"{root}: bare python {bare:.2f} s; per rule, imports of its script (best of {repeats} fresh processes):")
    for script in sorted((root / "scripts").glob("*.py")):
        seconds, uses_torch = startup_seconds(script_imports(script), repeats, root)
        print(f"  {script.stem:<18}{seconds:>6.2f} s   torch: {'yes' if uses_torch else 'no'}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3, Path(sys.argv[2]).resolve() if len(sys.argv) > 2 else ROOT)

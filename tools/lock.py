"""`make lock`: resolve pyproject.toml's dependencies (with the test extra) afresh and write
- requirements.lock: every package of the environment pinned, with the SHA-256 of the file pip chose, which
  `make setup` installs with --require-hashes (the same environment, byte for byte, on every machine of this kind);
- the pip section of envs/iteralite.yaml: the same pins (without hashes, which conda's pip step cannot mix with the
  editable install of the package, and without a local build label such as torch's +cpu).

The resolution is pip's own (`pip install --dry-run --report`), on this machine's Python and platform: a lock made here
holds Linux x86_64 wheels for CPython 3.11; refresh it on the platform you install on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONDA_HEADER = """# For `snakemake --software-deployment-method conda`: the pins of requirements.lock
# (`make lock` writes both; torch without its local build label, so the cluster's index picks its build).
# The default `make run` uses a venv instead; this file is for clusters where conda is the norm.
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - pip:
"""


def resolve() -> list[tuple[str, str, str]]:
    """(name, version, sha256) of every package a fresh install of the project and its test extra takes."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                        "--report", str(report), "-e", ".[test]"], cwd=ROOT, check=True)
        installs = json.loads(report.read_text())["install"]
    pins = []
    for item in installs:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if name == "iteralite":
            continue
        digest = item["download_info"].get("archive_info", {}).get("hashes", {}).get("sha256")
        if not digest:
            raise SystemExit(f"lock: pip gave no SHA-256 for {name} {version}; it must come from an archive")
        pins.append((name, version, digest))
    return sorted(pins, key=lambda p: p[0].lower())


def main() -> None:
    pins = resolve()
    lines = ["# The resolved environment of `make setup`, pinned with hashes. Refresh: make lock (tools/lock.py)."]
    lines += [f"{name}=={version} --hash=sha256:{digest}" for name, version, digest in pins]
    (ROOT / "requirements.lock").write_text("\n".join(lines) + "\n")
    # triton is left to torch: a CUDA build of torch pins the Triton it was built with (the lock's is for the
    # interpreter tests on CPU)
    public = [(name, version.split("+")[0]) for name, version, _ in pins if name != "triton"]
    conda = CONDA_HEADER + "".join(f"      - {name}=={version}\n" for name, version in public) + "      - -e ..\n"
    (ROOT / "envs" / "iteralite.yaml").write_text(conda)
    print(f"requirements.lock and envs/iteralite.yaml: {len(pins)} packages")


if __name__ == "__main__":
    main()

"""`make lock`: resolve pyproject.toml's dependencies afresh and write
- requirements.lock: every package of the environment of `make setup` (the test extra included) pinned, with the
  SHA-256 of the file pip chose, which `make setup` installs with --require-hashes (the same environment, byte for
  byte, on every machine of this kind). Its torch is the CPU build from PyTorch's CPU index (TORCH_INDEX, written
  into the lock's header, where the Makefile reads it);
- requirements-cuda.lock (`make setup TORCH=cuda`): the same pins, but torch's CUDA build from PyPI with the NVIDIA
  libraries and the Triton it requires, and without the test extra's Triton (the interpreter's, for CPU tests);
- the pip section of envs/iteralite.yaml: the CPU pins without hashes and without the local build label (+cpu),
  so the cluster's index picks its build.

The versions in the current lock are kept where they still fit (`make lock ARGS=--upgrade`, or
`python tools/lock.py --upgrade`, moves everything). The resolution is pip's own (`pip install --dry-run --report`),
on this machine's Python and platform, which the
locks' headers record and `make setup` checks (tools/check_platform.py): refresh them on the platform you install
on. The CPU wheel must be reachable: here through pip's configuration, elsewhere with
`PIP_EXTRA_INDEX_URL=<TORCH_INDEX> make lock`.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
CONDA_HEADER = """# For `snakemake --software-deployment-method conda`: the pins of requirements.lock
# (`make lock` writes both; torch without its local build label, so the cluster's index picks its build).
# The default `make run` uses a venv instead; this file is for clusters where conda is the norm. The package
# itself is not installed here: a rule's script imports it through scripts/iteralite, a link to the package
# beside the scripts (Snakemake puts a script's folder on its sys.path).
channels:
  - conda-forge
dependencies:
  - python=3.11
  - pip
  - pip:
"""

Pin = tuple[str, str, str]  # name, version, sha256


def resolve(requirements: list[str], constraints: list[str] = ()) -> list[Pin]:
    """(name, version, sha256) of every package a fresh install of `requirements` takes, within `constraints`."""
    with tempfile.TemporaryDirectory() as tmp:
        report, pinned = Path(tmp) / "report.json", Path(tmp) / "constraints.txt"
        pinned.write_text("".join(f"{line}\n" for line in constraints))
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                        "--report", str(report), "-c", str(pinned), *requirements], cwd=ROOT, check=True)
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


def header(purpose: str, torch_index: str | None) -> list[str]:
    """The lock's first lines: what it is, the interpreter and platform its wheels are for, torch's index."""
    lines = [f"# {purpose}, pinned with hashes. Refresh: make lock (tools/lock.py).",
             f"# python: {sys.version_info.major}.{sys.version_info.minor}",
             f"# platform: {sys.platform} {platform.machine()}"]
    if torch_index:
        lines.append(f"# torch-index: {torch_index}")
    return lines


def write_lock(path: Path, head: list[str], pins: list[Pin]) -> None:
    path.write_text("\n".join(head + [f"{name}=={version} --hash=sha256:{digest}" for name, version, digest in pins])
                    + "\n")


def cuda_pins(cpu: list[Pin]) -> list[Pin]:
    """The CPU pins with torch's CUDA build (`===`: the version without a local label, as PyPI serves it) and what
    it requires; pytest and ruff kept, the test extra's Triton left to torch's own requirement."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    tools = [req for req in extra if not req.startswith("triton")]
    torch_version = next(version for name, version, _ in cpu if name == "torch").split("+")[0]
    same = [f"{name}=={version}" for name, version, _ in cpu if name not in ("torch", "triton")]
    return resolve(["-e", ".", *tools, f"torch==={torch_version}"], same)


def current_pins(path: Path) -> list[str]:
    """The lock's pins as constraints (name==version): a refresh keeps every version it can, as pip-tools and uv do,
    and only adds or moves what pyproject.toml's change needs; `--upgrade` resolves everything afresh."""
    if "--upgrade" in sys.argv[1:] or not path.is_file():
        return []
    return [line.split(" --hash")[0] for line in path.read_text().splitlines() if line and not line.startswith("#")]


def main() -> None:
    cpu = resolve(["-e", ".[test]"], current_pins(ROOT / "requirements.lock"))
    torch = next(version for name, version, _ in cpu if name == "torch")
    if not torch.endswith("+cpu"):
        raise SystemExit(f"lock: pip resolved torch {torch}, not the CPU build: give it PyTorch's CPU index "
                         f"(PIP_EXTRA_INDEX_URL={TORCH_INDEX} make lock)")
    write_lock(ROOT / "requirements.lock", header("The resolved environment of `make setup`", TORCH_INDEX), cpu)
    cuda = cuda_pins(cpu)
    write_lock(ROOT / "requirements-cuda.lock",
               header("The environment of `make setup TORCH=cuda` (torch's CUDA build, from PyPI)", None), cuda)
    # triton is left to torch: a CUDA build of torch pins the Triton it was built with (the lock's is for the
    # interpreter tests on CPU)
    public = [(name, version.split("+")[0]) for name, version, _ in cpu if name != "triton"]
    conda = CONDA_HEADER + "".join(f"      - {name}=={version}\n" for name, version in public)
    (ROOT / "envs" / "iteralite.yaml").write_text(conda)
    print(f"requirements.lock: {len(cpu)} packages, requirements-cuda.lock: {len(cuda)}, envs/iteralite.yaml")


if __name__ == "__main__":
    main()

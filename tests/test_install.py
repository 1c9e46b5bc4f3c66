"""`make setup` from the locks: the interpreter check, where torch comes from, and the CUDA lock's agreement with the
CPU one (an install of the CUDA lock downloads gigabytes, so its content is checked, not installed)."""

import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import check_platform  # noqa: E402
import lock  # noqa: E402

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"  # this interpreter's version


def pins(path: Path) -> dict[str, tuple[str, str]]:
    """name -> (version, sha256) of every line of a lock; every line carries its hash."""
    found = {}
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            continue
        match = re.fullmatch(r"(\S+)==(\S+) --hash=sha256:([0-9a-f]{64})", line)
        assert match, f"{path.name}: {line!r} is no pin with its hash"
        found[match.group(1)] = (match.group(2), match.group(3))
    return found


def test_the_cuda_lock_is_the_cpu_lock_with_torchs_cuda_build():
    cpu, cuda = pins(ROOT / "requirements.lock"), pins(ROOT / "requirements-cuda.lock")
    assert cpu["torch"][0] == "2.13.0+cpu" and cuda["torch"][0] == "2.13.0"
    shared = set(cpu) & set(cuda) - {"torch", "triton"}
    assert {name: cpu[name] for name in shared} == {name: cuda[name] for name in shared}
    assert set(cpu) - set(cuda) == set()  # pytest and ruff too: `make test` runs in either venv
    assert {"nvidia-cublas", "nvidia-cudnn-cu13", "triton"} <= set(cuda) - shared


def test_the_lock_names_the_index_of_its_cpu_torch_and_make_setup_installs_it_from_there():
    header = check_platform.lock_header(str(ROOT / "requirements.lock"))
    assert header["torch-index"] == lock.TORCH_INDEX
    assert "torch-index" not in check_platform.lock_header(str(ROOT / "requirements-cuda.lock"))
    for torch, lock_file, index in (("cpu", "requirements.lock", f"--index-url {lock.TORCH_INDEX}"),
                                    ("cuda", "requirements-cuda.lock", None)):
        plan = subprocess.run(["make", "-n", "-B", "setup", f"TORCH={torch}"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout
        torch_install = plan.split(f"grep '^torch==' {lock_file}")[1].split("-r .venv/torch.lock")[0]
        assert (index in torch_install) if index else "--index-url" not in torch_install, plan
        assert f"--require-hashes --no-deps -r {lock_file}" in plan and f"check_platform.py {lock_file}" in plan


def test_another_python_or_platform_is_refused_in_one_line(tmp_path):
    header = check_platform.lock_header(str(ROOT / "requirements.lock"))
    assert (header["python"], header["platform"]) == ("3.11", "linux x86_64")
    assert check_platform.mismatch(header, "3.11", "linux x86_64") is None
    assert check_platform.mismatch(header, "3.12", "linux x86_64") == (
        "Python 3.12, but the lock holds wheels for CPython 3.11 only")
    assert check_platform.mismatch(header, "3.11", "darwin arm64") == (
        "this platform is darwin arm64, but the lock holds wheels for linux x86_64 only")
    other = tmp_path / "other.lock"
    other.write_text("# python: 2.7\n# platform: linux x86_64\nsix==1.0 --hash=sha256:" + "0" * 64 + "\n")
    run = subprocess.run([sys.executable, str(ROOT / "tools/check_platform.py"), str(other)], capture_output=True,
                         text=True)
    assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
    assert re.fullmatch(r"make setup: \S+ is Python 3\.\d+, but the lock holds wheels for CPython 2\.7 only "
                        rf"\({re.escape(str(other))}\); install CPython 2\.7 and name it: "
                        r"`make setup PYTHON=python2\.7`\n", run.stderr)
    # this interpreter's Python, so that the platform is what differs
    other.write_text(f"# python: {PYTHON}\n# platform: darwin arm64\nsix==1.0 --hash=sha256:" + "0" * 64 + "\n")
    run = subprocess.run([sys.executable, str(ROOT / "tools/check_platform.py"), str(other)], capture_output=True,
                         text=True)
    assert run.returncode == 1 and run.stderr.endswith(  # another Python cannot help here
        'the lock holds wheels for darwin arm64 only (' + str(other) + '); no interpreter here can install it: '
        'docs/install.md, "Other Pythons and platforms"\n'), run.stderr


# interpreters of 2.7-3.9 (the macOS system Python is 3.9): on PATH (not pyenv's shims, which need PYENV_VERSION), or
# pyenv's own
OLD_PYTHONS = sorted({*(path for path in (shutil.which(f"python{v}") for v in ("3.9", "3.8", "2.7"))
                        if path and "/shims/" not in path),
                      *map(str, Path.home().glob(".pyenv/versions/[23].[0-9].*/bin/python[23].[0-9]"))})


@pytest.mark.skipif(not OLD_PYTHONS, reason="no Python older than 3.11 on this machine to run the check with")
def test_an_old_interpreter_gets_the_one_line_refusal_not_a_traceback():
    """macOS's system Python is 3.9: the check must parse and answer under it (no annotations, no f-strings)."""
    for python in OLD_PYTHONS:
        run = subprocess.run([python, str(ROOT / "tools/check_platform.py"), str(ROOT / "requirements.lock")],
                             capture_output=True, text=True)
        assert run.returncode == 1 and run.stderr.count("\n") == 1, (python, run.stderr)
        assert re.match(r"make setup: \S+ is Python [23]\.\d+, but the lock holds wheels for CPython 3\.11 only",
                        run.stderr), run.stderr


def test_a_rule_script_finds_the_package_through_its_own_folder_where_it_is_not_installed(tmp_path):
    """In a conda environment (envs/iteralite.yaml holds the dependencies, not this package) a rule's script imports
    the package through scripts/iteralite, the link beside it: Snakemake appends a script's folder to its sys.path.
    Here an interpreter without site-packages, started elsewhere, finds it so, and it is the package itself."""
    find = ("import importlib.util, sys; sys.path.append(sys.argv[1]); "
            "print(importlib.util.find_spec('iteralite').origin)")
    origin = subprocess.run([sys.executable, "-S", "-c", find, str(ROOT / "scripts")], cwd=tmp_path,
                            capture_output=True, text=True, check=True).stdout.strip()
    assert Path(origin) == ROOT / "scripts/iteralite/__init__.py"
    assert Path(origin).resolve() == (ROOT / "iteralite/__init__.py").resolve()
    assert "-e .." not in (ROOT / "envs/iteralite.yaml").read_text()  # resolved from conda's copy of the file


def test_an_interpreter_without_ensurepip_is_told_which_package_makes_venvs(tmp_path):
    """Debian's and Ubuntu's python3.11 comes without ensurepip (python3.11-venv): `python3 -m venv` would fail
    after the check; the check says so first, in one line."""
    block = ("import runpy, sys; sys.modules['ensurepip'] = None; sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__')")
    lock = tmp_path / "this.lock"  # a lock for this interpreter and platform: only the venv module is missing
    lock.write_text(f"# python: {PYTHON}\n# platform: {sys.platform} {platform.machine()}\n")
    run = subprocess.run([sys.executable, "-c", block, str(ROOT / "tools/check_platform.py"), str(lock)],
                         capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr == (f"make setup: {sys.executable} cannot make a venv (it has no ensurepip module): install "
                          f"your system's venv package, e.g. `apt install python{PYTHON}-venv` on Debian and Ubuntu\n")

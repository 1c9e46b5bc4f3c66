"""`make setup`'s first step: refuse, in one line, an interpreter or platform the lock holds no wheels for.

    python3 tools/check_platform.py requirements.lock

The lock's header names them (`# python: 3.11`, `# platform: linux x86_64`, written by tools/lock.py). Standard
library only: it runs under the interpreter that would make the venv.
"""

import platform
import sys


def lock_header(path: str) -> dict[str, str]:
    """The `# key: value` lines at the top of a lock."""
    header = {}
    with open(path) as lock:
        for line in lock:
            if not line.startswith("#"):
                break
            key, sep, value = line[1:].partition(":")
            if sep and " " not in key.strip():
                header[key.strip()] = value.strip()
    return header


def mismatch(header: dict[str, str], python: str, system: str) -> str | None:
    """Why this interpreter (`python`, "3.11") on this platform (`system`, "linux x86_64") cannot install the lock."""
    if "python" not in header or "platform" not in header:
        return "not checked: the lock's header names no `# python:` or `# platform:` (make lock writes both)"
    if python != header["python"]:
        return f"Python {python}, but the lock holds wheels for CPython {header['python']} only"
    if system != header["platform"]:
        return f"this platform is {system}, but the lock holds wheels for {header['platform']} only"
    return None


def main() -> None:
    path = sys.argv[1]
    header = lock_header(path)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    if sys.implementation.name != "cpython":
        python = f"{sys.implementation.name} {python}"  # the lock's wheels are CPython's
    why = mismatch(header, python, f"{sys.platform} {platform.machine()}")
    if why:
        raise SystemExit(f"make setup: {sys.executable} is {why} ({path}); name another interpreter with "
                         f"PYTHON=, e.g. `make setup PYTHON=python{header.get('python', '3')}`")


if __name__ == "__main__":
    main()

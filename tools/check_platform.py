"""`make setup`'s first step: refuse, in one line, an interpreter or platform the lock holds no wheels for, or an
interpreter that cannot make a venv.

    python3 tools/check_platform.py requirements.lock

The lock's header names them (`# python: 3.11`, `# platform: linux x86_64`, written by tools/lock.py). Standard
library only, in a syntax every Python from 2.7 parses (no f-strings, no annotations): it runs under whatever
interpreter would make the venv, the macOS system Python 3.9 included, and answers each with its one line.
"""

import platform
import sys


def lock_header(path):
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


def mismatch(header, python, system):
    """Why this interpreter (`python`, "3.11") on this platform (`system`, "linux x86_64") cannot install the lock."""
    if "python" not in header or "platform" not in header:
        return "not checked: the lock's header names no `# python:` or `# platform:` (make lock writes both)"
    if python != header["python"]:
        return "Python {}, but the lock holds wheels for CPython {} only".format(python, header["python"])
    if system != header["platform"]:
        return "this platform is {}, but the lock holds wheels for {} only".format(system, header["platform"])
    return None


def advice(header, why):
    """What to install, for the mismatch `why`: another interpreter helps only on the lock's platform."""
    if why.startswith("this platform"):
        return 'no interpreter here can install it: docs/install.md, "Other Pythons and platforms"'
    return "install CPython {0} and name it: `make setup PYTHON=python{0}`".format(header.get("python", "3"))


def can_make_venvs():
    """Whether `python -m venv` can install pip: Debian and Ubuntu ship ensurepip apart from the interpreter."""
    try:
        import ensurepip  # noqa: F401
    except ImportError:
        return False
    return True


def main():
    path = sys.argv[1]
    header = lock_header(path)
    python = "{}.{}".format(sys.version_info[0], sys.version_info[1])
    implementation = getattr(sys, "implementation", None)  # Python 2 has none: it is CPython or says so in its version
    if implementation is not None and implementation.name != "cpython":
        python = "{} {}".format(implementation.name, python)  # the lock's wheels are CPython's
    why = mismatch(header, python, "{} {}".format(sys.platform, platform.machine()))
    if why:
        raise SystemExit("make setup: {} is {} ({}); {}".format(sys.executable, why, path, advice(header, why)))
    if not can_make_venvs():
        raise SystemExit("make setup: {} cannot make a venv (it has no ensurepip module): install your system's "
                         "venv package, e.g. `apt install python{}-venv` on Debian and Ubuntu".format(sys.executable,
                                                                                                python))


if __name__ == "__main__":
    main()

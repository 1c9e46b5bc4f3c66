"""What made an output: the package code a script runs, and fingerprints of resume state.

Snakemake tracks a rule's script file but not the modules it imports. `code_digest` follows a script's imports of
this package statically (every `import`/`from ... import` anywhere in a module, lazy ones included, and every
`facet(..., "<module>")` of the architecture registry as an import of that module of every architecture) and hashes
the source of each module reached; the workflow passes that digest as a rule param, so an edit to a module reruns
exactly the rules whose scripts reach it, and what follows them. `files_digest` tracks the files that ship with the
workflow (the Snakefile and rules for the rule graph, the report's targets, the embedded corpus) the same way:
by their names within the checkout and their content, so that no param or input holds a path of the checkout.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import json
from functools import cache
from pathlib import Path

PACKAGE = "iteralite"
PACKAGE_DIR = Path(__file__).resolve().parent


def module_file(name: str) -> Path | None:
    """The source file of a module of this package ('iteralite.stages.training'), or None if there is none."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(source_path: Path, module: str | None) -> frozenset[str]:
    """Module names a source file imports; relative imports resolved against `module` (None for a script)."""
    source = source_path.read_text(encoding="utf-8")
    return _parsed_imports(source, str(source_path), module, source_path.name == "__init__.py")


@cache
def _parsed_imports(source: str, filename: str, module: str | None, is_package: bool) -> frozenset[str]:
    """Cached by the source text: the closures of a workflow's rules share most modules, and Snakemake digests every
    rule's script at each start; an edited file is parsed afresh."""
    tree = ast.parse(source, filename=filename)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if module is None:
                    continue
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        elif isinstance(node, ast.Call):
            names.update(_facets(node))
    return frozenset(names)


def _facets(call: ast.Call) -> list[str]:
    """The modules a call `facet(architecture, "<module>")` of the registry can import: that module of every
    architecture (those without it are skipped by module_file)."""
    function = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", None)
    if function != "facet" or len(call.args) != 2 or not isinstance(call.args[1], ast.Constant):
        return []
    # imported by name: a static import would make every user of this module reach the registry
    registry = importlib.import_module(f"{PACKAGE}.architectures")
    return [f"{PACKAGE}.architectures.{name}.{call.args[1].value}" for name in registry.ARCHITECTURES]


def _with_parents(name: str) -> list[str]:
    """Importing a.b.c runs a/__init__, a/b/__init__ and a/b/c."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def module_closure(script: Path, module: str | None = None) -> list[str]:
    """Every module of this package that `script` (itself the module `module`, or None for a script outside the
    package) imports, directly or through other modules, sorted."""
    seen: set[str] = {module} if module else set()
    pending = [(Path(script), module)]
    while pending:
        path, module = pending.pop()
        for name in _imported_names(path, module):
            for candidate in _with_parents(name):
                if candidate in seen:
                    continue
                source = module_file(candidate)
                if source is not None:
                    seen.add(candidate)
                    pending.append((source, candidate))
    return sorted(seen)


def file_sha256(path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@cache
def code_digest(script: str | Path, module: str | None = None) -> str:
    """A short hash of the source of every package module `script` reaches (names and contents)."""
    digest = hashlib.sha256()
    for name in module_closure(Path(script), module):
        digest.update(name.encode() + b"\0" + module_file(name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def files_digest(root: str | Path, paths) -> dict[str, str]:
    """Each file by its name relative to `root` and a short hash of its content: the param a rule tracks files with
    that ship with the workflow (its own files, the package's data). A declared input would record the file's path,
    and so rerun everything when the checkout is moved, copied or mounted elsewhere; this changes only with a file's
    name within `root` or its content. A file outside `root` is refused (ValueError)."""
    root = Path(root).resolve()
    named = {Path(path).resolve().relative_to(root).as_posix(): path for path in paths}
    return {name: file_sha256(named[name])[:16] for name in sorted(named)}


def package_files_digest(*paths) -> dict[str, str]:
    """`files_digest` of data files of this package, named as they lie beside it ('iteralite/data/...'), wherever
    the package is installed."""
    return files_digest(PACKAGE_DIR.parent, paths)


def fingerprint(settings: dict, files: dict[str, str | None], code_module: str) -> dict[str, str]:
    """What determines a training run, one digest per part, so a mismatch can say which part changed."""
    parts = {"settings": hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()}
    parts.update({name: file_sha256(path) for name, path in files.items() if path})
    parts["code"] = code_digest(module_file(code_module), code_module)
    return parts

"""The registry's boundaries: one package per architecture, nothing else names them, no import circles."""

import ast
from pathlib import Path

from iteralite import provenance
from iteralite.architectures import ARCHITECTURES

PACKAGE = Path(provenance.__file__).parent
REGISTRY = PACKAGE / "architectures"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path) -> set[str]:
    """The package's modules a module imports (facets included), parents left out."""
    return {n for n in provenance._imported_names(path, name) if provenance.module_file(n) is not None} - {name}


def test_the_package_has_no_import_circle():
    modules = package_modules()
    graph = {name: {n for n in imports_of(name, path) if n in modules and not name.startswith(n + ".")}
             for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for child in sorted(graph[node]):
            assert state.get(child) != "open", f"import circle: {' -> '.join(trail + [node, child])}"
            if child not in state:
                visit(child, trail + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_only_the_registry_names_an_architecture():
    """Outside architectures/, no module imports an architecture's folder, compares an `architecture` with a value
    or writes an architecture's name as a string."""
    names = set(ARCHITECTURES)  # the former names are words too (the readable reference scan)
    for path in PACKAGE.rglob("*.py"):
        if path.is_relative_to(REGISTRY):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not any(f"architectures.{name}" in node.module for name in ARCHITECTURES), (path, node.module)
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                assert not any(isinstance(s, ast.Attribute) and s.attr == "architecture" for s in sides), \
                    f"{path.name}:{node.lineno} compares an architecture"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in names, f"{path.name}:{node.lineno} names {node.value!r}"


def test_an_architecture_folder_imports_no_other_architecture():
    for architecture in ARCHITECTURES:
        for path in (REGISTRY / architecture).glob("*.py"):
            others = {n for n in imports_of(module_name(path), path) if n.startswith("iteralite.architectures.")
                      and not n.startswith(f"iteralite.architectures.{architecture}")}
            assert not others, f"{path} imports {others}"


def test_every_architecture_provides_the_interface():
    from iteralite.architectures import facet
    from iteralite.architectures.configs import config_class

    for architecture in ARCHITECTURES:
        cfg = config_class(architecture)(vocab_size=40, d_model=8, n_layers=2, max_seq=8, d_inner=16, d_state=2,
                                         n_experts=2, expert_hidden=4)
        assert cfg.architecture == architecture and facet(architecture, "config").parameter_count(cfg) > 0
        assert facet(architecture, "groups").build_groups(cfg)
        model = facet(architecture, "model")
        assert model.Model and next(iter(model.training_paths("cpu")))
        assert facet(architecture, "onnx").Builder.TOKEN_TABLE


def test_code_tracking_follows_a_facet_only_into_the_rules_that_use_it():
    """A rule reaches an architecture's groups or graphs only through code that asks the registry for them: an edit
    to a groups.py reruns the pruning jobs, not the baseline."""
    def closure(script):
        return set(provenance.module_closure(PACKAGE.parent / "scripts" / f"{script}.py"))

    groups = {f"iteralite.architectures.{name}.groups" for name in ARCHITECTURES}
    graphs = {f"iteralite.architectures.{name}.onnx" for name in ARCHITECTURES}
    assert groups <= closure("prune") and graphs <= closure("export")
    assert not (groups | graphs) & closure("train_baseline")

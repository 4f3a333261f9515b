"""The layering DEVELOPERS.md describes, read from the sources: the package imports no top-level folder of the
checkout, adapters import no classification-trainer module, benchmarks use no private function of the package,
there is no code under results/ and no import cycle between modules of the package."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "nm_plugins"


def _imports(path: Path) -> list:
    """(module, names) of every import in a file, relative imports resolved."""
    tree = ast.parse(path.read_text())
    parts = path.relative_to(REPO).with_suffix("").parts
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            out.append((module, [a.name for a in node.names]))
    return out


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_package_imports_no_checkout_folder():
    bad = [(str(p.relative_to(REPO)), m) for p in PACKAGE.rglob("*.py") for m, _ in _imports(p)
           if m.split(".")[0] in ("ci", "benchmarks", "tests", "scripts")]
    assert bad == []


def test_adapters_import_no_classification_trainer_module():
    # methods_harness drives both proxy trainers (issue 25's make reproduce-methods): it may import them, and nothing
    # imports it (test_nothing_imports_the_methods_harness)
    bad = [(str(p.relative_to(REPO)), m) for p in PACKAGE.rglob("*.py")
           if p.relative_to(PACKAGE).parts[0] not in ("train", "methods_harness")
           for m, names in _imports(p)
           if m.startswith("nm_plugins.train") or (m == "nm_plugins" and "train" in names)]
    assert bad == []


def test_nothing_imports_the_methods_harness():
    """The harness imports both proxy trainers; an import back would tie an adapter to another."""
    bad = [(str(p.relative_to(REPO)), m) for p in PACKAGE.rglob("*.py")
           if p.relative_to(PACKAGE).parts[0] != "methods_harness"
           for m, names in _imports(p)
           if m.startswith("nm_plugins.methods_harness") or (m == "nm_plugins" and "methods_harness" in names)]
    assert bad == []


def test_benchmarks_use_no_private_function_of_the_package():
    bad = [(str(p.relative_to(REPO)), m, n) for p in (REPO / "benchmarks").glob("*.py") for m, names in _imports(p)
           if m.startswith("nm_plugins") for n in names if n.startswith("_")]
    assert bad == []


def test_no_code_under_results():
    assert sorted(str(p.relative_to(REPO)) for p in (REPO / "results").rglob("*.py")) == []


def test_no_import_cycle_in_the_package():
    """Module-level and function-level imports alike: an edge a -> b for every nm_plugins module b that a imports."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        targets = set()
        for m, names in _imports(path):
            for candidate in [f"{m}.{n}" for n in names] + [m]:
                if candidate in modules and candidate != name and not name.startswith(candidate + "."):
                    targets.add(candidate)
                    break
        edges[name] = targets
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open" and not nxt.endswith("__init__"):
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    # a package __init__ re-exporting its submodules is not a cycle between two modules
    cycles = [c for c in cycles if not any(_is_package(n, modules) for n in c)]
    assert cycles == []


def _is_package(name: str, modules: dict) -> bool:
    return modules[name].name == "__init__.py"

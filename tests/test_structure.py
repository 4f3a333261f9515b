"""The layering DEVELOPERS.md describes, read from the sources: the package imports no top-level folder of the
checkout, adapters import no classification-trainer module, benchmarks use no private function or attribute and
drive the trainers through their entry points, every reproduction builds its command line with runtime.cli, there
is no code under results/ and no import cycle between modules of the package."""
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


def test_benchmarks_read_no_private_attribute():
    """``obj._name`` (a runner's ``_train_loop``, a model's ``_init_model_weights``, ...) is an internal that a
    benchmark would rebuild a trainer's loop with; dunders aside."""
    bad = []
    for p in (REPO / "benchmarks").glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                bad.append((p.name, node.lineno, ast.unparse(node)))
    assert bad == []


# a trainer module's entry points: train (run / main / a Runner), its config, its model as configured
TRAINER_MODULES = ("nm_plugins.train.classify", "nm_plugins.raft.train", "nm_plugins.translation.train",
                   "nm_plugins.mmdet.train")
ENTRY_POINTS = {"run", "main", "load_config", "build_runner", "build_model"}


def test_benchmarks_import_only_the_trainers_entry_points():
    """No benchmark reaches into a trainer's loop (``train_one_epoch``, ``epoch_loader``, ``lr_factor``, its loss
    or data code): a benchmark that trains goes through the trainer's entry point and config."""
    bad = [(p.name, m, n) for p in (REPO / "benchmarks").glob("*.py") for m, names in _imports(p)
           if m in TRAINER_MODULES for n in names if n not in ENTRY_POINTS]
    assert bad == []
    smoke = {m for m, _ in _imports(REPO / "benchmarks" / "gpu_smoke.py")}
    assert not smoke & {"nm_plugins.raft.metrics", "nm_plugins.raft.model", "nm_plugins.raft.datasets",
                        "nm_plugins.translation.model", "nm_plugins.timm"}  # the trainers build those themselves


def test_every_reproduction_builds_its_command_line_with_runtime_cli():
    entries = sorted(p for p in PACKAGE.glob("*/reproduce.py") if p.parent.name != "runtime")  # runtime: shared code
    assert {p.parent.name for p in entries} == {"train", "mmdet", "raft", "translation", "methods_harness"}
    for path in entries:
        imports = _imports(path)
        assert ("nm_plugins.runtime.cli", ["reproduce_parser"]) in imports, path
        tree = ast.parse(path.read_text())
        main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
        calls = {ast.unparse(n.func) for n in ast.walk(main) if isinstance(n, ast.Call)}
        assert "reproduce_parser" in calls, path
        assert not any(c.endswith("ArgumentParser") for c in calls), path


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

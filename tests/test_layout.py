"""The layout stays true: imports run one way down the pipeline, with no cycles, no relative
imports and no reaching into another module's private names; inside a package, its own rules
(train/ reaches train/aml/ only through the target interface). Every import counts, including
those inside functions (phi3e2e imports heavy libraries lazily, so many of its own imports sit in
function bodies); only `if TYPE_CHECKING:` imports, which never run, are left out.

Each check is a function of an import graph, so the self-tests below feed it small synthetic
graphs and show that it catches what it looks for (and passes what it should).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "phi3e2e"

# Highest first: a module may import from its own layer's package or from any layer below it.
# Names in one tuple are independent siblings: neither imports the other.
LAYERS = [
    ("cli",),
    ("serve", "doctor", "share", "deploy"),
    ("pipeline", "sweep"),
    ("evaluate", "train"),
    ("build",),
    ("infer",),
    ("prepare",),
    ("runs",),
    ("workflow",),
    ("project", "chat_format", "resources"),
    ("storage", "machine"),
    ("errors",),
]
# Rules inside a package: (package, subpackage, the modules of the package allowed to import the subpackage).
# train/ hands a run to a target through train/targets.py (which names each target's module, loaded on use);
# no other train/ module reaches into train/aml/.
INNER_RULES = [("phi3e2e.train", "phi3e2e.train.aml", {"phi3e2e.train.targets"})]

Graph = dict[str, list[tuple[str, str, int]]]  # module -> (imported module, imported name or "", line)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (they never run)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", "")) == "TYPE_CHECKING":
            skipped |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return skipped


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(imported phi3e2e module, imported name or "", line) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_only(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names if alias.name.startswith("phi3e2e")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("phi3e2e"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in modules:  # `from phi3e2e import runs`: the module itself
                    found.append((submodule, "", node.lineno))
                else:
                    found.append((node.module, alias.name, node.lineno))
    return found


def relative_imports(path: Path) -> list[int]:
    return [node.lineno for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.ImportFrom) and node.level > 0]  # fmt: skip


def graph() -> Graph:
    modules = all_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def layer_of(module: str, layers: list[tuple[str, ...]] = LAYERS) -> int | None:
    part = module.split(".")[1] if "." in module else None
    for index, names in enumerate(layers):
        if part in names:
            return index
    return None


def upward_imports(imports: Graph, layers: list[tuple[str, ...]] = LAYERS) -> list[str]:
    """Imports of a sibling or a higher layer (within one top-level package anything goes)."""
    wrong = []
    for module, imported in imports.items():
        here = layer_of(module, layers)
        for target, _, line in imported:
            there = layer_of(target, layers)
            if here is None or there is None or target.split(".")[1] == module.split(".")[1]:
                continue
            if there <= here:
                wrong.append(f"{module}:{line} imports {target}")
    return wrong


def inner_rule_breaks(imports: Graph, rules=INNER_RULES) -> list[str]:
    wrong = []
    for package, subpackage, gateways in rules:
        for module, imported in imports.items():
            inside = module.startswith(package + ".") and not (module + ".").startswith(subpackage + ".")
            if not inside or module in gateways:
                continue
            wrong += [f"{module}:{line} imports {target}" for target, _, line in imported
                      if (target + ".").startswith(subpackage + ".")]  # fmt: skip
    return wrong


def import_cycles(imports: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    edges = {module: {target for target, _, _ in imported if target != module} for module, imported in imports.items()}
    cycles, index, low, stack, on_stack = [], {}, {}, [], set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in edges:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in edges:
        if module not in index:
            visit(module)
    return cycles


def private_imports(imports: Graph) -> list[str]:
    return [
        f"{module}:{line} imports {target}.{name}"
        for module, imported in imports.items()
        for target, name, line in imported
        if name.startswith("_") and not name.startswith("__") and target != module
    ]


# --- The package as it is ---------------------------------------------------------------------


def test_every_module_has_a_layer():
    unplaced = [name for name in all_modules() if "." in name and layer_of(name) is None]
    assert unplaced == ["phi3e2e.__main__"]


def test_imports_run_one_way_down_the_layers():
    assert upward_imports(graph()) == []


def test_train_reaches_azure_ml_only_through_the_target_interface():
    assert inner_rule_breaks(graph()) == []


def test_no_import_cycles():
    assert import_cycles(graph()) == []


def test_no_module_imports_another_modules_private_names():
    assert private_imports(graph()) == []


def test_the_azure_ml_entry_script_imports_nothing_of_phi3e2e():
    """It runs on the node without phi3e2e installed: that is why it keeps copies (pinned in test_aml_entry.py
    and test_checkpoints.py)."""
    assert graph()["phi3e2e.train.aml.compute_entry"] == []


def test_no_relative_imports():
    found = [f"{name}:{line}" for name, path in all_modules().items() for line in relative_imports(path)]
    assert found == []


# --- The checks catch what they look for ------------------------------------------------------


def test_the_graph_reader_sees_function_level_imports_private_names_and_relative_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import phi3e2e.cli.chat\n"
                      "def f():\n    from phi3e2e.train.local import _secret\n    import phi3e2e.cli.app\n"
                      "from . import sibling\n")  # fmt: skip
    modules = {"phi3e2e.train.local": Path("x"), "phi3e2e.cli.app": Path("y")}
    assert imports_of(sample, modules) == [("phi3e2e.train.local", "_secret", 5), ("phi3e2e.cli.app", "", 6)]
    assert relative_imports(sample) == [7]
    assert private_imports({"phi3e2e.cli.app": imports_of(sample, modules)}) == [
        "phi3e2e.cli.app:5 imports phi3e2e.train.local._secret"]


def test_the_direction_check_catches_an_upward_or_sideways_import_and_passes_a_downward_one():
    layers = [("top",), ("left", "right"), ("bottom",)]
    good = {"p.top.a": [("p.left.b", "", 1), ("p.bottom", "", 2)], "p.left.b": [("p.bottom", "", 3), ("p.left.c", "", 4)]}
    assert upward_imports(good, layers) == []
    bad = {"p.bottom": [("p.top.a", "", 7)], "p.left.b": [("p.right", "", 8)]}
    assert upward_imports(bad, layers) == ["p.bottom:7 imports p.top.a", "p.left.b:8 imports p.right"]


def test_the_cycle_finder_finds_every_cycle_and_nothing_else():
    acyclic = {"a": [("b", "", 1)], "b": [("c", "", 1)], "c": [], "d": [("b", "", 1)]}
    assert import_cycles(acyclic) == []
    cyclic = {"a": [("b", "", 1)], "b": [("c", "", 1)], "c": [("a", "", 1)], "d": [("e", "", 1)], "e": [("d", "", 1)],
              "f": [("a", "", 1)]}  # fmt: skip
    assert sorted(import_cycles(cyclic)) == [["a", "b", "c"], ["d", "e"]]


def test_the_inner_rule_catches_train_reaching_into_aml_outside_the_gateway():
    rules = [("phi3e2e.train", "phi3e2e.train.aml", {"phi3e2e.train.targets"})]
    imports = {"phi3e2e.train.targets": [("phi3e2e.train.aml.target", "", 1)],
               "phi3e2e.train.aml.submit": [("phi3e2e.train.plan", "", 2), ("phi3e2e.train.aml.job", "", 3)],
               "phi3e2e.train.plan": [("phi3e2e.train.aml.job", "", 4)],
               "phi3e2e.cli.jobs": [("phi3e2e.train.aml.jobs", "", 5)]}  # fmt: skip
    assert inner_rule_breaks(imports, rules) == ["phi3e2e.train.plan:4 imports phi3e2e.train.aml.job"]


def test_test_files_share_helpers_only_through_helpers_py():
    """Fixtures come from conftest.py by pytest's own lookup; shared code from helpers.py; no test file imports
    another (or conftest), so each can be read, run and moved on its own."""
    found = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            found += [f"{path.name}:{node.lineno} imports {name}" for name in names
                      if name == "conftest" or name.startswith("test_")]  # fmt: skip
    assert found == []

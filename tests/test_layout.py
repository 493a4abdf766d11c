"""The layout stays true: imports run one way down the pipeline, with no cycles and no reaching
into another module's private names. Every import counts, including those inside functions
(phi3e2e imports heavy libraries lazily, so many of its own imports sit in function bodies).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "phi3e2e"

# Highest first: a module may import from its own layer's package or from any layer below it.
# Names in one tuple are independent siblings: neither imports the other.
LAYERS = [
    ("cli",),
    ("serve",),
    ("evaluate", "train"),
    ("infer",),
    ("prepare",),
    ("run_overview",),
    ("runs",),
    ("workflow",),
    ("project", "chat_format", "plots", "resources"),
    ("storage",),
    ("errors",),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(path: Path, modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(imported phi3e2e module, imported name or "", line) for every import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
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


def graph() -> dict[str, list[tuple[str, str, int]]]:
    modules = all_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def layer_of(module: str) -> int | None:
    part = module.split(".")[1] if "." in module else None
    for index, names in enumerate(LAYERS):
        if part in names:
            return index
    return None


def test_every_module_has_a_layer():
    unplaced = [name for name in all_modules() if "." in name and layer_of(name) is None]
    assert unplaced == ["phi3e2e.__main__"]


def test_imports_run_one_way_down_the_layers():
    wrong = []
    for module, imported in graph().items():
        here = layer_of(module)
        for target, _, line in imported:
            there = layer_of(target)
            if here is None or there is None or target.split(".")[1] == module.split(".")[1]:
                continue
            if there <= here:  # same layer (a sibling) or a higher one
                wrong.append(f"{module}:{line} imports {target}")
    assert wrong == []


def test_no_import_cycles():
    edges = {module: {target for target, _, _ in imported if target != module} for module, imported in graph().items()}
    cycles, index, low, stack, on_stack = [], {}, {}, [], set()

    def visit(node: str) -> None:  # Tarjan's strongly connected components
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
    assert cycles == []


def test_no_module_imports_another_modules_private_names():
    private = [
        f"{module}:{line} imports {target}.{name}"
        for module, imported in graph().items()
        for target, name, line in imported
        if name.startswith("_") and not name.startswith("__") and target != module
    ]
    assert private == []


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The graph reader sees function-level imports and private names (so the tests above can fail)."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from phi3e2e.train.local import _secret\n    import phi3e2e.cli.app\n")
    modules = {"phi3e2e.train.local": Path("x"), "phi3e2e.cli.app": Path("y")}
    assert imports_of(sample, modules) == [("phi3e2e.train.local", "_secret", 2), ("phi3e2e.cli.app", "", 3)]
    assert layer_of("phi3e2e.cli.app") < layer_of("phi3e2e.train.local") < layer_of("phi3e2e.errors")

"""The package's structure: layers that import only downwards, two halves that never import each other, no import
cycle, no private name imported across modules."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "siamdiff"
# each layer may import itself and the layers before it
LAYERS = ["core", "data", "training", "nets", "similarity|reconstruction", "web", "cli|demo|__init__|__main__"]


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """``(imported module, imported names)`` for every import of ``siamdiff`` modules in the file, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "siamdiff":
                found.append((module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.split(".")[0] == "siamdiff"]
    return found


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names.split("|"))


def test_layers_import_only_downwards_and_the_halves_stay_apart():
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        for module, _ in _imports(name, path):
            if module in modules or module + ".__init__" in modules or module == "siamdiff":
                if module == "siamdiff" or _layer(module) > _layer(name):
                    wrong.append(f"{name} imports {module}")
                halves = {name.split(".")[1:2][0] if "." in name else "", module.split(".")[1:2][0] if "." in
                          module else ""}
                if halves == {"similarity", "reconstruction"}:
                    wrong.append(f"{name} imports {module}")
    assert not wrong, wrong


def test_no_private_name_is_imported_across_modules():
    modules = _modules()
    wrong = [f"{name} imports {n} from {module}" for name, path in modules.items()
             for module, names in _imports(name, path) for n in names
             if n.startswith("_") and not n.startswith("__")]
    assert not wrong, wrong


def test_no_import_cycle():
    modules = _modules()
    graph = {name: {m if m in modules else m + ".__init__" for m, _ in _imports(name, path)}
             & set(modules) for name, path in modules.items()}
    graph = {name: {m.removesuffix(".__init__") if m.endswith(".__init__") and m != name else m for m in deps}
             for name, deps in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            dep = dep if dep in graph else dep + ".__init__"
            if state.get(dep) == 1:
                cycles.append(trail[trail.index(dep):] + [dep] if dep in trail else [node, dep])
            elif dep in graph and not state.get(dep):
                visit(dep, trail + [dep])
        state[node] = 2

    for name in graph:
        if not state.get(name):
            visit(name, [name])
    assert not cycles, cycles

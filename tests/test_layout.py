"""The package's structure: every module is in the layout page, and no module imports itself back through others."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "rlpt"
LAYOUT = (SRC.parent.parent / "docs" / "layout.md").read_text()


def imports() -> dict[str, set[str]]:
    """Module -> the rlpt modules it imports, at its top or inside functions."""
    graph = {}
    for file in SRC.rglob("*.py"):
        name = ".".join(file.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlpt"):
                found.add(node.module)
                found.update(f"rlpt.{a.name}" for a in node.names if node.module == "rlpt")
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("rlpt"))
        graph[name] = found - {name}
    return graph


def test_no_import_cycles():
    graph = imports()
    for start in graph:  # a module that can reach itself through the others is in a cycle
        seen, frontier = set(), [m for m in graph[start] if m in graph]
        while frontier:
            module = frontier.pop()
            assert module != start, f"{start} imports itself back through {sorted(seen)}"
            if module not in seen:
                seen.add(module)
                frontier.extend(m for m in graph[module] if m in graph)


def test_every_module_is_in_the_layout():
    for file in SRC.glob("*.py"):
        if file.name not in ("__init__.py", "__main__.py"):
            assert f"  {file.name} " in LAYOUT, f"{file.name} is missing from docs/layout.md"

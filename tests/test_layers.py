"""The layer order of DESIGN.md: a module imports only from its own layer or the layers below it.

Every import counts, function-local ones too (a local import that hides a cycle is still a cycle);
the package root (``refusal_steer/__init__.py``, the public face) sits above everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import refusal_steer

PACKAGE = Path(refusal_steer.__file__).parent

LAYERS: list[tuple[str, ...]] = [
    ("errors", "atomic", "paths", "pinned", "stages"),
    ("models", "data"),
    ("hooks",),
    ("interventions",),
    ("batching", "generation", "activations"),
    ("scoring",),
    ("sae", "directions", "features", "probes"),
    ("evaluation",),
    ("runs", "report", "sweeps"),
    ("cli", "server", "demo"),
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _top(module: Path) -> str:
    return module.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported(module: Path) -> list[tuple[int, str]]:
    """(line, top-level project module) for every project import in ``module``."""
    tree = ast.parse(module.read_text())
    package_parts = module.relative_to(PACKAGE).parent.parts
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package_parts[: len(package_parts) - (node.level - 1)])
                target = base + (node.module.split(".") if node.module else [])
                if not target:  # "from .. import x" at the root: x is a top-level module
                    out.extend((node.lineno, alias.name) for alias in node.names)
                    continue
                out.append((node.lineno, target[0]))
            elif node.module and node.module.split(".")[0] == "refusal_steer":
                parts = node.module.split(".")
                if len(parts) > 1:
                    out.append((node.lineno, parts[1]))
                else:
                    out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "refusal_steer" and len(parts) > 1:
                    out.append((node.lineno, parts[1]))
    return out


def test_every_top_level_module_has_a_layer():
    tops = {_top(p) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE}
    tops -= {"__init__", "__main__", "_version"}
    assert sorted(tops - set(LAYER_OF)) == []


def test_no_module_imports_from_a_higher_layer():
    violations = []
    for module in sorted(PACKAGE.rglob("*.py")):
        if module == PACKAGE / "__init__.py":
            continue
        own = LAYER_OF[_top(module)]
        for line, target in _imported(module):
            if target == "__version__" or target not in LAYER_OF:
                continue
            if LAYER_OF[target] > own:
                violations.append(f"{module.relative_to(PACKAGE)}:{line} imports {target} (layer {LAYER_OF[target]} > {own})")
    assert violations == []


def test_the_checker_sees_a_violation(tmp_path):
    """The checker is not vacuous: an upward import, even inside a function, is reported."""
    fake = PACKAGE / "hooks.py"
    source = fake.read_text()
    tree_imports = _imported(fake)
    assert all(LAYER_OF.get(t, 0) <= LAYER_OF["hooks"] for _, t in tree_imports)
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from refusal_steer.directions import io\n")
    found = [t for _, t in ast_imports(probe)]
    assert found == ["directions"] and LAYER_OF["directions"] > LAYER_OF["hooks"]
    assert source  # hooks.py itself was read


def ast_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    return [(n.lineno, n.module.split(".")[1]) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("refusal_steer.")]

"""The package's rooms: imports only go down, no module imports itself back, the Hub code stands alone.

The rule, lowest room first: modeling_pathflip (its own import root, carried by Hub repos) < pathflip.configs
(recipes, data only) < pathflip.files < pathflip.processing < pathflip.eval < pathflip.model_cards <
pathflip.conversion < pathflip.training < pathflip.synthetic < pathflip.demo < pathflip.viewer < pathflip.cli.
A room may import the rooms below it, never one above.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import name -> folder (or file) in the repository, as pyproject's package-dir maps them
LOCATIONS = {
    "modeling_pathflip": ROOT / "modeling_pathflip",
    "pathflip.processing": ROOT / "processing",
    "pathflip.eval": ROOT / "eval",
    "pathflip.model_cards": ROOT / "model_cards",
    "pathflip.configs": ROOT / "configs",
    "pathflip": ROOT / "pathflip",
}
ROOMS = ["modeling_pathflip", "pathflip.configs", "pathflip.files", "pathflip.processing", "pathflip.eval",
         "pathflip.model_cards", "pathflip.conversion", "pathflip.training", "pathflip.synthetic", "pathflip.demo",
         "pathflip.viewer", "pathflip.cli"]  # fmt: skip
# the package root only says its version; train.py only hands over to `pathflip train` (the same one-line errors)
EXTRA_RULES = {"pathflip": set(), "train": {"pathflip.cli"}}
HUB_CODE_MAY_IMPORT = {"torch", "transformers", "faiss"}  # faiss: optional, inside a function, for retrieval


def modules() -> dict[str, Path]:
    """Every module of the distribution (plus train.py), by its import name."""
    found = {"train": ROOT / "train.py"}
    for name, location in LOCATIONS.items():
        for path in sorted(location.rglob("*.py")):
            relative = path.relative_to(location).with_suffix("").parts
            if "modules" in relative[:1] and name == "pathflip.eval" and len(relative) > 2:
                continue  # evaluate metric scripts, loaded by path
            if name == "pathflip" and relative[0] in ("processing", "eval", "model_cards"):
                continue
            parts = relative[:-1] if relative[-1] == "__init__" else relative
            found.setdefault(".".join((name, *parts)), path)
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules (known ones resolved to the module, others to their top-level name) that ``path`` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return targets


def room(module: str) -> str:
    """The room of a known module: the longest room name it starts with."""
    matches = [r for r in ROOMS + list(EXTRA_RULES) if module == r or module.startswith(r + ".")]
    return max(matches, key=len)


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_room_imports_only_rooms_below_it():
    edges, known = graph(), modules()
    violations = []
    for module, targets in edges.items():
        source = room(module)
        for target in (t for t in targets if t in known or t.split(".")[0] in ("pathflip", "modeling_pathflip")):
            destination = room(target) if target in known else target
            if destination == source:
                continue
            if source in EXTRA_RULES:
                allowed = destination in EXTRA_RULES[source] or destination == "pathflip"
            else:
                allowed = destination in ROOMS[: ROOMS.index(source)] or destination == "pathflip"
            if source == "modeling_pathflip" or not allowed:
                violations.append(f"{module} ({source}) imports {target} ({destination})")
    assert not violations, "\n".join(violations)


def test_the_hub_code_imports_only_torch_transformers_and_the_standard_library():
    edges = graph()
    outside = {
        f"{module} imports {target}"
        for module, targets in edges.items()
        if module.startswith("modeling_pathflip")
        for target in targets
        if not target.startswith("modeling_pathflip")
        and target.split(".")[0] not in sys.stdlib_module_names | HUB_CODE_MAY_IMPORT | {"__future__"}
    }
    assert not outside, sorted(outside)


def test_no_import_cycles():
    edges = graph()
    known = set(edges)
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(t for t in edges[module] if t in known):
            if state.get(target) == 1:
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = 2

    for module in sorted(known):
        if module not in state:
            visit(module, [module])
    # A package's __init__ importing its own modules, which import siblings, is not a cycle.
    cycles = [cycle for cycle in cycles if not _package_init_pattern(cycle)]
    assert not cycles, "\n".join(cycles)


def _package_init_pattern(cycle: str) -> bool:
    parts = cycle.split(" -> ")
    return any(b.startswith(a + ".") for a, b in zip(parts, parts[1:], strict=False))


def test_no_generic_top_level_names_are_imported():
    generic = {"processing", "eval", "model_cards"}
    found = [f"{module}: {target}" for module, targets in graph().items() for target in targets
             if target.split(".")[0] in generic]  # fmt: skip
    assert not found, found

"""The never-arrows of ARCHITECTURE.md hold: no module of a room imports a room it must not (read
from the source with `ast`, so an import inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEVER = {
    "registry": {"evaluator", "dashboard", "evalboard"},
    "evaluator": {"dashboard", "evalboard"},
    "dashboard": {"evaluator", "evalboard"},
}


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_room_imports_a_room_it_must_not() -> None:
    crossings = [
        f"{path.relative_to(ROOT)} imports {', '.join(sorted(bad))}"
        for room, forbidden in NEVER.items()
        for path in sorted((ROOT / room).rglob("*.py"))
        if (bad := _imported_roots(path) & forbidden)
    ]
    assert not crossings, "never-arrows of ARCHITECTURE.md crossed:\n" + "\n".join(crossings)


def test_the_rule_sees_an_import_inside_a_function(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from evaluator.service import Evaluator\n    import dashboard.data\n")
    assert _imported_roots(probe) == {"evaluator", "dashboard"}

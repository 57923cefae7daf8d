"""README and code agree on the environment: every `EVALBOARD_*` variable the README documents is
read somewhere in the code, and every one the code reads is documented in the README's table."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = re.compile(r"\bEVALBOARD_[A-Z0-9_]*[A-Z0-9]\b")
# Where variables are read: the product, and the test set-up that the README documents for CI.
READERS = ("evaluator", "registry", "dashboard", "evalboard", "tests/_infra")


def _in_code() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for room in READERS:
        for path in sorted((ROOT / room).rglob("*.py")):
            for name in set(NAME.findall(path.read_text(encoding="utf-8"))):
                found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def _documented() -> set[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return {m.group(1) for m in re.finditer(r"^\| `(EVALBOARD_[A-Z0-9_]+)` \|", readme, re.MULTILINE)}


def test_every_variable_the_code_reads_is_in_the_readme_table() -> None:
    missing = {name: where for name, where in _in_code().items() if name not in _documented()}
    assert not missing, f"read by the code but not in README's variable table: {missing}"


def test_every_variable_the_readme_names_is_read_by_the_code() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    stale = set(NAME.findall(readme)) - set(_in_code())
    assert not stale, f"README documents variables no code reads: {sorted(stale)}"
    assert _documented(), "README's variable table was not found"

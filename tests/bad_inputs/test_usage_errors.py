"""Usage errors. `--help` stays rich; a usage error (a missing or unknown option, a
value of the wrong type or out of range) is one line on stderr that names the option, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bad_inputs._helpers import cli, refusal

CASES = [
    (["eval", "checkpoint_1"], "--evalset", "Missing option"),
    (["eval"], "checkpoints", "Missing argument"),
    (["scan", ".", "--bogus"], "--bogus", "No such option"),
    (["enqueue", "c", "--evalset", "e", "--max-attempts", "0"], "--max-attempts", "Invalid value"),
    (["enqueue", "c", "--evalset", "e", "--max-attempts", str(10**12)], "--max-attempts", "Invalid value"),
    (["eval", "c", "--evalset", "e", "--max-examples", "many"], "--max-examples", "Invalid value"),
    (["scan", ".", "--interval", "soon"], "--interval", "Invalid value"),
    (["audit", "--severity", "loud"], "--severity", "must be one of"),
    (["jobs", "frobnicate"], "frobnicate", "No such command"),
    (["scan", ".", "--watch"], "--watch needs --evalset", "Invalid value"),
    (["dashboard", "--port", "-1"], "--port", "between 0 and 65535"),
    (["dashboard", "--port", "99999"], "--port", "between 0 and 65535"),
    (["dashboard", "--host", "no-such-host.invalid"], "--host", "cannot serve on"),
]


@pytest.mark.parametrize("args, names, says", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_a_usage_error_is_one_line_naming_the_option(tmp_path: Path, args, names, says) -> None:
    home = tmp_path / "home"
    reason = refusal(cli(args, home=home, timeout=60), names, says)
    assert f"see evalboard {args[0]}" in reason
    assert not home.exists()  # nothing ran


def test_help_stays_rich(tmp_path: Path) -> None:
    proc = cli(["eval", "--help"], home=tmp_path / "home", timeout=60)
    assert proc.returncode == 0
    assert "--evalset" in proc.stdout and "Usage:" in proc.stdout and "─" in proc.stdout

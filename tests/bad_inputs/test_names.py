"""Names. A run folder named `a,b` can be exported: `--run` takes one name as written
(repeatable) or a registry id; `--runs` keeps splitting on commas."""

from __future__ import annotations

import pytest

from tests._infra.workspace import write_rows
from tests.bad_inputs._helpers import cli, refusal, scan, state


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("names")
    home = tmp_path / "home"
    write_rows(tmp_path / "outputs" / "a,b" / "checkpoint_100", step=100)
    write_rows(tmp_path / "outputs" / "plain" / "checkpoint_100", step=100)
    scan(home, tmp_path / "outputs")
    return home, tmp_path


def test_a_run_with_a_comma_in_its_name_is_exported_with_run(runs) -> None:
    home, tmp = runs
    out = tmp / "report.md"
    proc = cli(["export", "--run", "a,b", "--run", "plain", "--format", "md", "--out", out], home=home, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "a,b" in text and "plain" in text
    assert "2 runs" in proc.stderr


def test_a_run_is_exported_by_its_registry_id(runs) -> None:
    from registry.store import Registry

    home, tmp = runs
    with Registry(f"sqlite:///{home / 'registry.db'}") as reg:
        run_id = reg.get_run(name="a,b").id
    out = tmp / "by-id.md"
    proc = cli(["export", "--run", str(run_id), "--format", "md", "--out", out], home=home, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "a,b" in out.read_text()


def test_runs_still_splits_on_commas_and_says_which_names_are_unknown(runs) -> None:
    home, tmp = runs
    out = tmp / "never.md"
    before = state(home)
    refusal(
        cli(["export", "--runs", "a,b", "--format", "md", "--out", out], home=home, timeout=60),
        "unknown runs: a, b",
        "known: a,b, plain",
    )
    assert not out.exists() and state(home) == before


def test_export_without_runs_names_the_options(runs) -> None:
    home, tmp = runs
    refusal(cli(["export", "--out", tmp / "x.md"], home=home, timeout=60), "--run NAME", "--runs")

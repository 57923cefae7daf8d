"""Writes that cannot destroy what they do not own.

A teammate who can write into a shared outputs folder (or the folder a report goes to) plants
links where evalboard writes: at the old fixed temporary name of an export (`.<out>.tmp`), at the
report path itself, at the `eval_step<N>.json` an eval writes next to a checkpoint. None is ever
followed: the file a link points at is unchanged, and a link at the target is replaced by the file
evalboard meant to write (or, next to a checkpoint, left alone with the result written beside it). A read-only report is replaced only with `--force`; a failed write leaves neither
a temporary nor a changed target; `materialize` refuses a target that is not a new or empty folder.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from registry.atomic import atomic_file, atomic_folder, write_file
from registry.errors import InvalidInput
from tests._infra.workspace import write_rows
from tests.bad_inputs._helpers import cli, refusal, scan, scanned_workspace, state

VICTIM_TEXT = "the user's own file\n"
EVALSET = "synthetic-a2t-i2t"


def _victim(tmp: Path) -> Path:
    victim = tmp / "elsewhere" / "precious.txt"
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_text(VICTIM_TEXT)
    return victim


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --- the one helper every writer uses ----------------------------------------------------------


def test_a_link_at_the_target_is_replaced_never_followed(tmp_path) -> None:
    victim = _victim(tmp_path)
    out = tmp_path / "out" / "report.md"
    out.parent.mkdir()
    out.symlink_to(victim)
    (out.parent / f".{out.name}.tmp").symlink_to(victim)  # the name a naive writer would use

    write_file(out, "# report\n")

    assert victim.read_text() == VICTIM_TEXT
    assert not out.is_symlink() and out.read_text() == "# report\n"
    assert _names(out.parent) == {"report.md", ".report.md.tmp"}  # the planted link untouched


def test_a_failure_half_way_leaves_the_target_and_its_folder_as_they_were(tmp_path) -> None:
    out = tmp_path / "result.json"
    out.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_file(out) as fh:
        fh.write(b"half a fi")
        raise RuntimeError("disk went away")
    assert out.read_text() == "old\n" and _names(tmp_path) == {"result.json"}

    final = tmp_path / "snapshot"
    with pytest.raises(RuntimeError), atomic_folder(final) as tmp:
        (tmp / "model.safetensors").write_bytes(b"x" * 10)
        raise RuntimeError("killed")
    assert _names(tmp_path) == {"result.json"}


def test_existing_read_only_and_non_file_targets(tmp_path) -> None:
    out = tmp_path / "kept.csv"
    out.write_text("mine\n")
    with pytest.raises(InvalidInput, match="already exists"):
        write_file(out, "new\n", overwrite=False)
    out.chmod(0o444)
    with pytest.raises(InvalidInput, match="read-only") as e:
        write_file(out, "new\n")
    assert str(out) in str(e.value) and out.read_text() == "mine\n"
    write_file(out, "new\n", force=True)
    assert out.read_text() == "new\n"
    with pytest.raises(InvalidInput, match="is a folder"):
        write_file(tmp_path, "x")
    assert _names(tmp_path) == {"kept.csv"}


def test_a_folder_replaces_only_an_empty_folder(tmp_path) -> None:
    full, empty = tmp_path / "full", tmp_path / "empty"
    full.mkdir()
    (full / "theirs.txt").write_text("x")
    empty.mkdir()
    with pytest.raises(InvalidInput, match="not empty"), atomic_folder(full, replace_empty=True) as tmp:
        (tmp / "a").write_text("a")
    assert _names(full) == {"theirs.txt"}
    with atomic_folder(empty, replace_empty=True) as tmp:
        (tmp / "a").write_text("a")
    assert _names(empty) == {"a"} and stat.S_IMODE(os.stat(empty).st_mode) == 0o755
    assert _names(tmp_path) == {"full", "empty"}


# --- export ------------------------------------------------------------------------------------


@pytest.fixture
def run(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    write_rows(tmp_path / "outputs" / "run_a" / "checkpoint_100", step=100)
    scan(home, tmp_path / "outputs")
    return home


def test_export_never_writes_through_a_planted_link(run, tmp_path) -> None:
    victim = _victim(tmp_path)
    out = tmp_path / "reports" / "r.md"
    out.parent.mkdir()
    (out.parent / ".r.md.tmp").symlink_to(victim)
    out.symlink_to(victim)

    proc = cli(["export", "--run", "run_a", "--format", "md", "--out", out], home=run, timeout=60)

    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == VICTIM_TEXT
    assert not out.is_symlink() and "evalboard report" in out.read_text()
    assert _names(out.parent) == {"r.md", ".r.md.tmp"}


def test_export_over_a_read_only_file_needs_force(run, tmp_path) -> None:
    out = tmp_path / "r.md"
    out.write_text(VICTIM_TEXT)
    out.chmod(0o444)
    before = state(run)
    refusal(cli(["export", "--run", "run_a", "--format", "md", "--out", out], home=run, timeout=60), out, "read-only")
    assert out.read_text() == VICTIM_TEXT and state(run) == before

    proc = cli(["export", "--run", "run_a", "--format", "md", "--out", out, "--force"], home=run, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "evalboard report" in out.read_text()


@pytest.mark.parametrize("runs", ["", ",", " , "])
def test_export_with_an_empty_runs_list_is_refused(run, tmp_path, runs) -> None:
    out = tmp_path / "r.md"
    refusal(cli(["export", "--runs", runs, "--out", out], home=run, timeout=60), "--run NAME", "--runs")
    assert not out.exists()


# --- eval and materialize: files next to checkpoints and model snapshots ------------------------


@pytest.fixture
def scanned(workspace, tmp_path):
    home = tmp_path / "home"
    return workspace, home, scanned_workspace(workspace, home, EVALSET)


@pytest.mark.slow
def test_eval_never_writes_through_a_planted_eval_step_link_next_to_the_checkpoint(scanned, tmp_path) -> None:
    ws, home, env = scanned
    ck = ws.checkpoints["stage3_token_lm_iter5"][0]
    victim = _victim(tmp_path)
    planted = ck.parent / "eval_step100.json"
    planted.symlink_to(victim)

    proc = cli(["eval", ck, "--evalset", EVALSET, "--device", "cpu"], home=home, env=env, timeout=300)

    assert proc.returncode == 0, proc.stderr
    assert victim.read_text() == VICTIM_TEXT
    # what the link leads to is no result of this eval set: it is left alone, the result goes beside it
    written = ck.parent / f"eval_step100.{EVALSET}.json"
    assert planted.is_symlink() and not written.is_symlink() and '"step": 100' in written.read_text()
    assert not [p for p in ck.parent.iterdir() if p.name.endswith(".tmp")]


def _materialize_targets(tmp: Path) -> list[tuple[Path, str]]:
    full = tmp / "full"
    full.mkdir()
    (full / "theirs.bin").write_bytes(b"x")
    a_file = tmp / "a-file"
    a_file.write_text("x")
    empty = tmp / "empty-elsewhere"
    empty.mkdir()
    link = tmp / "link-to-empty"
    link.symlink_to(empty, target_is_directory=True)
    return [
        (Path("/dev/full"), "not a folder"),
        (a_file, "not a folder"),
        (full, "not empty"),
        (link, "not a folder"),
    ]


@pytest.mark.slow
def test_materialize_refuses_a_target_that_is_not_a_new_or_empty_folder(scanned, tmp_path) -> None:
    ws, home, env = scanned
    ck = ws.checkpoints["stage3_token_lm_iter5"][0]
    targets = tmp_path / "targets"
    targets.mkdir()
    cases = _materialize_targets(targets)
    before, names = state(home), _names(targets)
    for out, says in cases:
        refusal(cli(["materialize", ck, "--out", out], home=home, env=env, timeout=120), out, says)
    assert state(home) == before and _names(targets) == names
    assert _names(targets / "full") == {"theirs.bin"} and not any((targets / "empty-elsewhere").iterdir())

    new = targets / "empty-elsewhere"  # an empty folder is filled, in one rename
    proc = cli(["materialize", ck, "--out", new], home=home, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert {"config.json", "token_space.json", "evalboard_materialized.json"} <= _names(new)
    assert _names(targets) == names  # no temporary left beside it

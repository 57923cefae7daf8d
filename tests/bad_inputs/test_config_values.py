"""Configuration and command-line values. `EVALBOARD_MODELS` naming a folder, a named
pipe or a file that is not UTF-8; `--device` with a name torch does not know; a checkpoint or job
id no registry can hold; `export --out` naming a folder or a path under a file. Each is one line
on stderr naming the value, exit 2, and nothing registered or logged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests._infra.workspace import write_rows
from tests.bad_inputs._helpers import cli, refusal, scan, state

HUGE_ID = "9" * 30


@pytest.fixture
def run(tmp_path: Path) -> tuple[Path, Path]:
    home = tmp_path / "home"
    ck = write_rows(tmp_path / "outputs" / "run_a" / "checkpoint_100", step=100)
    scan(home, tmp_path / "outputs")
    return home, ck


def _models_folder(tmp: Path) -> Path:
    (tmp / "models.d").mkdir()
    return tmp / "models.d"


def _models_not_utf8(tmp: Path) -> Path:
    f = tmp / "models.json"
    f.write_bytes(b'{"demo/base": "/models/\xff\xfe"}')
    return f


def _models_fifo(tmp: Path) -> Path:
    f = tmp / "models.json"
    os.mkfifo(f)
    return f


@pytest.mark.parametrize(
    "make, says",
    [(_models_folder, "is a directory"), (_models_not_utf8, "is not UTF-8"), (_models_fifo, "named pipe")],
    ids=["folder", "not-utf8", "fifo"],
)
def test_evalboard_models_that_cannot_be_read(run, tmp_path, make, says) -> None:
    home, _ = run
    target = make(tmp_path)
    before = state(home)
    refusal(
        cli(["runs"], home=home, env={"EVALBOARD_MODELS": str(target)}, timeout=60), target, "EVALBOARD_MODELS", says
    )
    assert state(home) == before


@pytest.mark.parametrize("device", ["gpu0", "cuda:99999999999999999999"])
def test_a_bad_device_is_refused_before_anything_is_registered(tmp_path, device) -> None:
    home = tmp_path / "home"
    ck = write_rows(tmp_path / "outputs" / "run_a" / "checkpoint_100", step=100)
    refusal(cli(["eval", ck, "--evalset", "anything", "--device", device], home=home, timeout=60), "--device")
    assert state(home) == ({}, {})  # not even a registry was created
    refusal(cli(["worker", "--once", "--device", device], home=home, timeout=60), "--device")


@pytest.mark.parametrize(
    "command",
    [
        ["stats", HUGE_ID],
        ["materialize", HUGE_ID, "--out", "snapshot"],
        ["jobs", "retry", HUGE_ID],
        ["jobs", "cancel", HUGE_ID],
    ],
    ids=lambda c: c[0],
)
def test_an_id_too_large_for_the_registry(run, command) -> None:
    home, _ = run
    before = state(home)
    proc = cli(command, home=home, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert "is registered" in proc.stderr or "job_ids" in proc.stderr, proc.stderr
    assert state(home) == before


def test_export_out_naming_a_folder_or_an_impossible_path(run, tmp_path) -> None:
    home, _ = run
    folder = tmp_path / "reports"
    folder.mkdir()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out, says in (
        (folder, "names a folder"),
        (blocker / "sub" / "report.html", "is not a folder"),
        (tmp_path / ("x" * 300 + ".html"), "longer than 255 bytes"),
    ):
        refusal(cli(["export", "--run", "run_a", "--out", out], home=home, timeout=60), out, "--out", says)
    assert sorted(p.name for p in folder.iterdir()) == []
    assert blocker.read_text() == "x"
    ok = cli(["export", "--run", "run_a", "--format", "md", "--out", folder / "r.md"], home=home, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "run\\_a" in (folder / "r.md").read_text()  # markdown-escaped

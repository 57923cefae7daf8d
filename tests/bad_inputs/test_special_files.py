"""Special files (a named pipe, a socket, a device) where a checkpoint, a JSON file, an
eval result or a Parquet file is expected. Opening one for reading blocks for ever (a FIFO with
no writer, /dev/zero read to its end); only regular files are opened. `inspect` refuses each in
one line naming the file and its kind, a scan registers it invalid and goes on, and nothing
blocks: every command runs under a timeout."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from evalboard.fixtures import write_connector_checkpoint
from registry.evalset import IGNORE_INDEX, Example, write_evalset
from tests._infra.workspace import small_token_space, write_rows
from tests.bad_inputs._helpers import cli, invalid_reason, refusal, scan, state

FIFO = "named pipe (FIFO), not a regular file"


def _fifo(path: Path) -> Path:
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    return path


def _socket(path: Path) -> Path:
    """A Unix socket file at `path` (bound in a short folder: socket paths are limited to ~100 bytes)."""
    short = Path(tempfile.mkdtemp(prefix="sk"))
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(short / "s"))
        s.close()
        path.unlink(missing_ok=True)
        try:
            os.rename(short / "s", path)
        except OSError as e:
            pytest.skip(f"cannot move a socket file into the test folder: {e}")
    finally:
        shutil.rmtree(short, ignore_errors=True)
    return path


def _ckpt(run: Path) -> Path:
    return write_rows(run / "checkpoint_100", step=100)


# each builder returns (path to give `inspect`, the file the message names, the kind it names)
def rows_file_is_a_fifo(d: Path):
    f = _fifo(_ckpt(d) / "trainable_rows.pt")
    return f.parent, f, FIFO


def rows_json_is_a_fifo(d: Path):
    f = _fifo(_ckpt(d) / "trainable_rows.json")
    return f.parent, f, FIFO


def token_space_is_a_fifo(d: Path):
    f = _fifo(_ckpt(d) / "token_space.json")
    return f.parent, f, FIFO


def connector_is_a_fifo(d: Path):
    f = write_connector_checkpoint(d / "checkpoint_7.pt", step=7, llm_dim=16)
    _fifo(f)
    return f, f, FIFO


def rows_file_is_a_socket(d: Path):
    ck = _ckpt(d)
    (ck / "trainable_rows.pt").unlink()
    f = _socket(ck / "trainable_rows.safetensors")
    return ck, f, "socket, not a regular file"


def eval_result_is_a_fifo(d: Path):
    _ckpt(d)
    f = _fifo(d / "eval_step100.json")
    return f, f, FIFO


CASES = [
    rows_file_is_a_fifo,
    rows_json_is_a_fifo,
    token_space_is_a_fifo,
    connector_is_a_fifo,
    rows_file_is_a_socket,
    eval_result_is_a_fifo,
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = Path(os.path.realpath(tmp_path_factory.mktemp("special")))
    root = base / "tree"
    built = {c.__name__: c(root / c.__name__) for c in CASES}
    good = write_rows(root / "zz_valid" / "checkpoint_100", step=100)
    home = base / "home"
    summary = scan(home, root)
    return root, home, built, good, summary


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_inspect_refuses_a_special_file_in_one_line(case, tree) -> None:
    _, home, built, _, _ = tree
    target, named, kind = built[case.__name__]
    before = state(home)
    reason = refusal(cli(["inspect", target], home=home, timeout=60), named, kind)
    assert state(home) == before
    assert reason


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_the_scan_registers_it_invalid_naming_its_kind(case, tree) -> None:
    _, home, built, _, summary = tree
    target, named, kind = built[case.__name__]
    recorded = invalid_reason(summary, target)
    assert str(named) in recorded and kind in recorded


def test_the_scan_went_on_past_every_special_file(tree) -> None:
    from registry.store import Registry

    _, home, built, good, summary = tree
    assert summary["invalid"] == len(CASES)
    with Registry(f"sqlite:///{home / 'registry.db'}") as reg:
        assert reg.get_checkpoint(path=str(good)).status == "valid"


def test_a_symlink_to_an_endless_device_is_refused_not_read(tmp_path: Path) -> None:
    """`trainable_rows.pt -> /dev/zero`: reading it to the end (to hash it) never ends."""
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    ck = _ckpt(tmp_path / "run")
    (ck / "trainable_rows.pt").unlink()
    (ck / "trainable_rows.pt").symlink_to("/dev/zero")
    home = tmp_path / "home"
    refusal(cli(["inspect", ck], home=home, timeout=60), ck / "trainable_rows.pt", "character device")
    summary = scan(home, tmp_path / "run")  # inside a scan it is also a link leaving the tree
    assert "trainable_rows.pt" in invalid_reason(summary, ck)


def test_an_evalset_with_a_fifo_for_parquet_is_refused(tmp_path: Path) -> None:
    ts = small_token_space()
    es = tmp_path / "evalsets" / "fifo-set"
    write_evalset(es, "fifo-set", [Example("a2t-0", "a2t", [1, 260, 2, 10, 11], [IGNORE_INDEX] * 3 + [10, 11])], ts)
    part = next(es.glob("*.parquet"))
    _fifo(part)
    home = tmp_path / "home"
    _ckpt(tmp_path / "run")
    scan(home, tmp_path / "run")
    before = state(home)
    refusal(cli(["evalset", "add", es], home=home, timeout=60), part, FIFO)
    assert state(home) == before
    summary = scan(home, tmp_path / "evalsets")
    assert FIFO in invalid_reason(summary, es)

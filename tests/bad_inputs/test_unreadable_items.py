"""One unreadable item (no read permission, JSON nested 200,000 deep, a field of the
wrong type, an integer no registry column can hold) is registered invalid with its reason and the
scan goes on; `inspect` refuses it in one line. Types and ranges are checked where the JSON is
read, so every such value is refused the same way wherever it appears."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from evalboard.fixtures import write_connector_checkpoint
from tests._infra.workspace import small_token_space, unprivileged, write_rows
from tests.bad_inputs._helpers import cli, edit_json, invalid_reason, refusal, scan, state

BIG = 2**70


def _ckpt(run: Path, step: int = 100) -> Path:
    return write_rows(run / f"checkpoint_{step}", step=step)


def deep_json(d: Path):
    ck = _ckpt(d)
    f = ck / "trainable_rows.json"
    f.write_text("[" * 200_000 + "]" * 200_000)
    return ck, f, "nested too deeply"


def row_index_is_a_string(d: Path):
    ck = _ckpt(d)
    f = edit_json(ck / "trainable_rows.json", row_start="two hundred fifty-six")
    return ck, f, "row_start must be an integer"


def name_is_a_list(d: Path):
    ck = _ckpt(d)
    f = edit_json(ck / "trainable_rows.json", base_model=["Qwen/Qwen3-8B-Base"])
    return ck, f, "base_model must be a string"


def row_ranges_hold_strings(d: Path):
    ck = _ckpt(d)
    f = edit_json(ck / "trainable_rows.json", row_start=None, row_end=None, row_ranges=["256", "384"])
    return ck, f, "row_ranges start must be an integer"


def vocab_size_too_large(d: Path):
    ck = _ckpt(d)
    f = edit_json(ck / "token_space.json", vocab_size_total=BIG)
    return ck, f, "vocab_size_total"


def step_too_large(d: Path):
    ck = _ckpt(d)
    edit_json(ck / "trainable_rows.json", step=None)
    target = ck.with_name(f"checkpoint_{BIG}")
    ck.rename(target)
    return target, target, "larger than 2147483647"


def step_too_large_in_json(d: Path):
    _ckpt(d)
    (d / "checkpoint_100").rename(d / "ckpt_free")
    target = d / "checkpoint_best"  # no step in the name: the JSON's step is the only one
    (d / "ckpt_free").rename(target)
    f = edit_json(target / "trainable_rows.json", step=BIG)
    return target, f, "step"


def connector_step_too_large(d: Path):
    f = write_connector_checkpoint(d / "checkpoint_7.pt", step=7, llm_dim=16)
    obj = torch.load(f, weights_only=True)
    obj.pop("step")
    obj["global_step"] = 7
    obj["config"]["hidden"] = 3
    torch.save(obj, f)
    target = f.with_name(f"checkpoint_{BIG}.pt")
    f.rename(target)
    return target, target, "larger than 2147483647"


def eval_result_with_huge_step(d: Path):
    _ckpt(d)
    f = d / "eval_step100.json"
    f.write_text(json.dumps({"step": BIG, "loss": {"all": 2.0}}))
    return f, f, "step"


CASES = [
    deep_json,
    row_index_is_a_string,
    name_is_a_list,
    row_ranges_hold_strings,
    vocab_size_too_large,
    step_too_large,
    step_too_large_in_json,
    connector_step_too_large,
    eval_result_with_huge_step,
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = Path(os.path.realpath(tmp_path_factory.mktemp("unreadable")))
    root = base / "tree"
    built = {c.__name__: c(root / c.__name__) for c in CASES}
    good = write_rows(root / "zz_valid" / "checkpoint_100", step=100)
    home = base / "home"
    return root, home, built, good, scan(home, root)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_inspect_refuses_in_one_line_and_the_scan_records_the_same(case, tree) -> None:
    _, home, built, _, summary = tree
    target, named, says = built[case.__name__]
    before = state(home)
    reason = refusal(cli(["inspect", target], home=home, timeout=60), named, says)
    assert state(home) == before
    assert invalid_reason(summary, target) == reason


def test_the_scan_registered_the_rest(tree) -> None:
    from registry.store import Registry

    root, home, built, good, summary = tree
    assert summary["invalid"] == len(CASES)
    with Registry(f"sqlite:///{home / 'registry.db'}") as reg:
        assert reg.get_checkpoint(path=str(good)).status == "valid"
        invalid = {c.path for c in reg.list_checkpoints(status="invalid")}
    checkpoints = {str(t) for name, (t, _, _) in built.items() if name != "eval_result_with_huge_step"}
    assert checkpoints <= invalid


@pytest.fixture
def as_user() -> list[str]:
    """The prefix under which permission bits hold (root runs the CLI in a user namespace)."""
    prefix = unprivileged()
    if prefix is None:
        pytest.skip("root without user namespaces: permission bits cannot be tested here")
    return prefix


@pytest.mark.parametrize("mode", [0o000, 0o644], ids=["no-read", "no-search"])
def test_a_folder_without_permission_is_an_invalid_entry_and_the_scan_goes_on(tmp_path: Path, as_user, mode) -> None:
    run = tmp_path / "run"
    locked = _ckpt(run, 100)
    good = _ckpt(run, 200)
    notes = run / "notes"  # not a checkpoint: reported, not registered
    notes.mkdir()
    (notes / "x.txt").write_text("x")
    for d in (locked, notes):
        d.chmod(mode)
    try:
        home = tmp_path / "home"
        summary = scan(home, run, prefix=as_user)
        assert "Permission denied" in invalid_reason(summary, locked)
        assert "Permission denied" in invalid_reason(summary, notes)
        assert summary["new"] == 2 and str(good) not in {i["path"] for i in summary["invalid_items"]}
        refusal(cli(["inspect", locked], home=home, timeout=60, prefix=as_user), locked)
        before = state(home)
        refusal(cli(["scan", locked], home=home, timeout=60, prefix=as_user), locked)
        assert state(home) == before
    finally:
        for d in (locked, notes):
            d.chmod(0o755)


def test_a_file_without_read_permission_is_registered_invalid(tmp_path: Path, as_user) -> None:
    ck = _ckpt(tmp_path / "run")
    (ck / "trainable_rows.pt").chmod(0)
    home = tmp_path / "home"
    summary = scan(home, tmp_path / "run", prefix=as_user)
    assert "Permission denied" in invalid_reason(summary, ck)
    refusal(cli(["inspect", ck], home=home, timeout=60, prefix=as_user), ck / "trainable_rows.pt", "Permission denied")


def test_the_token_space_reader_checks_types_and_ranges_in_one_place(tmp_path: Path) -> None:
    """The same rules whether the token space is a file or inline in an eval-set manifest."""
    from registry.errors import InvalidInput
    from registry.token_space import TokenSpace

    good = small_token_space().to_dict()
    for change, says in (
        ({"text_vocab_size": 256.0}, "text_vocab_size must be an integer"),
        ({"vocab_size_total": BIG}, "is outside"),
        ({"pad_token_id": "0"}, "pad_token_id must be an integer"),
        ({"tokenizer": {"name": ["x"], "version": "1"}}, "tokenizer.name must be a string"),
    ):
        with pytest.raises(InvalidInput, match=says):
            TokenSpace.from_dict({**good, **change}, source="inline")

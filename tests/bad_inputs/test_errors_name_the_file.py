"""Every refusal names the file. Rows that fit their own JSON but not the base model
(hidden size 8 on a base of 64) are only found when `eval` patches them in; that refusal names
the checkpoint's rows file too, and nothing is logged."""

from __future__ import annotations

import pytest
import torch

from tests._infra.workspace import write_rows
from tests.bad_inputs._helpers import cli, edit_json, models_env, refusal, scan, state

EVALSET = "synthetic-a2t-i2t"
ROWS = 128


@pytest.fixture
def scanned(workspace, tmp_path):
    # loading the base draws a progress bar on stderr (progress goes there); only the refusal is asserted
    home, env = tmp_path / "home", {**models_env(workspace), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    run = workspace.root / "outputs" / "narrow_rows"
    narrow = write_rows(
        run / "checkpoint_100",
        workspace.token_space,
        step=100,
        rows=torch.randn(ROWS, 8) * 0.02,
        lm_head_rows=torch.randn(ROWS, 8) * 0.02,
    )
    edit_json(narrow / "trainable_rows.json", hidden_size=None)
    empty = write_rows(
        run / "checkpoint_200",
        workspace.token_space,
        step=200,
        rows=torch.zeros(ROWS, 0),
        lm_head_rows=torch.zeros(ROWS, 0),
    )
    edit_json(empty / "trainable_rows.json", hidden_size=None)
    scan(home, workspace.root / "outputs", env=env)
    assert cli(["evalset", "add", workspace.evalsets[EVALSET]], home=home, env=env).returncode == 0
    return home, env, narrow, empty


def test_a_shape_refusal_from_eval_names_the_rows_file(scanned) -> None:
    home, env, narrow, _ = scanned
    before = state(home)
    refusal(
        cli(["eval", narrow, "--evalset", EVALSET], home=home, env=env),
        narrow / "trainable_rows.pt",
        f"embedding rows: expected ({ROWS}, 64), file has ({ROWS}, 8)",
    )
    assert state(home) == before
    assert not list(narrow.parent.glob("eval_step*.json"))


def test_rows_of_width_zero_are_refused_naming_the_file_before_any_base_is_loaded(scanned) -> None:
    home, env, _, empty = scanned
    before = state(home)
    reason = refusal(
        cli(["eval", empty, "--evalset", EVALSET], home=home, env=env),
        empty / "trainable_rows.pt",
        f"rows of width 0, file has shape ({ROWS}, 0)",
    )
    assert "is invalid" in reason
    assert state(home) == before

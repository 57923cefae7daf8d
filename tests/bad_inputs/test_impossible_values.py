"""Values that cannot be right are refused where they enter, and every command agrees.
Eval results: a negative or non-finite loss, a negative token count, zero examples. Checkpoints:
row ranges written as floats (never truncated), rows of width 0, no lm_head rows without a
declared tying. `inspect` refuses, `scan` registers invalid with the same sentence, `audit`
reports it, `eval` and `import-eval` refuse it; nothing is written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tests._infra.workspace import write_rows
from tests.bad_inputs._helpers import cli, edit_json, invalid_reason, models_env, refusal, scan, state

ROWS = 128


def _result(d: Path, content: dict) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    f = d / "eval_step100.json"
    f.write_text(json.dumps(content))
    return f


RESULTS = {
    "negative-loss": ({"step": 100, "loss": {"all": -0.5}}, "never negative"),
    "infinite-loss": ({"step": 100, "loss(all)": 2.0, "loss(a2t)": "INF"}, "must be a number"),
    "overflowing-loss": ('{"step": 100, "loss": {"all": 1e999}}', "not finite"),
    "negative-tokens": ({"step": 100, "loss": {"all": 2.0}, "tokens": {"all": -5}}, "tokens.all -5 is outside"),
    "zero-examples": (
        {"step": 100, "loss": {"all": 2.0, "a2t": 2.0}, "examples": {"all": 4, "a2t": 0}},
        "examples.a2t is 0",
    ),
}


def rows_as_floats(d: Path):
    ck = write_rows(d / "checkpoint_100", step=100)
    f = edit_json(ck / "trainable_rows.json", row_start=256.0, row_end=384.0)
    return ck, f, "row_start must be an integer, got 256.0"


def row_range_as_floats(d: Path):
    ck = write_rows(d / "checkpoint_100", step=100)
    f = edit_json(ck / "trainable_rows.json", row_start=None, row_end=None, row_ranges=[256.5, 384])
    return ck, f, "row_ranges start must be an integer, got 256.5"


def rows_of_width_zero(d: Path):
    ck = write_rows(d / "checkpoint_100", step=100, rows=torch.zeros(ROWS, 0), lm_head_rows=torch.zeros(ROWS, 0))
    edit_json(ck / "trainable_rows.json", hidden_size=None)
    return ck, ck / "trainable_rows.pt", "rows of width 0"


def hidden_size_zero(d: Path):
    ck = write_rows(d / "checkpoint_100", step=100)
    f = edit_json(ck / "trainable_rows.json", hidden_size=0)
    return ck, f, "hidden_size 0 is outside"


def no_lm_head_and_no_tying_declared(d: Path):
    ck = write_rows(d / "checkpoint_100", step=100, lm_head_key=None)
    edit_json(ck / "trainable_rows.json", tie_word_embeddings=None)
    return ck, ck / "trainable_rows.pt", "does not declare tied embeddings"


CHECKPOINTS = [
    rows_as_floats,
    row_range_as_floats,
    rows_of_width_zero,
    hidden_size_zero,
    no_lm_head_and_no_tying_declared,
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = Path(os.path.realpath(tmp_path_factory.mktemp("impossible")))
    root = base / "tree"
    built = {c.__name__: c(root / c.__name__) for c in CHECKPOINTS}
    results = {}
    for name, (content, says) in RESULTS.items():
        d = root / f"result_{name}"
        write_rows(d / "checkpoint_100", step=100)
        f = d / "eval_step100.json"
        f.write_text(content if isinstance(content, str) else json.dumps(content))
        results[name] = (f, says)
    home = base / "home"
    return root, home, built, results, scan(home, root)


@pytest.mark.parametrize("case", CHECKPOINTS, ids=lambda c: c.__name__)
def test_inspect_scan_and_audit_agree_on_an_impossible_checkpoint(case, tree) -> None:
    _, home, built, _, summary = tree
    ck, named, says = built[case.__name__]
    before = state(home)
    reason = refusal(cli(["inspect", ck], home=home, timeout=60), named, says)
    assert invalid_reason(summary, ck) == reason
    audit = cli(["audit", "--json"], home=home, timeout=60)
    assert audit.returncode == 0, audit.stderr
    assert any(f["code"] == "invalid-checkpoint" and says in f["message"] for f in json.loads(audit.stdout))
    assert state(home) == before


@pytest.mark.parametrize("name", sorted(RESULTS))
def test_import_eval_refuses_an_impossible_result_and_the_scan_records_it(name, tree) -> None:
    _, home, _, results, summary = tree
    f, says = results[name]
    before = state(home)
    reason = refusal(cli(["import-eval", f], home=home, timeout=60), f, says)
    assert state(home) == before
    assert invalid_reason(summary, f) == reason
    assert summary["results_imported"] == 0


def test_eval_refuses_the_undeclared_tying_like_the_rest(workspace, tmp_path) -> None:
    """The one case only `eval` used to catch: now refused before any base model is loaded."""
    ck, _, says = no_lm_head_and_no_tying_declared(workspace.root / "outputs" / "untied_run")
    home = tmp_path / "home"
    env = models_env(workspace)
    scan(home, workspace.root / "outputs", env=env)
    before = state(home)
    proc = cli(["eval", ck, "--evalset", workspace.evalsets["synthetic-a2t-i2t"]], home=home, env=env)
    reason = refusal(proc, ck, says)
    assert "invalid" in reason
    assert state(home)[1] == before[1]  # no MLflow run
    assert not list(ck.parent.glob("eval_step*.json"))

"""`eval_step<step>.json`: what the evaluator writes and the shapes training scripts wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.errors import InvalidInput
from registry.eval_result import EvalResult, eval_filename

SEED_LOSSES = {"all": 2.7462, "a2t": 2.3606, "i2t": 3.3357}


@pytest.mark.parametrize(
    "content",
    [
        {"step": 7000, "loss(all)": 2.7462, "loss(a2t)": 2.3606, "loss(i2t)": 3.3357},
        {"step": 7000, "loss_all": 2.7462, "loss_a2t": 2.3606, "loss_i2t": 3.3357},
        {"global_step": 7000, "eval_loss": 2.7462, "a2t_loss": 2.3606, "loss/i2t": 3.3357},
        {"step": 7000, "loss": {"all": 2.7462, "a2t": 2.3606, "i2t": 3.3357}},
        {"step": 7000, "losses": {"loss(all)": 2.7462, "a2t": {"loss": 2.3606}, "i2t": 3.3357}},
        {"step": 7000, "metrics": {"loss(all)": 2.7462, "loss_a2t": 2.3606, "i2t_loss": 3.3357, "accuracy": 0.4}},
        {"loss(all)": 2.7462, "loss(a2t)": 2.3606, "loss(i2t)": 3.3357},
    ],
    ids=["loss(task)", "loss_task", "eval_loss+task_loss", "nested-loss", "nested-losses", "metrics", "no-step"],
)
def test_training_script_shapes_are_imported(tmp_path: Path, content: dict) -> None:
    path = tmp_path / "eval_step7000.json"
    path.write_text(json.dumps(content))
    result = EvalResult.load(path)
    assert dict(result.losses) == SEED_LOSSES
    assert result.loss_all == 2.7462
    assert result.step == 7000


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    written = EvalResult(
        step=300,
        losses=SEED_LOSSES,
        tokens={"all": 300, "a2t": 150, "i2t": 150},
        examples={"all": 16, "a2t": 8, "i2t": 8},
        checkpoint={"path": "runs/x/checkpoint_300", "content_hash": "ab" * 32},
        evalset={"name": "synthetic", "content_hash": "cd" * 32},
        token_space_hash="ef" * 32,
    )
    path = written.save(tmp_path)
    assert path == tmp_path / eval_filename(300) == tmp_path / "eval_step300.json"
    assert not list(tmp_path.glob(".*.tmp"))
    read = EvalResult.load(path)
    assert read.to_dict() == written.to_dict()
    assert read.metrics()["a2t"] == {"loss": 2.3606, "tokens": 150, "examples": 8}


@pytest.mark.parametrize(
    "content, message",
    [
        ({"step": 100, "loss(a2t)": 2.0}, "has task losses ['a2t'] but no overall loss"),
        ({"step": 100}, "has no loss values"),
        ({"step": 200, "loss(all)": 2.0}, "step 200 inside the file disagrees with its name eval_step100.json"),
        ({"step": 100, "loss(all)": "2.0"}, "loss(all) must be a number, got '2.0'"),
        ({"step": 100, "loss(all)": 2.0, "loss": {"all": 2.5}}, "loss for 'all' is given twice with different values"),
        ({"step": 100, "loss(all)": 2.0, "wandb_run": "x"}, "unexpected field 'wandb_run'"),
        ({"step": 100, "loss(all)": 2.0, "tokens": {"all": 1.5}}, "tokens must map task names to integers"),
    ],
    ids=["no-overall", "no-loss", "step-vs-name", "string-loss", "conflict", "unexpected", "float-tokens"],
)
def test_invalid_results(tmp_path: Path, content: dict, message: str) -> None:
    path = tmp_path / "eval_step100.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InvalidInput) as e:
        EvalResult.load(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_infinite_losses_cannot_be_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        EvalResult(step=1, losses={"all": float("inf")}).save(tmp_path / "eval_step1.json")
    assert not (tmp_path / "eval_step1.json").exists()

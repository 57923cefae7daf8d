"""Results are never attributed to content they were not computed on, and a checkpoint is never
one file picked out of two:

- an `eval_step<N>.json` whose `checkpoint.content_hash` names other content than the checkpoint
  at step N holds is an invalid item of the scan (naming both hashes) and is refused by
  `import-eval`, never stored as that checkpoint's result;
- a Track B folder holding both `trainable_rows.pt` and `trainable_rows.safetensors`, or a LLaVA
  folder holding both `mm_projector.bin` and `mm_projector.safetensors`, is invalid, naming both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.eval_result import EvalResult
from tests._infra.workspace import write_rows
from tests.bad_inputs._helpers import cli, invalid_reason, refusal, scan, state

OTHER_CONTENT = "f" * 64


def _eval_json(run_dir: Path, step: int, checkpoint_hash: str) -> Path:
    return EvalResult(
        step=step,
        losses={"all": 2.5, "a2t": 2.0, "i2t": 3.0},
        tokens={"all": 20, "a2t": 10, "i2t": 10},
        checkpoint={"path": str(run_dir / f"checkpoint_{step}"), "content_hash": checkpoint_hash},
    ).save(run_dir / f"eval_step{step}.json")


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    """One tree, scanned once: a misattributed and a well attributed eval_step300.json, a Track B
    folder and a LLaVA folder that each hold two weight files."""
    from safetensors.torch import save_file

    from registry.trainable_rows import TrainableRows
    from tests.evaluator._track_a import write_llava

    root = Path(tmp_path_factory.mktemp("attribution"))
    out = root / "outputs"
    wrong = write_rows(out / "run_wrong" / "checkpoint_300", step=300)
    right = write_rows(out / "run_right" / "checkpoint_300", step=300)
    wrong_json = _eval_json(wrong.parent, 300, OTHER_CONTENT)
    _eval_json(right.parent, 300, TrainableRows.load(right).content_hash)
    both_rows = write_rows(out / "run_two_rows" / "checkpoint_100", step=100)
    write_rows(both_rows, step=100, fmt="safetensors", seed=1)
    both_projectors = write_llava(out / "llava_two_projectors" / "checkpoint-500")
    import torch

    save_file(
        {k: v.contiguous() for k, v in torch.load(both_projectors / "mm_projector.bin", weights_only=True).items()},
        str(both_projectors / "mm_projector.safetensors"),
    )
    home = root / "home"
    summary = scan(home, out)
    return {
        "home": home,
        "summary": summary,
        "wrong": wrong,
        "wrong_json": wrong_json,
        "right": right,
        "both_rows": both_rows,
        "both_projectors": both_projectors,
    }


def _results(home: Path) -> dict[str, list]:
    from registry.store import Registry

    with Registry(f"sqlite:///{home / 'registry.db'}") as reg:
        return {
            r.path: [(e.checkpoint_hash, e.loss_all) for e in reg.list_eval_results(run_ids=[r.id])]
            for r in reg.list_runs()
        }


def test_a_result_computed_on_other_content_is_an_invalid_item_naming_both_hashes(scanned):
    from registry.store import Registry

    with Registry(f"sqlite:///{scanned['home'] / 'registry.db'}") as reg:
        actual = reg.get_checkpoint(path=str(scanned["wrong"])).content_hash
    reason = invalid_reason(scanned["summary"], scanned["wrong_json"])
    assert OTHER_CONTENT in reason and actual in reason and "other content" in reason, reason
    results = _results(scanned["home"])
    assert results[str(scanned["wrong"].parent)] == []  # nothing stored, not even unlinked
    assert len(results[str(scanned["right"].parent)]) == 1  # the control: a matching hash imports


def test_import_eval_refuses_it_and_writes_nothing(scanned):
    home = scanned["home"]
    before = state(home)
    proc = cli(["import-eval", scanned["wrong_json"]], home=home, timeout=60)
    refusal(proc, scanned["wrong_json"], OTHER_CONTENT, "other content")
    assert state(home) == before


def test_two_rows_files_make_the_checkpoint_invalid(scanned):
    reason = invalid_reason(scanned["summary"], scanned["both_rows"])
    assert "trainable_rows.pt" in reason and "trainable_rows.safetensors" in reason and "ambiguous" in reason, reason


def test_two_projector_files_make_the_llava_folder_invalid(scanned):
    reason = invalid_reason(scanned["summary"], scanned["both_projectors"])
    assert "mm_projector.bin" in reason and "mm_projector.safetensors" in reason and "ambiguous" in reason, reason

"""The seed-format writers: what they write the scanner registers as valid, with the content hash
the format readers compute and the very tensors given; writes are atomic (no half checkpoint,
nothing left behind on failure)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from evalboard.fixtures import make_token_space
from registry.connector import ConnectorCheckpoint
from registry.errors import InvalidInput
from registry.scanner import discover, scan
from registry.store import Registry
from registry.trainable_rows import TrainableRows
from registry.writers import atomic_folder, save_connector, save_trainable_rows

BASE = "demo/Qwen3-tiny-Base"


@pytest.fixture
def reg(tmp_path):
    with Registry(f"sqlite:///{tmp_path / 'registry.db'}") as r:
        yield r


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
@pytest.mark.parametrize("tied", [False, True])
def test_rows_round_trip_through_the_scanner(reg, tmp_path, fmt, tied):
    space = make_token_space(256)
    n = space.vocab_size_total - space.text_vocab_size
    embed, head = torch.randn(n, 16), torch.randn(n, 16)
    run = Path(os.path.realpath(tmp_path)) / "run"
    ck = save_trainable_rows(
        run / "checkpoint_100",
        space,
        embed=embed,
        lm_head=None if tied else head,
        base_model=BASE,
        step=100,
        fmt=fmt,
        trainer={"lr": 1e-3},
    )
    summary = scan(reg, [run])
    assert summary.invalid == 0 and summary.new == 1
    entity = reg.get_checkpoint(path=str(ck))
    loaded = TrainableRows.load(ck)
    assert entity.is_valid and entity.step == 100 and entity.content_hash == loaded.content_hash
    assert (entity.row_start, entity.row_end) == (256, space.vocab_size_total)
    assert torch.equal(loaded.embed, embed) and loaded.tied is tied
    assert tied or torch.equal(loaded.lm_head, head)
    assert loaded.token_space.abi_hash == space.abi_hash
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_100"]  # no temporary left behind


def test_connector_round_trip_through_the_scanner(reg, tmp_path):
    from evaluator.connectors import PerceiverConnector

    module = PerceiverConnector(32, 64, 8, 4)
    run = Path(os.path.realpath(tmp_path)) / "align"
    path = save_connector(
        run / "checkpoint_7.pt",
        module,
        step=7,
        base_llm=BASE,
        vision_tower="demo/vit-tiny",
        config={"connector_builder": "evaluator.connectors:perceiver_resampler", "num_heads": 4},
    )
    scan(reg, [run])
    entity = reg.get_checkpoint(path=str(path))
    loaded = ConnectorCheckpoint.load(path)
    assert entity.is_valid and entity.track == "A" and entity.step == 7
    assert entity.content_hash == loaded.content_hash and loaded.builder == "evaluator.connectors:perceiver_resampler"
    for k, v in module.state_dict().items():
        assert torch.equal(loaded.state[k], v)


def test_bad_arguments_fail_before_anything_is_written(tmp_path):
    space = make_token_space(256)
    n = space.vocab_size_total - space.text_vocab_size
    with pytest.raises(InvalidInput, match="disagrees with the name checkpoint_100"):
        save_trainable_rows(
            tmp_path / "checkpoint_100", space, embed=torch.randn(n, 8), lm_head=None, base_model=BASE, step=200
        )
    with pytest.raises(InvalidInput, match="lm_head rows: expected 128 rows"):
        save_trainable_rows(
            tmp_path / "checkpoint_1",
            space,
            embed=torch.randn(n, 8),
            lm_head=torch.randn(3, 8),
            base_model=BASE,
            step=1,
        )
    with pytest.raises(InvalidInput, match="fall outside"):
        save_trainable_rows(
            tmp_path / "checkpoint_2", space, embed=torch.randn(n + 1, 8), lm_head=None, base_model=BASE, step=2
        )
    with pytest.raises(InvalidInput, match="no projector weights"):
        save_connector(
            tmp_path / "checkpoint_3.pt", {"resampler.q": torch.zeros(2, 2)}, step=3, base_llm=BASE, vision_tower="t"
        )
    assert list(tmp_path.iterdir()) == []


def test_existing_checkpoint_is_kept_unless_overwrite(tmp_path):
    space = make_token_space(256)
    n = space.vocab_size_total - space.text_vocab_size
    first = save_trainable_rows(
        tmp_path / "checkpoint_5", space, embed=torch.zeros(n, 8), lm_head=None, base_model=BASE, step=5
    )
    with pytest.raises(InvalidInput, match="already exists"):
        save_trainable_rows(first, space, embed=torch.ones(n, 8), lm_head=None, base_model=BASE, step=5)
    assert torch.equal(TrainableRows.load(first).embed, torch.zeros(n, 8))
    save_trainable_rows(first, space, embed=torch.ones(n, 8), lm_head=None, base_model=BASE, step=5, overwrite=True)
    assert torch.equal(TrainableRows.load(first).embed, torch.ones(n, 8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_5"]


def test_a_half_written_folder_is_hidden_and_a_failure_leaves_nothing(tmp_path):
    run = Path(os.path.realpath(tmp_path)) / "run"
    final = run / "checkpoint_9"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_folder(final) as tmp:
            (tmp / "trainable_rows.json").write_text("{}")
            (tmp / "trainable_rows.pt").write_bytes(b"half")
            assert tmp.parent == run and tmp.name.startswith(".")
            assert discover(run).runs == {}  # the scanner does not see the temporary folder
            raise RuntimeError("disk full")
    assert not final.exists() and list(run.iterdir()) == []

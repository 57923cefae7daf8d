"""Track B `checkpoint_<step>/` folders: the schema, its accepted variants, and shape checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from registry.errors import Incompatible, InvalidInput
from registry.token_space import TokenSpace
from registry.trainable_rows import TrainableRows, parse_step
from tests._infra.workspace import BASE_MODEL, HIDDEN, write_rows

ROWS = 128


def _rows(seed: int) -> torch.Tensor:
    return torch.randn(ROWS, HIDDEN, generator=torch.Generator().manual_seed(seed))


def _rewrite_meta(ck: Path, meta: dict) -> None:
    (ck / "trainable_rows.json").write_text(json.dumps(meta))


def test_the_documented_schema_loads_with_everything_it_says(tmp_path: Path, token_space: TokenSpace) -> None:
    embed, head = _rows(1), _rows(2)
    ck = write_rows(tmp_path / "checkpoint_7000", token_space, step=7000, rows=embed, lm_head_rows=head)
    rows = TrainableRows.load(ck)
    assert (rows.step, rows.base_model, rows.row_start, rows.row_end) == (7000, BASE_MODEL, 256, 384)
    assert (rows.hidden_size, rows.dtype, rows.tied) == (HIDDEN, "float32", False)
    assert torch.equal(rows.embed, embed) and torch.equal(rows.lm_head, head)
    assert rows.token_space.abi_hash == token_space.abi_hash
    assert rows.warnings == ()
    assert sorted(f.name for f in rows.files) == ["token_space.json", "trainable_rows.json", "trainable_rows.pt"]
    summary = rows.summary()
    assert summary["embed_shape"] == summary["lm_head_shape"] == [ROWS, HIDDEN]
    assert summary["modalities"] == {"audio": [256, 320], "image": [320, 384]}
    assert summary["token_space_hash"] == token_space.abi_hash
    json.dumps(summary)  # what `inspect --json` prints


def test_safetensors_rows_are_accepted(tmp_path: Path, token_space: TokenSpace) -> None:
    embed = _rows(3)
    ck = write_rows(tmp_path / "checkpoint_10", token_space, step=10, rows=embed, fmt="safetensors")
    assert not (ck / "trainable_rows.pt").exists()
    rows = TrainableRows.load(ck)
    assert torch.equal(rows.embed, embed)
    assert "trainable_rows.safetensors" in {f.name for f in rows.files}


@pytest.mark.parametrize(
    "embed_key, lm_head_key",
    [
        ("model.embed_tokens.weight", "lm_head.weight"),
        ("embed_tokens.weight", "lm_head.weight"),
        ("input_embeddings", "output_embeddings"),
        ("module.model.embed_tokens.weight", "module.lm_head.weight"),
        ("embed_tokens_rows", "lm_head_rows"),
        ("base_model.model.model.embed_tokens.weight", "base_model.model.lm_head.weight"),
    ],
)
def test_key_variants(tmp_path: Path, token_space: TokenSpace, embed_key: str, lm_head_key: str) -> None:
    embed, head = _rows(4), _rows(5)
    ck = write_rows(
        tmp_path / "checkpoint_1",
        token_space,
        step=1,
        rows=embed,
        lm_head_rows=head,
        embed_key=embed_key,
        lm_head_key=lm_head_key,
    )
    rows = TrainableRows.load(ck)
    assert (rows.embed_key, rows.lm_head_key) == (embed_key, lm_head_key)
    assert torch.equal(rows.embed, embed) and torch.equal(rows.lm_head, head)


@pytest.mark.parametrize("nest", ["state_dict", "trainable_rows"])
def test_rows_nested_under_a_state_dict(tmp_path: Path, token_space: TokenSpace, nest: str) -> None:
    embed, head = _rows(6), _rows(7)
    ck = write_rows(tmp_path / "checkpoint_2", token_space, step=2)
    torch.save({nest: {"embed_tokens.weight": embed, "lm_head.weight": head}, "step": 2}, ck / "trainable_rows.pt")
    rows = TrainableRows.load(ck)
    assert torch.equal(rows.embed, embed) and torch.equal(rows.lm_head, head)


def test_tied_embeddings_need_no_lm_head(tmp_path: Path, token_space: TokenSpace) -> None:
    ck = write_rows(tmp_path / "checkpoint_3", token_space, step=3, lm_head_key=None)
    assert json.loads((ck / "trainable_rows.json").read_text())["tie_word_embeddings"] is True
    rows = TrainableRows.load(ck)
    assert rows.tied and rows.lm_head is None and rows.lm_head_key is None
    assert rows.summary()["lm_head_shape"] is None


def test_missing_lm_head_when_not_tied_is_refused(tmp_path: Path, token_space: TokenSpace) -> None:
    ck = write_rows(
        tmp_path / "checkpoint_3", token_space, step=3, lm_head_key=None, extra_meta={"tie_word_embeddings": False}
    )
    with pytest.raises(
        InvalidInput, match="has no lm_head rows and trainable_rows.json says the embeddings are not tied"
    ):
        TrainableRows.load(ck)


@pytest.mark.parametrize(
    "row_ranges",
    [
        [256, 384],
        {"embed_tokens": [256, 384], "lm_head": [256, 384]},
        {"embed_tokens": {"start": 256, "end": 384}, "lm_head": {"start": 256, "end": 384}},
    ],
    ids=["pair", "per-matrix", "per-matrix-objects"],
)
def test_row_ranges_form(tmp_path: Path, token_space: TokenSpace, row_ranges) -> None:
    ck = write_rows(tmp_path / "checkpoint_4", token_space, step=4)
    _rewrite_meta(ck, {"base_model_id": BASE_MODEL, "row_ranges": row_ranges, "global_step": 4})
    rows = TrainableRows.load(ck)
    assert (rows.row_start, rows.row_end, rows.step, rows.base_model) == (256, 384, 4, BASE_MODEL)
    _rewrite_meta(ck, {"base_llm": BASE_MODEL, "row_range": row_ranges})
    assert (TrainableRows.load(ck).row_start, TrainableRows.load(ck).row_end) == (256, 384)


def test_row_ranges_that_differ_between_matrices_are_refused(tmp_path: Path, token_space: TokenSpace) -> None:
    ck = write_rows(tmp_path / "checkpoint_4", token_space, step=4)
    _rewrite_meta(ck, {"base_model": BASE_MODEL, "row_ranges": {"embed_tokens": [256, 384], "lm_head": [256, 320]}})
    with pytest.raises(InvalidInput, match=r"row_ranges differ between matrices"):
        TrainableRows.load(ck)


def test_without_token_space_it_loads_with_a_warning(tmp_path: Path, token_space: TokenSpace) -> None:
    ck = write_rows(tmp_path / "checkpoint_5", token_space, step=5, ship_token_space=False)
    rows = TrainableRows.load(ck)
    assert rows.token_space is None
    assert rows.warnings == (f"{ck}: shipped without token_space.json",)


def test_the_run_token_space_is_checked_when_the_checkpoint_has_none(tmp_path: Path, token_space: TokenSpace) -> None:
    ck = write_rows(tmp_path / "checkpoint_5", token_space, step=5, ship_token_space=False)
    narrower = TokenSpace.from_dict(
        {"text_vocab_size": 256, "vocab_size_total": 320, "modalities": {"audio": [256, 320]}}
    )
    with pytest.raises(Incompatible, match=r"row range \[256, 384\) runs past the token space's vocab_size_total 320"):
        TrainableRows.load(ck, run_token_space=narrower)


def test_integer_rows_are_refused(tmp_path: Path, token_space: TokenSpace) -> None:
    ck = write_rows(tmp_path / "checkpoint_6", token_space, step=6, rows=torch.zeros(ROWS, HIDDEN, dtype=torch.int64))
    with pytest.raises(InvalidInput, match="input-embedding rows have dtype torch.int64, expected a floating-point"):
        TrainableRows.load(ck)


def test_an_extra_tensor_is_named(tmp_path: Path, token_space: TokenSpace) -> None:
    ck = write_rows(tmp_path / "checkpoint_6", token_space, step=6)
    tensors = torch.load(ck / "trainable_rows.pt", weights_only=True)
    tensors["norm.weight"] = torch.ones(HIDDEN)
    torch.save(tensors, ck / "trainable_rows.pt")
    with pytest.raises(InvalidInput, match="unexpected tensor 'norm.weight' besides the embedding and lm_head rows"):
        TrainableRows.load(ck)


def test_content_hash_follows_the_bytes_not_the_folder(tmp_path: Path, token_space: TokenSpace) -> None:
    a = write_rows(tmp_path / "a" / "checkpoint_9", token_space, step=9, seed=1)
    b = write_rows(tmp_path / "b" / "checkpoint_9", token_space, step=9, seed=1)
    c = write_rows(tmp_path / "c" / "checkpoint_9", token_space, step=9, seed=2)
    ha, hb, hc = (TrainableRows.load(p).content_hash for p in (a, b, c))
    assert ha == hb != hc


@pytest.mark.parametrize(
    "name, step",
    [
        ("checkpoint_7000", 7000),
        ("checkpoint-7000", 7000),
        ("checkpoint_3675.pt", 3675),
        ("ckpt_12", 12),
        ("final", None),
    ],
)
def test_parse_step(name: str, step: int | None) -> None:
    assert parse_step(name) == step

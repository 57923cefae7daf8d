"""Eval sets: Parquet + manifest.json, the writer, validation and the content hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalboard.fixtures import make_evalset, make_token_space, synthetic_examples
from registry.errors import InvalidInput
from registry.evalset import IGNORE_INDEX, EvalSet, Example, write_evalset
from registry.token_space import TokenSpace


def test_write_then_load(tmp_path: Path, token_space: TokenSpace) -> None:
    es = make_evalset(tmp_path / "es", "synthetic", token_space, n_per_task=5)
    again = EvalSet.load(tmp_path / "es")
    assert again.name == "synthetic" and len(again.examples) == 10
    assert again.token_space_hash == token_space.abi_hash
    assert again.token_space.abi_hash == token_space.abi_hash
    assert set(again.tasks) == {"a2t", "i2t"}
    assert again.tasks["a2t"]["examples"] == 5
    assert again.tasks["a2t"]["scored_tokens"] == sum(e.n_scored for e in es.examples if e.task == "a2t")
    assert again.content_hash == es.content_hash
    summary = again.summary()
    assert summary["codec_versions"] == {"audio": "encodec_24khz@1.0", "image": "vqgan_f16@2.1"}
    json.dumps(summary)


@pytest.mark.parametrize("which", ["folder", "manifest", "parquet"])
def test_load_from_folder_manifest_or_parquet(tmp_path: Path, token_space: TokenSpace, which: str) -> None:
    es = make_evalset(tmp_path / "es", "synthetic", token_space, n_per_task=2)
    path = {
        "folder": tmp_path / "es",
        "manifest": tmp_path / "es" / "manifest.json",
        "parquet": tmp_path / "es" / "part-00000.parquet",
    }[which]
    assert EvalSet.load(path).content_hash == es.content_hash


def test_several_parquet_files_are_concatenated_in_order(tmp_path: Path, token_space: TokenSpace) -> None:
    examples = synthetic_examples(token_space, n_per_task=5)
    es = write_evalset(tmp_path / "es", "split", examples, token_space, rows_per_file=3)
    assert len(list((tmp_path / "es").glob("*.parquet"))) == 4
    assert [e.example_id for e in es.examples] == [e.example_id for e in examples]


def test_content_hash_ignores_the_name_but_not_a_token(tmp_path: Path, token_space: TokenSpace) -> None:
    examples = synthetic_examples(token_space, n_per_task=3)
    a = write_evalset(tmp_path / "a", "first", examples, token_space, description="one")
    b = write_evalset(tmp_path / "b", "renamed", examples, token_space, description="two")
    changed = [Example(e.example_id, e.task, list(e.input_ids), list(e.labels)) for e in examples]
    changed[0].input_ids[1] += 1
    c = write_evalset(tmp_path / "c", "first", changed, token_space)
    assert a.content_hash == b.content_hash != c.content_hash
    other_space = make_token_space(256, image=96)
    d = write_evalset(tmp_path / "d", "first", examples, other_space)
    assert d.content_hash != a.content_hash


def test_ids_are_checked_against_a_given_token_space(tmp_path: Path, token_space: TokenSpace) -> None:
    wide = make_token_space(256, image=96)  # ids up to 415
    examples = [Example("i2t-0", "i2t", [1, 400, 2, 10], [IGNORE_INDEX] * 3 + [10])]
    write_evalset(tmp_path / "es", "wide", examples, wide)
    assert EvalSet.load(tmp_path / "es").token_space.vocab_size_total == 416
    with pytest.raises(InvalidInput, match=r"example 'i2t-0' has token id 400, outside the token space \[0, 384\)"):
        EvalSet.load(tmp_path / "es", token_space=token_space)


def _manifest(tmp_path: Path, space: TokenSpace, **changes) -> Path:
    make_evalset(tmp_path / "es", "synthetic", space, n_per_task=1)
    path = tmp_path / "es" / "manifest.json"
    manifest = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            manifest.pop(k)
        else:
            manifest[k] = v
    path.write_text(json.dumps(manifest))
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"name": None}, "missing field 'name'"),
        ({"token_space_hash": None, "token_space": None}, "missing field 'token_space_hash'"),
        ({"token_space_hash": "0" * 64}, "token_space_hash 000000000000… does not match its inline token_space"),
        ({"tokenizer": "x"}, "unexpected field 'tokenizer'"),
        ({"files": ["../elsewhere.parquet"]}, "file 'elsewhere.parquet' lies outside the eval-set folder"),
        ({"files": ["missing.parquet"]}, "lists 'missing.parquet', which does not exist"),
    ],
    ids=["no-name", "no-hash", "hash-vs-inline", "unexpected", "escaping-file", "missing-file"],
)
def test_invalid_manifests(tmp_path: Path, token_space: TokenSpace, changes: dict, message: str) -> None:
    path = _manifest(tmp_path, token_space, **changes)
    with pytest.raises(InvalidInput) as e:
        EvalSet.load(tmp_path / "es")
    assert message in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize(
    "examples, message",
    [
        (
            [Example("a", "a2t", [1, 2], [IGNORE_INDEX, 2]), Example("a", "a2t", [1, 2], [IGNORE_INDEX, 2])],
            "example 'a' appears twice",
        ),
        ([Example("a", "a2t", [], [])], "example 'a' has no tokens"),
        ([Example("a", "a2t", [1, -3, 2], [IGNORE_INDEX, IGNORE_INDEX, 2])], "has token id -3"),
        ([Example("a", "a2t", [1, 2, 3], [IGNORE_INDEX, IGNORE_INDEX, 999])], "has label 999, outside the token space"),
        ([Example("a", "all", [1, 2], [IGNORE_INDEX, 2])], "task 'all' is reserved for the loss over every task"),
    ],
    ids=["duplicate-id", "no-tokens", "negative-id", "label-outside", "task-all"],
)
def test_the_writer_refuses_invalid_examples(tmp_path: Path, token_space: TokenSpace, examples, message) -> None:
    with pytest.raises(InvalidInput, match=message):
        write_evalset(tmp_path / "es", "bad", examples, token_space)


def test_missing_column_is_named(tmp_path: Path, token_space: TokenSpace) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _manifest(tmp_path, token_space, files=None).parent / "part-00000.parquet"
    pq.write_table(pa.table({"example_id": ["a"], "task": ["a2t"], "input_ids": [[1, 2]]}), path)
    with pytest.raises(InvalidInput, match=r"part-00000.parquet: is missing column 'labels'"):
        EvalSet.load(tmp_path / "es")


def test_a_file_that_is_not_parquet(tmp_path: Path, token_space: TokenSpace) -> None:
    path = _manifest(tmp_path, token_space).parent / "part-00000.parquet"
    path.write_text("<html>not parquet</html>")
    with pytest.raises(InvalidInput, match=r"is not a readable Parquet file") as e:
        EvalSet.load(tmp_path / "es")
    assert str(path) in str(e.value)

"""`token_space.json`: the canonical ABI hash, the raw file hash, accepted forms and `diff`."""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evalboard.fixtures import make_token_space
from registry.errors import InvalidInput
from registry.token_space import TokenSpace

MODALITY_NAMES = ["audio", "image", "video", "speech", "music"]


@st.composite
def token_space_dicts(draw) -> dict[str, Any]:
    """Valid token spaces with at least one free row around every range boundary, so moving
    any boundary by one row keeps them valid."""
    text = draw(st.integers(2, 200_000))
    names = draw(st.lists(st.sampled_from(MODALITY_NAMES), min_size=1, max_size=4, unique=True))
    modalities: dict[str, Any] = {}
    cursor = text
    for name in names:
        cursor += draw(st.integers(1, 1000))
        size = draw(st.integers(2, 50_000))
        modalities[name] = {
            "start": cursor,
            "end": cursor + size,
            "codec": f"{name}-codec",
            "codec_version": draw(st.sampled_from(["1.0", "2.1"])),
        }
        cursor += size
    return {
        "text_vocab_size": text,
        "vocab_size_total": cursor + draw(st.integers(1, 1000)),
        "modalities": modalities,
        "special_tokens": {"pad": 0, "bos": 1},
        "pad_token_id": 0,
        "tokenizer": {"name": "Qwen/Qwen3-8B-Base", "version": "2025.04"},
        "description": "drawn by hypothesis",
    }


def _shuffled(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {k: _shuffled(value[k], rng) for k in keys}
    return value


LAYOUTS = [
    {"indent": None, "separators": (",", ":")},
    {"indent": None, "separators": (", ", ": ")},
    {"indent": 2},
    {"indent": 4, "separators": (" ,", " :  ")},
    {"indent": "\t"},
]


def _serialise(data: dict[str, Any], rng: random.Random, layout: dict[str, Any], trailer: str) -> bytes:
    return (json.dumps(_shuffled(data, rng), **layout) + trailer).encode()


def _load_bytes(raw: bytes) -> TokenSpace:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "token_space.json"
        path.write_bytes(raw)
        return TokenSpace.load(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=token_space_dicts(),
    rngs=st.tuples(st.randoms(), st.randoms()),
    layouts=st.tuples(st.sampled_from(LAYOUTS), st.sampled_from(LAYOUTS)),
    trailers=st.tuples(st.sampled_from(["", "\n", "\n\n  "]), st.sampled_from(["", "\n", " \t\n"])),
)
def test_abi_hash_ignores_key_order_and_whitespace(data, rngs, layouts, trailers) -> None:
    raws = [_serialise(data, rng, layout, trailer) for rng, layout, trailer in zip(rngs, layouts, trailers)]
    a, b = (_load_bytes(raw) for raw in raws)
    assert a.abi_hash == b.abi_hash == TokenSpace.from_dict(data).abi_hash
    assert a.file_sha256 == hashlib.sha256(raws[0]).hexdigest()
    assert b.file_sha256 == hashlib.sha256(raws[1]).hexdigest()
    assert (a.file_sha256 == b.file_sha256) == (raws[0] == raws[1])


def _boundaries(data: dict[str, Any]) -> list[tuple]:
    out: list[tuple] = [("text_vocab_size",), ("vocab_size_total",)]
    for name in data["modalities"]:
        out += [("modalities", name, "start"), ("modalities", name, "end")]
    return out


@settings(max_examples=80, deadline=None)
@given(data=token_space_dicts(), pick=st.integers(0, 1_000), delta=st.sampled_from([-1, 1]))
def test_abi_hash_changes_when_any_range_or_size_moves(data, pick, delta) -> None:
    where = _boundaries(data)[pick % len(_boundaries(data))]
    changed = json.loads(json.dumps(data))
    node = changed
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] += delta
    before, after = TokenSpace.from_dict(data), TokenSpace.from_dict(changed)
    assert before.abi_hash != after.abi_hash, where


def test_only_the_file_hash_sees_whitespace(tmp_path: Path) -> None:
    ts = make_token_space(256)
    compact, pretty = tmp_path / "compact.json", tmp_path / "pretty.json"
    compact.write_text(json.dumps(ts.to_dict(), separators=(",", ":")))
    pretty.write_text(json.dumps(ts.to_dict(), indent=2) + "\n")
    a, b = TokenSpace.load(compact), TokenSpace.load(pretty)
    assert a.abi_hash == b.abi_hash == ts.abi_hash
    assert a.file_sha256 != b.file_sha256


def test_versions_and_descriptions_are_not_part_of_the_abi() -> None:
    base = make_token_space(256)
    bumped = make_token_space(256, audio_codec=("encodec_24khz", "1.1"), tokenizer=("Qwen/Qwen3-8B-Base", "2025.06"))
    assert bumped.abi_hash == base.abi_hash
    described = TokenSpace.from_dict({**base.to_dict(), "description": "another name"})
    assert described.abi_hash == base.abi_hash
    assert make_token_space(256, pad_token_id=1).abi_hash != base.abi_hash


@pytest.mark.parametrize(
    "modalities",
    [
        {"audio": [256, 320], "image": [320, 384]},
        {"audio": {"start": 256, "size": 64}, "image": {"start": 320, "size": 64}},
        {"audio": {"offset": 256, "stop": 320}, "image": {"start": 320, "end": 384, "size": 64}},
        [{"name": "image", "start": 320, "end": 384}, {"name": "audio", "start": 256, "end": 320}],
    ],
    ids=["start-end-lists", "start-size", "offset-stop", "list-of-objects"],
)
def test_range_forms_are_equivalent(modalities) -> None:
    canonical = make_token_space(256)
    data = {
        "text_vocab_size": 256,
        "vocab_size_total": 384,
        "modalities": modalities,
        "special_tokens": {"pad": 0},
        "pad_token_id": 0,
    }
    ts = TokenSpace.from_dict(data)
    assert [(r.name, r.start, r.end) for r in sorted(ts.modalities, key=lambda r: r.start)] == [
        ("audio", 256, 320),
        ("image", 320, 384),
    ]
    assert ts.abi_hash == canonical.abi_hash


def test_field_aliases_are_accepted_but_not_twice() -> None:
    ts = TokenSpace.from_dict(
        {
            "base_vocab_size": 256,
            "total_vocab_size": 384,
            "modality_ranges": {"audio": [256, 320], "image": [320, 384]},
            "special_tokens": {"pad": 0},
            "pad_id": 0,
        }
    )
    assert ts.abi_hash == make_token_space(256).abi_hash
    with pytest.raises(InvalidInput, match=r"aliases of 'vocab_size_total'; give only one"):
        TokenSpace.from_dict(
            {"text_vocab_size": 256, "vocab_size_total": 384, "vocab_size": 384, "modalities": {"audio": [256, 384]}}
        )


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    ts = make_token_space(256, gap=8)
    loaded = TokenSpace.load(ts.save(tmp_path / "token_space.json"))
    assert loaded.abi_hash == ts.abi_hash
    assert loaded.codec_versions() == {"audio": "encodec_24khz@1.0", "image": "vqgan_f16@2.1"}
    assert loaded.tokenizer_version == "2025.04"
    assert loaded.path == str(tmp_path / "token_space.json")


def test_diff_names_the_range_and_both_sides() -> None:
    a, b = make_token_space(256), make_token_space(256, image=96)
    changes = {c.field: c for c in a.diff(b, "A", "B")}
    assert changes["range:image"].message == "image range 320–383 (64 rows) in A, 320–415 (96 rows) in B"
    assert changes["range:image"].severity == "error"
    assert (changes["range:image"].this, changes["range:image"].other) == ((320, 384), (320, 416))
    assert changes["vocab_size_total"].message == "vocab_size_total 384 in A, 416 in B"
    assert set(changes) == {"range:image", "vocab_size_total"}
    assert a.diff(make_token_space(256), "A", "B") == []


def test_diff_reports_versions_as_warnings_and_missing_ranges_as_errors() -> None:
    a = make_token_space(256)
    b = make_token_space(256, image_codec=("vqgan_f16", "2.2"), tokenizer=("Qwen/Qwen3-8B-Base", "2025.06"))
    changes = {c.field: c for c in a.diff(b, "ckpt", "eval set")}
    assert changes["codec:image"].severity == "warning"
    assert changes["codec:image"].message == "image codec vqgan_f16@2.1 in ckpt, vqgan_f16@2.2 in eval set"
    assert changes["tokenizer"].message == (
        "tokenizer Qwen/Qwen3-8B-Base@2025.04 in ckpt, Qwen/Qwen3-8B-Base@2025.06 in eval set"
    )
    audio_only = TokenSpace.from_dict(
        {
            "text_vocab_size": 256,
            "vocab_size_total": 384,
            "modalities": {"audio": [256, 320]},
            "special_tokens": {"pad": 0},
            "pad_token_id": 0,
        }
    )
    missing = {c.field: c for c in a.diff(audio_only, "A", "B")}["range:image"]
    assert missing.message == "image range 320–383 in A, absent in B"
    assert missing.severity == "error"


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"vocab_size_total": 384, "modalities": {"audio": [256, 384]}},
            "missing field 'text_vocab_size' (accepted names: text_vocab_size / text_vocab",
        ),
        (
            {"text_vocab_size": 256, "vocab_size_total": 384, "modalities": {"audio": [256, 384]}, "colour": "red"},
            "unexpected field 'colour'; known fields:",
        ),
        (
            {"text_vocab_size": 256, "vocab_size_total": 384, "modalities": {"audio": [200, 384]}},
            "audio range 200–383 starts inside the text vocabulary (text_vocab_size 256)",
        ),
        (
            {"text_vocab_size": 256, "vocab_size_total": 384, "modalities": {"audio": [300, 300]}},
            "audio range [300, 300) is empty or reversed",
        ),
        (
            {
                "text_vocab_size": 256,
                "vocab_size_total": 384,
                "modalities": {"audio": {"start": 256, "end": 320, "size": 32}},
            },
            "modality 'audio' size 32 disagrees with [start, end) = [256, 320)",
        ),
        (
            {"text_vocab_size": 256, "vocab_size_total": 384, "modalities": {"audio": [256, 384]}, "pad_token_id": 384},
            "pad_token_id 384 is outside [0, 384)",
        ),
        ({"text_vocab_size": 256, "vocab_size_total": 384, "modalities": {}}, "defines no modality ranges"),
    ],
    ids=["missing", "unexpected", "inside-text", "empty-range", "size-disagrees", "pad-outside", "no-ranges"],
)
def test_invalid_token_spaces_say_what_is_wrong(data, message) -> None:
    with pytest.raises(InvalidInput) as e:
        TokenSpace.from_dict(data, source="runs/x/token_space.json")
    assert message in str(e.value)
    assert str(e.value).startswith("runs/x/token_space.json: ")

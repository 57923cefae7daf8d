"""Reading untrusted files: strict JSON, sniffing tensor files, loading without running code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from registry.errors import InvalidInput, UnsafePickle
from registry.safeio import canonical_json, load_tensors, read_json, sha256_file, sniff_tensor_file


class Payload:
    def __reduce__(self):
        return (os.system, ("echo ran > ran.txt",))


@pytest.mark.parametrize(
    "raw, message",
    [
        (b'{"a": 1, "a": 2}', "duplicate JSON key 'a'"),
        (b'{"a": {"b": 1, "b": 1}}', "duplicate JSON key 'b'"),
        (b'{"a": NaN}', "JSON contains NaN"),
        (b'{"a": -Infinity}', "JSON contains -Infinity"),
        (b'\xef\xbb\xbf{"a": 1}', "byte-order mark"),
        (b"", "is empty, expected a JSON object"),
        (b'{"a": 1,}', "invalid JSON at line 1 column 9"),
        (b'{"a": "\xff"}', "is not UTF-8 text (byte 7)"),
        (b"[1, 2]", "expected a JSON object, found array"),
    ],
    ids=["duplicate", "nested-duplicate", "nan", "infinity", "bom", "empty", "trailing-comma", "not-utf8", "array"],
)
def test_read_json_is_strict(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(raw)
    with pytest.raises(InvalidInput) as e:
        read_json(path)
    assert message in str(e.value)
    assert str(e.value).startswith(f"{path}: ")
    assert "\n" not in str(e.value)


def test_read_json_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="file not found"):
        read_json(tmp_path / "nope.json")
    with pytest.raises(InvalidInput, match="is a directory"):
        read_json(tmp_path)


def test_canonical_json_is_order_and_whitespace_free() -> None:
    assert canonical_json({"b": [1, {"d": 2, "c": 3}], "a": "é"}) == '{"a":"\\u00e9","b":[1,{"c":3,"d":2}]}'
    with pytest.raises(ValueError):
        canonical_json({"a": float("nan")})


def test_sha256_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert sha256_file(tmp_path / "f") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_sniff(tmp_path: Path) -> None:
    torch.save({"x": torch.ones(1)}, tmp_path / "a.pt")
    torch.save({"x": torch.ones(1)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    from safetensors.torch import save_file

    save_file({"x": torch.ones(1)}, str(tmp_path / "b.bin"))  # safetensors under a misleading name
    assert sniff_tensor_file(tmp_path / "a.pt") == "torch-zip"
    assert sniff_tensor_file(tmp_path / "legacy.pt") == "torch-legacy"
    assert sniff_tensor_file(tmp_path / "b.bin") == "safetensors"
    (tmp_path / "c.pt").write_bytes(b"\x00garbage" * 4)
    with pytest.raises(
        InvalidInput, match=r"is not a PyTorch or safetensors file \(starts with b'\\x00garbage', 32 bytes\)"
    ):
        sniff_tensor_file(tmp_path / "c.pt")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_load_tensors_round_trips_both_torch_formats(tmp_path: Path, legacy: bool) -> None:
    t = torch.arange(6.0).reshape(2, 3)
    torch.save(
        {"w": t, "step": 3, "nested": {"b": t * 2}}, tmp_path / "a.pt", _use_new_zipfile_serialization=not legacy
    )
    loaded = load_tensors(tmp_path / "a.pt")
    assert torch.equal(loaded["w"], t) and loaded["step"] == 3 and torch.equal(loaded["nested"]["b"], t * 2)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickled_code_is_refused_even_when_torch_is_told_to_allow_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, legacy: bool
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    torch.save({"x": Payload()}, tmp_path / "evil.pt", _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafePickle) as e:
        load_tensors(tmp_path / "evil.pt")
    assert "'posix.system'" in str(e.value) and "would run code" in str(e.value)
    assert not (tmp_path / "ran.txt").exists()


def test_a_custom_class_is_named(tmp_path: Path) -> None:
    torch.save({"x": Payload}, tmp_path / "cls.pt")  # the class itself, not an instance
    with pytest.raises(UnsafePickle, match=rf"the global '{__name__}.Payload'"):
        load_tensors(tmp_path / "cls.pt")


def test_a_non_dict_payload_is_refused(tmp_path: Path) -> None:
    torch.save(torch.ones(3), tmp_path / "t.pt")
    with pytest.raises(InvalidInput, match="holds a Tensor, expected a dict of tensors"):
        load_tensors(tmp_path / "t.pt")


def test_a_flipped_byte_inside_a_zip_member_is_noticed(tmp_path: Path) -> None:
    torch.save({"w": torch.zeros(1000)}, tmp_path / "a.pt")
    data = bytearray((tmp_path / "a.pt").read_bytes())
    start = data.index(b"\x00" * 64, 200)  # inside the zero-filled tensor bytes
    data[start + 10] ^= 0xFF
    (tmp_path / "a.pt").write_bytes(bytes(data))
    with pytest.raises(InvalidInput, match="CRC mismatch in archive member"):
        load_tensors(tmp_path / "a.pt")


def test_safetensors_that_claim_more_data_than_they_hold(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.ones(64)}, str(tmp_path / "a.safetensors"))
    data = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "a.safetensors").write_bytes(data[:-16])
    with pytest.raises(InvalidInput, match=r"tensor 'w' ends at byte 256 but the data section has 240 \(truncated\)"):
        load_tensors(tmp_path / "a.safetensors")

"""The on-disk vision-feature cache trusts no entry it reads: each one is checked against the key
it was stored under, its recorded shape and dtype, the caller's expectations and a checksum of its
bytes. A bad entry is a miss (logged, naming the file, and removed so the recomputed features
replace it), never a crash and never someone else's features; nothing is unpickled."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from evaluator.vision import FeatureCache

KEY = "ab" + "1" * 62
OTHER = "ab" + "2" * 62


@pytest.fixture
def cache(tmp_path) -> FeatureCache:
    return FeatureCache(tmp_path / "vision", max_bytes=1 << 20)


def _features(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(6, 32, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _bad(cache: FeatureCache, caplog, key: str = KEY, **expect) -> str:
    """Assert that reading `key` is a logged miss that removes the file; return the warning."""
    misses = cache.misses
    with caplog.at_level(logging.WARNING, logger="evaluator.vision"):
        assert cache.get(key, **expect) is None
    assert cache.misses == misses + 1
    assert not cache._file(key).exists()  # the recomputed features take its place
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(cache._file(key)) in warnings[0], warnings
    return warnings[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_entry_reads_back_as_it_was_written(cache, dtype):
    feats = _features(dtype=dtype)
    cache.put(KEY, feats)
    got = cache.get(KEY, dtype=dtype, width=32)
    assert got is not None and got.dtype == dtype and torch.equal(got, feats)
    assert (cache.hits, cache.misses) == (1, 0)
    assert cache.get(OTHER) is None and cache.misses == 1  # absent: a plain miss


def test_a_flipped_byte_is_a_logged_miss_and_the_entry_is_replaced(cache, caplog):
    cache.put(KEY, _features())
    f = cache._file(KEY)
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF  # inside the tensor's bytes: the file still parses, with other numbers
    f.write_bytes(bytes(data))
    assert "checksum" in _bad(cache, caplog)
    cache.put(KEY, _features())  # what the evaluator does after recomputing
    assert torch.equal(cache.get(KEY), _features())


def test_a_truncated_entry_is_a_miss_not_a_crash(cache, caplog):
    cache.put(KEY, _features())
    f = cache._file(KEY)
    f.write_bytes(f.read_bytes()[:100])
    assert "not a readable safetensors file" in _bad(cache, caplog)


def test_features_of_another_key_are_not_served(cache, caplog):
    cache.put(OTHER, _features(seed=1))
    shutil.copy(cache._file(OTHER), cache._file(KEY))  # same shape and dtype, other image
    assert "stored under key" in _bad(cache, caplog)
    assert cache.get(OTHER) is not None


def test_an_entry_the_tower_could_not_have_produced_is_a_miss(cache, caplog):
    cache.put(KEY, _features())
    assert "float32" in _bad(cache, caplog, dtype=torch.bfloat16)
    cache.put(KEY, _features())
    caplog.clear()
    assert "[6, 32]" in _bad(cache, caplog, width=64)


def test_an_entry_without_a_checksum_is_recomputed(cache, caplog):
    from safetensors.torch import save_file

    cache._file(KEY).parent.mkdir(parents=True)
    save_file({"features": _features()}, str(cache._file(KEY)))  # what an older evalboard wrote
    assert "without a checksum" in _bad(cache, caplog)


def test_a_pickle_in_the_cache_is_never_unpickled(cache, caplog, monkeypatch):
    cache._file(KEY).parent.mkdir(parents=True)
    torch.save({"features": _features()}, cache._file(KEY))

    def refuse(*args, **kwargs):
        raise AssertionError("the cache must not unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    assert "not a readable safetensors file" in _bad(cache, caplog)

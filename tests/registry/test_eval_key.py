"""One identity for an evaluation, and its spellings as the queue, MLflow and per-example files
have always written them (so what is stored keeps its meaning)."""

from __future__ import annotations

import pytest

from registry.errors import InvalidInput
from registry.eval_key import EvalKey, subset_of

CK, ES = "c" * 64, "e" * 64


def test_the_spellings_of_one_key() -> None:
    whole, part = EvalKey(CK, ES), EvalKey(CK, ES, 8)
    assert (whole.dedupe_key, part.dedupe_key) == (f"{CK}:{ES}", f"{CK}:{ES}:n8")
    assert (whole.tag, part.tag) == (f"{CK[:24]}:{ES[:24]}", f"{CK[:24]}:{ES[:24]}:n8")
    assert (whole.subset, part.subset) == ("all", "max_examples=8")
    assert EvalKey(CK, ES, 0) == whole  # 0 always meant "no limit"
    assert whole != part and len({whole, part, EvalKey(CK, ES, 8)}) == 2


def test_a_results_key_comes_from_its_hashes_and_subset() -> None:
    class Result:
        checkpoint_hash, evalset_hash = CK, ES

        def __init__(self, extra):
            self.extra = extra

    assert EvalKey.of_result(Result({"max_examples": 8})) == EvalKey(CK, ES, 8)
    assert EvalKey.of_result(Result(None)) == EvalKey(CK, ES)
    assert subset_of(Result({"max_examples": True})) is None  # not a number of examples


@pytest.mark.parametrize("bad", [-1, 2.5, True, "8"])
def test_an_impossible_subset_is_refused(bad) -> None:
    with pytest.raises(InvalidInput, match="max_examples must be a whole number"):
        EvalKey(CK, ES, bad)

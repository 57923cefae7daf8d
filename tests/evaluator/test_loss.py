"""The fast loss against the model's own `labels=` loss, on a tiny real Qwen3."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from _tiny import (
    PAD_ID,
    SIZES,
    TEXT_VOCAB,
    VOCAB_TOTAL,
    build_tiny_qwen3,
    make_example,
    make_examples,
    random_rows,
    reference_losses,
    save_tiny_qwen3,
)

from evaluator.base_model import load_base
from evaluator.batching import IGNORE_INDEX, Example, padded_cost, plan_batches
from evaluator.loss import batch_nll, evaluate_loss, scored_nll
from evaluator.rows import ResidentModel
from registry.errors import Incompatible, InvalidInput

TOL = 1e-4


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_qwen3(tmp_path_factory.mktemp("base") / "tiny", rows=520)


@pytest.fixture(scope="module")
def model(base_dir):
    resident = ResidentModel(load_base(base_dir, "cpu"))
    resident.apply(SIZES, random_rows(1))
    return resident.model


@pytest.fixture(scope="module")
def examples():
    return make_examples(seed=0, n=12)


def assert_matches_reference(report, model, examples):
    per_example, per_task = reference_losses(model, examples)
    for got in report.examples:
        assert abs(got.loss - per_example[got.example_id]) < TOL, got
    assert set(report.tasks) == set(per_task)
    for name, loss in per_task.items():
        assert abs(report.loss(name) - loss) < TOL, name


def test_losses_match_the_models_own_labels_loss(model, examples):
    report = evaluate_loss(model, examples, max_tokens_per_batch=256)
    assert_matches_reference(report, model, examples)
    assert report.batches > 1
    assert report.n_scored == sum(e.tokens for e in report.examples)
    assert report.tasks["all"].examples == len(examples)
    assert list(report.losses()) == ["all", "a2t", "i2t"]


def test_all_is_token_weighted_not_a_mean_of_means(model, examples):
    report = evaluate_loss(model, examples)
    weighted = sum(e.loss * e.tokens for e in report.examples) / report.n_scored
    mean_of_means = sum(e.loss for e in report.examples) / len(report.examples)
    assert report.loss() == pytest.approx(weighted, abs=1e-9)
    assert abs(report.loss() - mean_of_means) > 1e-3


def test_batch_budget_does_not_change_the_losses(model, examples):
    reports = [evaluate_loss(model, examples, max_tokens_per_batch=b) for b in (90, 400, 100_000)]
    assert len({r.batches for r in reports}) == 3
    for r in reports[1:]:
        for a, b in zip(r.examples, reports[0].examples):
            assert a.loss == pytest.approx(b.loss, abs=1e-5)


def test_chunking_does_not_change_the_losses(model, examples):
    small = evaluate_loss(model, examples, positions_per_chunk=3, vocab_block=100)
    large = evaluate_loss(model, examples)
    for a, b in zip(small.examples, large.examples):
        assert a.loss == pytest.approx(b.loss, abs=1e-5)


def test_swapped_rows_give_the_same_losses_as_a_fresh_load(base_dir, examples):
    resident = ResidentModel(load_base(base_dir, "cpu"))
    resident.apply(SIZES, random_rows(1))
    first = evaluate_loss(resident.model, examples)
    resident.apply(SIZES, random_rows(2))
    swapped = evaluate_loss(resident.model, examples)

    fresh = ResidentModel(load_base(base_dir, "cpu"))
    fresh.apply(SIZES, random_rows(2))
    expected = evaluate_loss(fresh.model, examples)

    assert abs(first.loss() - swapped.loss()) > 1e-3  # the rows matter
    for a, b in zip(swapped.examples, expected.examples):
        assert a.loss == b.loss


def test_tied_model_matches_reference(examples):
    resident = ResidentModel(build_tiny_qwen3(tie=True))
    resident.apply(SIZES, random_rows(3, tied=True))
    report = evaluate_loss(resident.model, examples, max_tokens_per_batch=300)
    assert_matches_reference(report, resident.model, examples)


def test_very_different_lengths_in_one_batch(model):
    rng = random.Random(5)
    examples = [
        make_example("short", "a2t", 3, 1, rng),
        make_example("long", "i2t", 700, 40, rng),
        make_example("mid", "a2t", 60, 59, rng),  # everything after the first token scored
    ]
    report = evaluate_loss(model, examples, max_tokens_per_batch=100_000, max_padding=1.0)
    assert report.batches == 1
    assert_matches_reference(report, model, examples)


def test_only_the_last_token_scored(model):
    ids = [520, 530, 540, 17, 23]
    example = Example("last", "a2t", ids, [IGNORE_INDEX] * 4 + [23])
    report = evaluate_loss(model, [example])
    assert report.examples[0].tokens == 1
    assert_matches_reference(report, model, [example])


def test_example_without_scored_tokens_is_reported_but_not_averaged(model, examples):
    empty = Example("empty", "a2t", [1, 2, 3], [5, IGNORE_INDEX, IGNORE_INDEX])  # labels[0] never scored
    report = evaluate_loss(model, [*examples, empty])
    assert report.examples[-1].tokens == 0 and math.isnan(report.examples[-1].loss)
    assert report.loss() == pytest.approx(evaluate_loss(model, examples).loss(), abs=1e-12)


@pytest.mark.parametrize(
    "oom",
    [
        lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        lambda: RuntimeError("CUDA error: out of memory"),
    ],
)
def test_out_of_memory_halves_the_batch_and_keeps_the_losses(model, examples, oom):
    calls = []

    def flaky(model, batch, **kw):
        calls.append(len(batch.indices))
        if len(calls) == 1:
            raise oom()
        return batch_nll(model, batch, **kw)

    expected = evaluate_loss(model, examples, max_tokens_per_batch=100_000, max_padding=1.0)
    report = evaluate_loss(model, examples, max_tokens_per_batch=100_000, max_padding=1.0, batch_fn=flaky)

    assert report.oom_retries == 1 and calls[:3] == [12, 6, 6]
    assert report.max_tokens_per_batch < 100_000
    for a, b in zip(report.examples, expected.examples):
        assert a.loss == pytest.approx(b.loss, abs=1e-6)


def test_out_of_memory_on_a_single_example_is_a_clear_error(model, examples):
    def always(model, batch, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(Incompatible, match="does not fit in cpu memory even on its own"):
        evaluate_loss(model, examples[:1], batch_fn=always)


def test_other_errors_are_not_retried(model, examples):
    def broken(model, batch, **kw):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        evaluate_loss(model, examples, batch_fn=broken)


def test_progress_reports_tokens_done(model, examples):
    seen = []
    report = evaluate_loss(model, examples, max_tokens_per_batch=200, progress=lambda d, t: seen.append((d, t)))
    assert len(seen) == report.batches
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1] == (report.n_tokens, report.n_tokens)


def test_bad_examples_are_refused(model):
    with pytest.raises(Incompatible, match=r"token id 640, outside the model's vocabulary \[0, 640\)"):
        evaluate_loss(model, [Example("x", "a2t", [1, 640], [IGNORE_INDEX, 2])])
    with pytest.raises(InvalidInput, match="3 labels for 2 input_ids"):
        evaluate_loss(model, [Example("x", "a2t", [1, 2], [1, 2, 3])])
    with pytest.raises(InvalidInput, match="task 'all'"):
        evaluate_loss(model, [Example("x", "all", [1, 2], [1, 2])])


def test_scored_nll_equals_cross_entropy():
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(50, 16, generator=g), torch.randn(VOCAB_TOTAL, 16, generator=g)
    bias = torch.randn(VOCAB_TOTAL, generator=g)
    targets = torch.randint(0, VOCAB_TOTAL, (50,), generator=g)
    expected = F.cross_entropy(hidden @ weight.T + bias, targets, reduction="none")
    got = scored_nll(hidden, targets, weight, bias, positions_per_chunk=7, vocab_block=100)
    assert torch.allclose(got, expected, atol=1e-5)


def test_plan_batches_respects_the_budget_and_covers_everything():
    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(200)]
    batches = plan_batches(lengths, 1000)
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert all(padded_cost(lengths, b) <= 1000 for b in batches)
    assert plan_batches([5000, 3], 1000) == [[0], [1]]  # too long for the budget: alone
    with pytest.raises(InvalidInput, match="must be positive"):
        plan_batches(lengths, 0)


def test_pad_id_does_not_matter(model, examples):
    a = evaluate_loss(model, examples, pad_token_id=PAD_ID)
    b = evaluate_loss(model, examples, pad_token_id=TEXT_VOCAB + 7)
    for x, y in zip(a.examples, b.examples):
        assert x.loss == pytest.approx(y.loss, abs=1e-5)


def test_tokens_after_the_last_scored_label_are_not_run(model):
    rng = random.Random(9)
    ids = [rng.randrange(520, 640) for _ in range(20)] + [rng.randrange(1, 512) for _ in range(5)]
    ids += [rng.randrange(520, 640) for _ in range(100)]  # an unscored tail
    labels = [IGNORE_INDEX] * 20 + ids[20:25] + [IGNORE_INDEX] * 100
    example = Example("middle", "i2t", ids, labels)
    report = evaluate_loss(model, [example])
    assert report.n_tokens == 25 and report.examples[0].tokens == 5
    assert_matches_reference(report, model, [example])


def test_right_padding_goes_without_the_mask_and_left_padding_keeps_it(model):
    """batch_nll drops the padding mask only where it cannot matter (padding after the real tokens);
    a left-padded batch keeps it, so its NLLs are still each example's own."""
    from evaluator.batching import Batch, collate

    rng = random.Random(11)
    examples = [make_example("a", "a2t", 40, 8, rng), make_example("b", "i2t", 17, 5, rng)]
    per_example, _ = reference_losses(model, examples)
    right = collate(examples, [0, 1], PAD_ID, torch.device("cpu"))
    longest = right.input_ids.shape[1]
    left = Batch([0, 1], right.input_ids.clone(), right.attention_mask.clone(), right.labels.clone(), right.n_tokens)
    n = len(examples[1].input_ids)
    for t in (left.input_ids, left.attention_mask, left.labels):
        t[1] = torch.roll(t[1], longest - n)  # example b's tokens moved to the end of its row
    for batch in (right, left):
        nll, rows = batch_nll(model, batch)
        for row, ex in enumerate(examples):
            assert abs(nll[rows == row].mean().item() - per_example[ex.example_id]) < TOL, (row, batch is left)


def test_plan_batches_keeps_padding_under_its_share():
    rng = random.Random(3)
    lengths = [int(32 * 32 ** rng.random()) for _ in range(300)]  # 32 .. 1024, log-uniform
    for max_padding in (0.0, 0.1, 0.3):
        batches = plan_batches(lengths, 16384, max_padding)
        assert sorted(i for b in batches for i in b) == list(range(300))
        for b in batches:
            assert padded_cost(lengths, b) <= 16384 or len(b) == 1
            assert sum(lengths[i] for i in b) >= (1 - max_padding) * padded_cost(lengths, b)
    assert len(plan_batches([100, 10], 1000, 1.0)) == 1  # 1.0: filled up to the budget
    assert len(plan_batches([100, 10], 1000)) == 2  # 10 tokens are not padded to 100 by default
    with pytest.raises(InvalidInput, match="max_padding"):
        plan_batches(lengths, 1000, 1.5)

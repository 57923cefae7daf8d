"""Preparing a tiny real Qwen3 for a token space, patching rows, swapping them on a resident base."""

from __future__ import annotations

import pytest
import torch
from _tiny import (
    AUDIO,
    HIDDEN,
    PAD_ID,
    SIZES,
    TEXT_VOCAB,
    VOCAB_TOTAL,
    build_tiny_qwen3,
    random_rows,
    save_tiny_qwen3,
)

from evaluator.base_model import load_base, resolve_base_model
from evaluator.rows import (
    ResidentModel,
    TokenSpaceSizes,
    patch_rows,
    prepare_for_token_space,
)
from registry.errors import Incompatible, InvalidInput, NotFound

N_NEW = VOCAB_TOTAL - TEXT_VOCAB


def _weights(model):
    return model.get_input_embeddings().weight, model.get_output_embeddings().weight


def _fresh(rows, *, base_rows=520, tie=False):
    model = build_tiny_qwen3(base_rows, tie=tie)
    prepare_for_token_space(model, TEXT_VOCAB, VOCAB_TOTAL, PAD_ID)
    patch_rows(model, rows.embed, rows.lm_head, rows.row_start, rows.row_end)
    return model


def test_prepare_grows_and_sets_new_rows_to_the_text_mean():
    model = build_tiny_qwen3(rows=520)  # padded base: 8 rows past the text vocabulary
    emb0, head0 = (w.clone() for w in _weights(model))

    report = prepare_for_token_space(model, TEXT_VOCAB, VOCAB_TOTAL, PAD_ID)

    emb, head = _weights(model)
    assert emb.shape == head.shape == (VOCAB_TOTAL, HIDDEN)
    assert torch.equal(emb[:TEXT_VOCAB], emb0[:TEXT_VOCAB])
    assert torch.equal(head[:TEXT_VOCAB], head0[:TEXT_VOCAB])
    assert torch.allclose(emb[TEXT_VOCAB:], emb0[:TEXT_VOCAB].mean(0).expand(N_NEW, -1))
    assert torch.allclose(head[TEXT_VOCAB:], head0[:TEXT_VOCAB].mean(0).expand(N_NEW, -1))
    assert (report.reinitialised_rows, report.added_rows, report.removed_rows) == (8, 120, 0)
    assert report.reallocated and not report.tied and not report.already_prepared
    assert model.config.vocab_size == VOCAB_TOTAL and model.config.pad_token_id == PAD_ID
    assert "8 base rows in [512, 520)" in report.describe()


def test_prepare_is_deterministic():
    a, b = build_tiny_qwen3(), build_tiny_qwen3()
    prepare_for_token_space(a, TEXT_VOCAB, VOCAB_TOTAL)
    prepare_for_token_space(b, TEXT_VOCAB, VOCAB_TOTAL)
    assert all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(b)))


def test_prepare_again_with_the_same_sizes_does_nothing():
    model = build_tiny_qwen3()
    prepare_for_token_space(model, TEXT_VOCAB, VOCAB_TOTAL, PAD_ID)
    ptrs = [w.data_ptr() for w in _weights(model)]

    report = prepare_for_token_space(model, TEXT_VOCAB, VOCAB_TOTAL, PAD_ID)

    assert report.already_prepared and not report.reallocated
    assert [w.data_ptr() for w in _weights(model)] == ptrs
    assert "already prepared" in report.describe()


def test_prepare_shrinks_a_larger_base():
    model = build_tiny_qwen3(rows=700)
    report = prepare_for_token_space(model, TEXT_VOCAB, VOCAB_TOTAL)
    assert _weights(model)[0].shape[0] == VOCAB_TOTAL
    assert (report.removed_rows, report.added_rows, report.reinitialised_rows) == (60, 0, 128)


def test_tied_embeddings_stay_tied():
    model = build_tiny_qwen3(tie=True)
    report = prepare_for_token_space(model, TEXT_VOCAB, VOCAB_TOTAL)
    emb, head = _weights(model)
    assert report.tied and "tied" in report.describe()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight

    rows = random_rows(1, tied=True)
    assert patch_rows(model, rows.embed, None, TEXT_VOCAB, VOCAB_TOTAL).lm_head == "tied"
    assert patch_rows(model, rows.embed, rows.embed.clone(), TEXT_VOCAB, VOCAB_TOTAL)
    assert torch.equal(head[TEXT_VOCAB:], rows.embed)


def test_tied_base_refuses_different_lm_head_rows():
    model = build_tiny_qwen3(tie=True)
    prepare_for_token_space(model, TEXT_VOCAB, VOCAB_TOTAL)
    rows = random_rows(1)
    with pytest.raises(Incompatible, match="ties lm_head to the input embedding"):
        patch_rows(model, rows.embed, rows.lm_head, TEXT_VOCAB, VOCAB_TOTAL)


def test_untied_base_refuses_missing_lm_head_rows():
    model = build_tiny_qwen3()
    prepare_for_token_space(model, TEXT_VOCAB, VOCAB_TOTAL)
    with pytest.raises(Incompatible, match="no lm_head rows"):
        patch_rows(model, random_rows(1).embed, None, TEXT_VOCAB, VOCAB_TOTAL)


def test_bfloat16_is_kept_and_rows_are_cast():
    model = build_tiny_qwen3(dtype=torch.bfloat16)
    report = prepare_for_token_space(model, TEXT_VOCAB, VOCAB_TOTAL)
    rows = random_rows(2)
    patch = patch_rows(model, rows.embed, rows.lm_head, TEXT_VOCAB, VOCAB_TOTAL)
    emb, head = _weights(model)
    assert report.dtype == "bfloat16" and emb.dtype == head.dtype == torch.bfloat16
    assert "cast float32 -> bfloat16" in patch.describe()
    assert torch.equal(head[TEXT_VOCAB:], rows.lm_head.to(torch.bfloat16))


def test_shape_mismatch_messages_carry_the_numbers():
    model = build_tiny_qwen3()
    prepare_for_token_space(model, TEXT_VOCAB, VOCAB_TOTAL)
    good = torch.zeros(N_NEW, HIDDEN)
    with pytest.raises(Incompatible) as info:
        patch_rows(model, good, torch.zeros(N_NEW, 32), TEXT_VOCAB, VOCAB_TOTAL)
    assert str(info.value) == "lm_head rows: expected (128, 64), file has (128, 32)"
    with pytest.raises(Incompatible, match=r"embedding rows: expected \(128, 64\), file has \(64, 64\)"):
        patch_rows(model, torch.zeros(64, HIDDEN), good, TEXT_VOCAB, VOCAB_TOTAL)
    with pytest.raises(Incompatible, match=r"\[512, 700\) do not fit the model's 640"):
        patch_rows(model, good, good, TEXT_VOCAB, 700)
    with pytest.raises(Incompatible, match="floating-point"):
        patch_rows(model, good.long(), good, TEXT_VOCAB, VOCAB_TOTAL)


def test_text_vocab_larger_than_base_is_refused():
    with pytest.raises(Incompatible, match="text_vocab_size=600 but the base embedding has only 520"):
        prepare_for_token_space(build_tiny_qwen3(rows=520), 600, 700)


@pytest.mark.parametrize(
    "text, total, pad, match",
    [(0, 10, None, "must be positive"), (10, 5, None, "smaller than"), (10, 20, 20, "outside")],
)
def test_token_space_sizes_are_validated(text, total, pad, match):
    with pytest.raises(InvalidInput, match=match):
        TokenSpaceSizes(text, total, pad)


def test_patch_touches_only_its_rows_in_place():
    model = build_tiny_qwen3()
    prepare_for_token_space(model, TEXT_VOCAB, VOCAB_TOTAL)
    before = [w.clone() for w in _weights(model)]
    ptrs = [w.data_ptr() for w in _weights(model)]
    rows = random_rows(3, *AUDIO)

    patch_rows(model, rows.embed, rows.lm_head, *AUDIO)

    for w, w0, new in zip(_weights(model), before, (rows.embed, rows.lm_head)):
        assert torch.equal(w[: AUDIO[0]], w0[: AUDIO[0]])
        assert torch.equal(w[AUDIO[1] :], w0[AUDIO[1] :])
        assert torch.equal(w[AUDIO[0] : AUDIO[1]], new)
    assert [w.data_ptr() for w in _weights(model)] == ptrs


def test_resident_swap_equals_a_fresh_load_and_does_not_reallocate():
    resident = ResidentModel(build_tiny_qwen3(rows=520))
    first = resident.apply(SIZES, random_rows(10))
    ptrs = [w.data_ptr() for w in _weights(resident.model)]

    second = resident.apply(SIZES, random_rows(11))

    assert first.prepared is not None and second.prepared is None
    assert "token space unchanged" in second.describe()
    assert [w.data_ptr() for w in _weights(resident.model)] == ptrs
    fresh = _fresh(random_rows(11))
    assert all(torch.equal(a, b) for a, b in zip(_weights(resident.model), _weights(fresh)))


def test_resident_swap_resets_rows_the_new_checkpoint_does_not_cover():
    resident = ResidentModel(build_tiny_qwen3(rows=520))
    resident.apply(SIZES, random_rows(10))
    audio_only = random_rows(12, *AUDIO)

    report = resident.apply(SIZES, audio_only)

    assert report.reset_rows == VOCAB_TOTAL - AUDIO[1]
    fresh = _fresh(audio_only)
    assert all(torch.equal(a, b) for a, b in zip(_weights(resident.model), _weights(fresh)))


def test_resident_reprepares_when_the_sizes_change():
    resident = ResidentModel(build_tiny_qwen3(rows=520))
    resident.apply(SIZES, random_rows(10))
    bigger = TokenSpaceSizes(TEXT_VOCAB, VOCAB_TOTAL + 64, PAD_ID)
    report = resident.apply(bigger, random_rows(13, TEXT_VOCAB, VOCAB_TOTAL + 64))
    assert report.prepared is not None and report.prepared.added_rows == 64
    with pytest.raises(Incompatible, match="inside the text vocabulary"):
        resident.apply(bigger, random_rows(14, 500, 600))
    with pytest.raises(Incompatible, match="needs a freshly loaded base"):
        resident.apply(TokenSpaceSizes(520, 650), random_rows(15, 520, 650))


def test_resolve_base_model(tmp_path):
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    assert resolve_base_model("org/tiny", {"org/tiny": str(model_dir)}) == model_dir
    with pytest.raises(InvalidInput, match="is a local folder"):  # a checkpoint may not name any folder
        resolve_base_model(str(model_dir), {})
    assert resolve_base_model(str(model_dir), {str(model_dir): str(model_dir)}) == model_dir
    assert resolve_base_model(str(model_dir), {"*": str(tmp_path)}) == model_dir
    with pytest.raises(NotFound, match="which is not a directory"):
        resolve_base_model("org/tiny", {"org/tiny": str(tmp_path / "missing")})
    with pytest.raises(NotFound) as info:
        resolve_base_model("org/absent", {"org/tiny": "x", "org/b": "y"}, cache_dir=tmp_path)
    message = str(info.value)
    assert "known ids: org/b, org/tiny" in message and "EVALBOARD_MODELS='org/absent=" in message


def test_load_base_is_frozen_fp32_on_cpu(tmp_path):
    base = load_base(save_tiny_qwen3(tmp_path / "tiny", rows=520), "cpu")
    assert base.dtype == torch.float32 and base.device == torch.device("cpu")
    assert not base.model.training
    assert not any(p.requires_grad for p in base.model.parameters())
    assert "float32" in base.describe()
    with pytest.raises(NotFound, match="no config.json"):
        load_base(tmp_path, "cpu")


def test_a_decoder_without_lm_head_is_refused():
    with pytest.raises(Incompatible, match="no lm_head"):
        prepare_for_token_space(build_tiny_qwen3().model, TEXT_VOCAB, VOCAB_TOTAL)

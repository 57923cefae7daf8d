"""Writer -> scanner -> evaluator gives the losses of the in-memory model the rows came from."""

from __future__ import annotations

import os

import torch

from evalboard.integrations.publisher import register_and_enqueue
from evaluator.loss import evaluate_loss
from evaluator.service import EvalOptions, Evaluator
from registry.evalset import EvalSet
from registry.writers import save_rows_of_model
from tests.integrations.conftest import BASE_ID, EVALSET, rows_model


def test_saved_rows_evaluate_to_the_in_memory_losses(assets, stack):
    model = rows_model(assets).eval()
    text, total = assets.space.text_vocab_size, assets.space.vocab_size_total
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # rows far from their initial mean, different in the embedding and lm_head
        model.get_input_embeddings().weight[text:total] = torch.randn(total - text, 64, generator=g) * 0.3
        model.get_output_embeddings().weight[text:total] = torch.randn(total - text, 64, generator=g) * 0.3
    direct = evaluate_loss(model, EvalSet.load(assets.evalset_dir).examples).losses()

    run = stack.root / "outputs" / "round_trip"
    path = save_rows_of_model(model, run / "checkpoint_42", assets.space, base_model=BASE_ID, step=42)
    es = stack.reg.get_evalset(name=EVALSET)
    queued = register_and_enqueue(stack.reg, path, es, models=stack.settings.models)
    assert queued.action == "enqueued"
    ck = stack.reg.get_checkpoint(path=os.path.realpath(path))
    outcome = Evaluator(stack.reg, stack.settings).evaluate(ck, es, EvalOptions(device="cpu", log_to_mlflow=False))
    via_files = outcome.result.losses
    assert set(via_files) == set(direct) >= {"all", "a2t", "i2t"}
    for task, loss in direct.items():
        assert abs(via_files[task] - loss) <= 1e-5, (task, via_files[task], loss)
    # and the rows are not their initial values: the comparison would catch rows not copied
    assert (
        abs(direct["all"] - evaluate_loss(rows_model(assets).eval(), EvalSet.load(assets.evalset_dir).examples).loss())
        > 1e-3
    )

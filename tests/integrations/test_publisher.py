"""The framework-free part of the callbacks: a connector saved in the Track A format is registered
and, on an eval set its track cannot use, refused with the audit's reason (nothing queued); a
rows checkpoint saved twice for one step replaces the first and queues the new content."""

from __future__ import annotations

import torch

from evalboard.integrations.publisher import ConnectorFormat, Publisher, RowsFormat
from registry.connector import ConnectorCheckpoint
from tests.integrations.conftest import BASE_ID, EVALSET, rows_model


class _WithConnector(torch.nn.Module):
    def __init__(self):
        super().__init__()
        from evaluator.connectors import PerceiverConnector

        self.connector = PerceiverConnector(32, 64, 4, 4)


def test_a_connector_is_saved_registered_and_refused_on_a_token_only_evalset(stack):
    model = _WithConnector()
    fmt = ConnectorFormat(
        lambda m: m.connector,
        base_llm=BASE_ID,
        vision_tower="demo/vit-tiny",
        config={"connector_builder": "evaluator.connectors:perceiver_resampler", "num_heads": 4},
    )
    pub = Publisher(stack.root / "outputs" / "align", EVALSET, fmt, settings=stack.settings)
    try:
        event = pub.save(model, 10)
    finally:
        pub.close()
    assert event.action == "refused" and event.detail and event.job_id is None
    ck = stack.reg.get_checkpoint(id=event.checkpoint_id)
    assert ck.is_valid and ck.track == "A" and ck.step == 10
    loaded = ConnectorCheckpoint.load(event.path)
    assert all(torch.equal(loaded.state[k], v) for k, v in model.connector.state_dict().items())
    assert stack.reg.list_jobs() == []


def test_saving_a_step_again_replaces_it_and_queues_the_new_content(assets, stack):
    model = rows_model(assets)
    pub = Publisher(
        stack.root / "outputs" / "again", EVALSET, RowsFormat(assets.space, base_model=BASE_ID), settings=stack.settings
    )
    try:
        first = pub.save(model, 3)
        assert pub.save(model, 3).action == "already-queued"  # same bytes: the same job
        with torch.no_grad():
            model.get_input_embeddings().weight[assets.space.text_vocab_size :] += 1.0
        second = pub.save(model, 3)
    finally:
        pub.close()
    assert (first.action, second.action) == ("enqueued", "enqueued") and first.job_id != second.job_id
    assert [e.step for e in pub.events] == [3]
    (ck,) = stack.reg.list_checkpoints()
    assert ck.id == second.checkpoint_id

"""The evaluator: load a base model once, swap trained rows in, compute exact eval losses.

    base_model   resolve a base-model id to a local directory; load it frozen (ResidentBase)
    rows         prepare the embeddings for a token space; patch / swap rows (ResidentModel)
    batching     eval examples -> length-bucketed, right-padded batches under a token budget
    loss         exact per-example / per-task / overall loss without full logits (LossReport)

Names are imported lazily so `import evaluator` does not pull in torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ResidentBase": "base_model",
    "resolve_base_model": "base_model",
    "load_base": "base_model",
    "TokenSpaceSizes": "rows",
    "RowTensors": "rows",
    "PrepareReport": "rows",
    "prepare_for_token_space": "rows",
    "patch_rows": "rows",
    "ResidentModel": "rows",
    "Example": "batching",
    "LossReport": "loss",
    "evaluate_loss": "loss",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"evaluator.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'evaluator' has no attribute {name!r}")

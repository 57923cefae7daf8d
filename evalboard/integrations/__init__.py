"""Evaluate from the training loop: callbacks that save each checkpoint in a seed format,
register it and queue its evaluation, so workers evaluate while training goes on.

    publisher.py   framework-free: write (registry/writers.py), register, enqueue, link the MLflow run
    hf.py          `EvalboardCallback` for the Hugging Face `transformers.Trainer`
    lightning.py   `EvalboardLightningCallback` (needs the optional `lightning` extra)

Each module is imported on its own (``from evalboard.integrations.hf import EvalboardCallback``),
so using one never imports the other framework.
"""

"""evalboard: catalogue, audit, evaluate and compare trainable-rows checkpoints."""

__version__ = "0.1.0"

"""The Track A workspace the evaluator's tests share (built once per session by the `track_a_ws`
fixture in conftest.py): a tiny Qwen3, a tiny SigLIP tower, a connector run of three checkpoints
from the reference Perceiver builder, a LLaVA-layout run, an image eval set."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from evalboard.fixtures import (
    TinyBaseSpec,
    build_tiny_base,
    build_tiny_vision_tower,
    make_image_evalset,
    write_connector_checkpoint,
)

BASE_ID = "demo/Qwen3-tiny-Base"
TOWER_ID = "test/siglip-tiny"
RUN = "stage1_align"
LLAVA_RUN = "llava_pretrain"
STEPS = (100, 200, 300)
EVALSET = "images-i2t"


def write_perceiver(path: Path, step: int, **kw) -> Path:
    """A reference-Perceiver connector checkpoint that fits the workspace's tower (32) and LLM (64)."""
    return write_connector_checkpoint(
        path,
        step=step,
        vision_dim=32,
        llm_dim=64,
        n_queries=6,
        num_heads=4,
        base_llm=BASE_ID,
        vision_tower=TOWER_ID,
        **kw,
    )


def build_track_a_workspace(root: Path) -> Path:
    """Built once: base, tower, a connector run (3 checkpoints), a LLaVA-layout run, an image eval set."""
    build_tiny_base(root / "models" / "tiny-qwen3", TinyBaseSpec(output_scale=4.0))
    tower = build_tiny_vision_tower(root / "models" / "siglip-tiny")
    for i, step in enumerate(STEPS):
        write_perceiver(root / "outputs" / RUN / f"checkpoint_{step}.pt", step, seed=10 + i)
    write_llava(root / "outputs" / LLAVA_RUN / "checkpoint-500")
    make_image_evalset(root / "evalsets" / EVALSET, EVALSET, tower=TOWER_ID, tower_dir=tower, n=10)
    return root


def write_llava(folder: Path, *, hidden: int = 64, mm_hidden: int = 32) -> Path:
    from evaluator.connectors import ProjectorConnector

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(3)
    proj = ProjectorConnector([mm_hidden, hidden, hidden])
    torch.save({f"model.{k}": v for k, v in proj.state_dict().items()}, folder / "mm_projector.bin")
    (folder / "config.json").write_text(
        json.dumps(
            {
                "_name_or_path": BASE_ID,
                "mm_vision_tower": TOWER_ID,
                "mm_projector_type": "mlp2x_gelu",
                "mm_hidden_size": mm_hidden,
                "hidden_size": hidden,
                "mm_vision_select_layer": -1,
                "mm_vision_select_feature": "patch",
            }
        )
    )
    return folder


def models_mapping(root: Path) -> str:
    """EVALBOARD_MODELS for a copy of the workspace at ``root``."""
    return f"{BASE_ID}={root / 'models' / 'tiny-qwen3'},{TOWER_ID}={root / 'models' / 'siglip-tiny'}"

"""Track A `checkpoint_<step>.pt`: connector weights, step, optimizer state, base-model pointers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evalboard.fixtures import write_connector_checkpoint
from registry.connector import ConnectorCheckpoint
from registry.errors import InvalidInput


def _state() -> dict[str, torch.Tensor]:
    return {
        "resampler.queries": torch.randn(8, 32),
        "resampler.attn.out_proj.weight": torch.randn(32, 32),
        "projector.0.weight": torch.randn(64, 32),
        "projector.0.bias": torch.zeros(64),
    }


def test_the_documented_schema(tmp_path: Path) -> None:
    path = write_connector_checkpoint(
        tmp_path / "checkpoint_3675.pt", step=3675, base_llm="Qwen/Qwen3-8B-Base", vision_tower="google/siglip-so400m"
    )
    ck = ConnectorCheckpoint.load(path)
    assert (ck.step, ck.base_llm, ck.vision_tower, ck.has_optimizer) == (
        3675,
        "Qwen/Qwen3-8B-Base",
        "google/siglip-so400m",
        True,
    )
    assert set(ck.modules) == {"resampler", "projector"}
    assert ck.modules["projector"]["projector.0.weight"] == (64, 32)
    # the reference PerceiverConnector(32 -> 64, 8 queries): queries, attention in/out, projector 0 and 2
    assert ck.n_params == 8 * 32 + (96 * 32 + 96) + (32 * 32 + 32) + (64 * 32 + 64) + (64 * 64 + 64)
    assert ck.meta == {
        "n_queries": 8,
        "vision_dim": 32,
        "llm_dim": 64,
        "num_heads": 4,
        "connector_builder": "evaluator.connectors:perceiver_resampler",
    }
    assert (ck.input_width, ck.output_width, ck.builder) == (32, 64, "evaluator.connectors:perceiver_resampler")
    summary = ck.summary()
    assert (summary["track"], summary["step"], summary["base_model"]) == ("A", 3675, "Qwen/Qwen3-8B-Base")
    assert summary["files"][0]["name"] == "checkpoint_3675.pt"


def test_top_level_module_dicts_with_optimizer_state_and_nested_pointers(tmp_path: Path) -> None:
    state = _state()
    obj = {
        "resampler": {k.removeprefix("resampler."): v for k, v in state.items() if k.startswith("resampler.")},
        "projector": {k.removeprefix("projector."): v for k, v in state.items() if k.startswith("projector.")},
        "global_step": 2450,
        "optimizer_state_dict": {
            "state": {0: {"exp_avg": torch.zeros(8, 32), "step": torch.tensor(2450.0)}},
            "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "params": [0, 1, 2, 3]}],
        },
        "scheduler": {"last_epoch": 2450},
        "config": {
            "base_model": {"name": "Qwen/Qwen3-8B-Base", "revision": "abc123"},
            "vision_encoder": "google/siglip-so400m",
            "lr": 1e-4,
        },
    }
    torch.save(obj, tmp_path / "checkpoint_2450.pt")
    ck = ConnectorCheckpoint.load(tmp_path / "checkpoint_2450.pt")
    assert ck.step == 2450 and ck.has_optimizer
    assert ck.base_llm == "Qwen/Qwen3-8B-Base@abc123"
    assert ck.vision_tower == "google/siglip-so400m"
    assert set(ck.modules["resampler"]) == {"resampler.queries", "resampler.attn.out_proj.weight"}
    assert ck.n_params == sum(t.numel() for t in state.values())


@pytest.mark.parametrize("state_key", ["connector_state_dict", "model_state_dict", "state_dict"])
def test_state_dict_key_variants(tmp_path: Path, state_key: str) -> None:
    torch.save({state_key: _state(), "step": 5, "llm": "tiny", "vision_model": "vit"}, tmp_path / "checkpoint_5.pt")
    ck = ConnectorCheckpoint.load(tmp_path / "checkpoint_5.pt")
    assert (ck.base_llm, ck.vision_tower, ck.has_optimizer) == ("tiny", "vit", False)


def test_step_comes_from_the_name_when_the_file_has_none(tmp_path: Path) -> None:
    torch.save({"connector": _state(), "base_llm": "tiny", "vision_tower": "vit"}, tmp_path / "checkpoint_1225.pt")
    assert ConnectorCheckpoint.load(tmp_path / "checkpoint_1225.pt").step == 1225


@pytest.mark.parametrize(
    "obj, message",
    [
        ({"connector": {}, "base_llm": "t", "vision_tower": "v"}, "connector state dict is empty"),
        ({"step": 1, "base_llm": "t", "vision_tower": "v"}, "missing field 'connector'"),
        ({"connector": _state(), "vision_tower": "v"}, "missing field 'base_llm'"),
        ({"connector": _state(), "base_llm": "t"}, "missing field 'vision_tower'"),
        ({"connector": _state(), "base_llm": "t", "vision_tower": "v", "step": 6}, "step 6 inside the file disagrees"),
        (
            {"connector": _state(), "base_llm": "t", "vision_tower": "v", "lora": {}},
            "unexpected top-level entry 'lora'",
        ),
        (
            {
                "connector": {**_state(), "projector.0.weight": torch.full((2, 2), float("nan"))},
                "base_llm": "t",
                "vision_tower": "v",
            },
            "connector weight 'projector.0.weight' contains NaN/Inf",
        ),
        (
            {"connector": {"resampler.q": torch.ones(1), "projector.w": [1, 2]}, "base_llm": "t", "vision_tower": "v"},
            "connector entry 'projector.w' is a list, expected a tensor",
        ),
    ],
    ids=["empty", "no-connector", "no-llm", "no-vision", "step-vs-name", "unexpected", "nan", "not-a-tensor"],
)
def test_invalid_connector_checkpoints(tmp_path: Path, obj: dict, message: str) -> None:
    path = tmp_path / "checkpoint_7.pt"
    torch.save(obj, path)
    with pytest.raises(InvalidInput) as e:
        ConnectorCheckpoint.load(path)
    assert message in str(e.value)
    assert str(e.value).startswith(f"{path}: ")

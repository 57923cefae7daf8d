"""Training-loop integrations: a tiny Qwen3 base and an eval set built once per session; each test
gets its own registry and MLflow store (sqlite) and a model whose new rows train."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from evalboard.demo_train import SyntheticTask
from evalboard.fixtures import build_tiny_base, make_evalset, make_token_space
from registry.settings import Settings
from registry.store import Registry
from registry.token_space import TokenSpace

BASE_ID = "demo/Qwen3-tiny-Base"
EVALSET = "integration-a2t-i2t"


@dataclass(frozen=True)
class Assets:
    base_dir: Path
    space: TokenSpace
    evalset_dir: Path
    mlflow_template: Path


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Assets:
    from mlflow.tracking import MlflowClient

    root = Path(os.path.realpath(tmp_path_factory.mktemp("integrations")))
    space = make_token_space(256)
    base = build_tiny_base(root / "models" / "tiny-qwen3")
    es = make_evalset(root / "evalsets" / EVALSET, EVALSET, space, n_per_task=4)
    template = root / "mlflow-template.db"
    MlflowClient(f"sqlite:///{template}").search_experiments()  # runs MLflow's migrations once
    return Assets(base, space, Path(es.path), template)


@dataclass
class Stack:
    reg: Registry
    settings: Settings
    env: dict[str, str]
    root: Path


@pytest.fixture
def stack(assets, tmp_path, monkeypatch) -> Stack:
    from registry.scanner import register_evalset

    root = Path(os.path.realpath(tmp_path))
    home = root / "home"
    home.mkdir()
    shutil.copy(assets.mlflow_template, home / "mlflow.db")
    env = {
        "EVALBOARD_HOME": str(home),
        "EVALBOARD_DB": f"sqlite:///{home / 'registry.db'}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "EVALBOARD_MODELS": f"{BASE_ID}={assets.base_dir}",
    }
    for k, v in env.items():  # the training side (the Trainer's MLflowCallback) reads the environment
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "training")
    import mlflow

    # MLflow keeps the tracking URI per process (the Trainer's MLflowCallback keeps one already
    # set, e.g. by an earlier test's worker): this test's store, as a training script would set it.
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    settings = Settings.from_env(env)
    reg = Registry(settings.db_url)
    register_evalset(reg, assets.evalset_dir)
    yield Stack(reg, settings, env, root)
    reg.close()


def rows_model(assets: Assets):
    """The frozen base, resized to the token space; only the new rows of the embedding and lm_head
    get gradients (as in `evalboard.demo_train.train_rows_run`)."""
    from transformers import AutoModelForCausalLM

    from evaluator.rows import prepare_for_token_space

    torch.manual_seed(0)
    space = assets.space
    model = AutoModelForCausalLM.from_pretrained(assets.base_dir, dtype=torch.float32)
    model.requires_grad_(False)
    prepare_for_token_space(model, space.text_vocab_size, space.vocab_size_total, space.resolved_pad_id())
    text = space.text_vocab_size
    for p in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        p.requires_grad_(True)
        p.register_hook(lambda g: torch.cat([torch.zeros_like(g[:text]), g[text:]]))
    return model


def train_examples(assets: Assets, n_per_task: int = 16, length: int = 32) -> list[dict[str, torch.Tensor]]:
    """Fixed-length (padded) examples of the synthetic task, as the Trainer's dataset."""
    from registry.evalset import IGNORE_INDEX

    task = SyntheticTask(assets.space)
    pad = assets.space.resolved_pad_id() or 0
    out = []
    for ex in task.examples(n_per_task, seed=1, prefix=(6, 12), tasks=task.TRAIN_TASKS, score_modality=True):
        ids, labels = ex.input_ids[:length], ex.labels[:length]
        fill = length - len(ids)
        out.append(
            {
                "input_ids": torch.tensor(ids + [pad] * fill),
                "attention_mask": torch.tensor([1] * len(ids) + [0] * fill),
                "labels": torch.tensor(labels + [IGNORE_INDEX] * fill),
            }
        )
    return out


def training_args(out: Path | str, **kw):
    """The TrainingArguments these tests train with (CPU, tiny, deterministic); ``kw`` overrides."""
    from transformers import TrainingArguments

    base = dict(
        output_dir=str(out),
        max_steps=6,
        save_steps=2,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        weight_decay=0.0,
        logging_steps=1,
        use_cpu=True,
        disable_tqdm=True,
        save_only_model=True,
        report_to=["mlflow"],
        dataloader_num_workers=0,
        seed=0,
    )
    base.update(kw)
    return TrainingArguments(**base)

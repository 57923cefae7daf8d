"""LLaVA's ``image_aspect_ratio: "pad"`` (issue 21, item 5): a non-square image is pasted, centred,
on a square canvas of the image processor's mean colour before the processor runs (LLaVA-1.5's
``expand2square`` + ``process_images``). Checked against a reference written here, independently
of evaluator/vision.py, with the same tiny SigLIP tower and its own image processor; also the
evaluation of LLaVA's ``mm_projector/checkpoint-<step>.bin`` layout, whose config lives elsewhere."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from registry.evalset import Example
from tests.evaluator._track_a import BASE_ID, TOWER_ID, models_mapping

SIZES = ((45, 24), (20, 41), (32, 32), (50, 17))  # wide, tall (odd differences: floor offsets), square
EVALSET = "llava-pad-i2t"


def _png(size: tuple[int, int], seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _write_llava(out: Path, *, aspect: str | None, step: int = 400) -> Path:
    """A LLaVA output folder: its final save (mm_projector.bin, config.json, trainer_state.json)."""
    torch.manual_seed(5)
    proj = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64))
    out.mkdir(parents=True)
    torch.save({f"model.mm_projector.{k}": v for k, v in proj.state_dict().items()}, out / "mm_projector.bin")
    cfg = {
        "_name_or_path": BASE_ID,
        "mm_vision_tower": TOWER_ID,
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": 32,
        "hidden_size": 64,
        "mm_vision_select_layer": -1,
        "mm_vision_select_feature": "patch",
    }
    if aspect is not None:
        cfg["image_aspect_ratio"] = aspect
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return out


@dataclass
class PadEnv:
    root: Path
    models: Path
    reg: object
    settings: object


@pytest.fixture
def pad_env(track_a_ws, mlflow_template, tmp_path, monkeypatch) -> PadEnv:
    from evalboard.fixtures import image_examples
    from registry.evalset import write_evalset
    from registry.scanner import scan
    from registry.settings import Settings
    from registry.store import Registry
    from registry.vision import read_tower_preprocessing

    root = tmp_path / "ws"
    (root / "models").mkdir(parents=True)
    for name in ("tiny-qwen3", "siglip-tiny"):  # read only; copied so that nothing here touches the session's
        shutil.copytree(track_a_ws / "models" / name, root / "models" / name)
    tower_dir = root / "models" / "siglip-tiny"
    base = image_examples(len(SIZES), seed=3)
    examples = [
        Example(e.example_id, e.task, e.input_ids, e.labels, _png(size, i))
        for i, (e, size) in enumerate(zip(base, SIZES))
    ]
    write_evalset(
        root / "evalsets" / EVALSET,
        EVALSET,
        examples,
        None,
        vision={"tower": TOWER_ID, "preprocessing": read_tower_preprocessing(tower_dir) or {}},
    )
    _write_llava(root / "outputs" / "llava-pad", aspect="pad")
    _write_llava(root / "outputs" / "llava-square", aspect="square")
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(mlflow_template, home / "mlflow.db")
    for k, v in {
        "EVALBOARD_HOME": str(home),
        "EVALBOARD_DB": f"sqlite:///{home / 'registry.db'}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
        "EVALBOARD_MODELS": models_mapping(root),
    }.items():
        monkeypatch.setenv(k, v)
    settings = Settings.from_env()
    reg = Registry(settings=settings)
    summary = scan(reg, [root / "outputs", root / "evalsets"])
    assert summary.invalid == 0, summary.invalid_items
    yield PadEnv(root, root / "models", reg, settings)
    reg.close()


def reference_expand2square(image, background):
    """LLaVA-1.5's llava/mm_utils.py expand2square, written out again for the reference."""
    from PIL import Image

    w, h = image.size
    if w == h:
        return image
    if w > h:
        canvas = Image.new(image.mode, (w, w), background)
        canvas.paste(image, (0, (w - h) // 2))
    else:
        canvas = Image.new(image.mode, (h, h), background)
        canvas.paste(image, ((h - w) // 2, 0))
    return canvas


def _reference(env: PadEnv, out: Path, *, pad: bool) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Per example: the tower features and the loss, one example at a time, without the evaluator."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForCausalLM, SiglipVisionModel

    from registry.evalset import EvalSet

    model = AutoModelForCausalLM.from_pretrained(env.models / "tiny-qwen3", dtype=torch.float32).eval()
    tower = SiglipVisionModel.from_pretrained(env.models / "siglip-tiny", dtype=torch.float32).eval()
    processor = AutoImageProcessor.from_pretrained(env.models / "siglip-tiny")
    state = {k.removeprefix("model.mm_projector."): v for k, v in torch.load(out / "mm_projector.bin").items()}
    projector = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64))
    projector.load_state_dict(state)
    background = tuple(int(x * 255) for x in processor.image_mean)
    feats, losses = {}, {}
    with torch.no_grad():
        for ex in EvalSet.load(env.root / "evalsets" / EVALSET).examples:
            image = Image.open(io.BytesIO(ex.image)).convert("RGB")
            if pad:
                image = reference_expand2square(image, background)
            pixels = processor.preprocess(image, return_tensors="pt")["pixel_values"]
            f = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-1][0]
            feats[ex.example_id] = f
            at = ex.input_ids.index(-200)
            emb = model.get_input_embeddings()
            image_emb = projector(f)
            pieces = [emb(torch.tensor(ex.input_ids[:at])), image_emb, emb(torch.tensor(ex.input_ids[at + 1 :]))]
            labels = ex.labels[:at] + [-100] * image_emb.shape[0] + ex.labels[at + 1 :]
            losses[ex.example_id] = float(
                model(inputs_embeds=torch.cat(pieces)[None], labels=torch.tensor([labels])).loss
            )
    return feats, losses


def _evaluate(env: PadEnv, path: Path, evaluator=None):
    from evaluator.service import EvalOptions, Evaluator

    ev = evaluator or Evaluator(env.reg, env.settings)
    ck = env.reg.get_checkpoint(path=str(path))
    es = env.reg.get_evalset(name=EVALSET)
    return ev, ev.evaluate(ck, es, EvalOptions(device="cpu", write_eval_json=False))


@pytest.mark.slow
def test_pad_features_and_losses_match_llava_expand2square(pad_env):
    from mlflow.tracking import MlflowClient

    from evaluator.vision import load_tower
    from registry.evalset import EvalSet

    out = pad_env.root / "outputs" / "llava-pad"
    ck = pad_env.reg.get_checkpoint(path=str(out))
    assert (ck.status, ck.step, ck.meta["image_aspect_ratio"]) == ("valid", 400, "pad")
    ref_feats, ref_losses = _reference(pad_env, out, pad=True)
    plain_feats, _ = _reference(pad_env, out, pad=False)

    # the tower's features, as the evaluator computes them
    tower = load_tower(pad_env.models / "siglip-tiny", torch.device("cpu"), torch.float32)
    examples = EvalSet.load(pad_env.root / "evalsets" / EVALSET).examples
    padded = tower.features([e.image for e in examples], tower.resolve(-1, None, "pad"))
    for e, f in zip(examples, padded):
        assert torch.allclose(f, ref_feats[e.example_id], atol=1e-4), e.example_id
        if e.image_size[0] != e.image_size[1]:  # padding changed what the tower saw
            assert (f - plain_feats[e.example_id]).abs().max() > 1e-3, e.example_id
    default = tower.features([e.image for e in examples], tower.resolve(-1, None))
    for e, f in zip(examples, default):
        assert torch.allclose(f, plain_feats[e.example_id], atol=1e-4), e.example_id

    # padded and unpadded features never share a cache key
    settings_pad, settings_default = tower.resolve(-1, None, "pad"), tower.resolve(-1, None)
    e0 = examples[0]
    assert tower.cache_key(e0.image_sha256, e0.image_size, settings_pad) != tower.cache_key(
        e0.image_sha256, e0.image_size, settings_default
    )

    # the evaluation of the checkpoint (its losses), against the reference
    ev, outcome = _evaluate(pad_env, out)
    got = {e.example_id: e.loss for e in outcome.report.examples}
    assert set(got) == set(ref_losses)
    for ex_id, loss in ref_losses.items():
        assert got[ex_id] == pytest.approx(loss, abs=1e-4), ex_id
    run = MlflowClient(pad_env.settings.mlflow_uri).get_run(outcome.mlflow["run_id"])
    assert run.data.params["image_aspect_ratio"] == "pad"

    # the same weights with image_aspect_ratio "square" (LLaVA's default): unpadded numbers, not the
    # padded features from the cache of the sweep
    _, square = _evaluate(pad_env, pad_env.root / "outputs" / "llava-square", evaluator=ev)
    assert {e.example_id: e.loss for e in square.report.examples} != got
    _, plain_losses = _reference(pad_env, out, pad=False)
    for e in square.report.examples:
        assert e.loss == pytest.approx(plain_losses[e.example_id], abs=1e-4)


@pytest.mark.slow
def test_the_mm_projector_file_layout_is_verified_and_evaluated(pad_env):
    """``<out>/mm_projector/checkpoint-<step>.bin`` with its config in ``<out>/checkpoint-<step>/``:
    the evaluator re-hashes both files, and refuses the checkpoint when its config changed."""
    from evaluator.tracks.connector import ConnectorEval
    from registry.errors import IntegrityError
    from registry.scanner import scan

    out = pad_env.root / "outputs" / "llava-old"
    src = pad_env.root / "outputs" / "llava-pad"
    (out / "mm_projector").mkdir(parents=True)
    shutil.copy(src / "mm_projector.bin", out / "mm_projector" / "checkpoint-400.bin")
    (out / "checkpoint-400").mkdir()
    shutil.copy(src / "config.json", out / "checkpoint-400" / "config.json")
    assert scan(pad_env.reg, [out]).invalid == 0
    path = out / "mm_projector" / "checkpoint-400.bin"
    ck = pad_env.reg.get_checkpoint(path=str(path))
    assert (ck.status, ck.step, pad_env.reg.get_run(id=ck.run_id).name) == ("valid", 400, "llava-old")
    _, outcome = _evaluate(pad_env, path)
    _, ref_losses = _reference(pad_env, src, pad=True)
    for e in outcome.report.examples:
        assert e.loss == pytest.approx(ref_losses[e.example_id], abs=1e-4)

    cfg = out / "checkpoint-400" / "config.json"
    cfg.write_text(cfg.read_text().replace('"pad"', '"square"'))
    with pytest.raises(IntegrityError, match="changed on disk since registration") as e:
        ConnectorEval().load(None, ck)  # type: ignore[arg-type]
    assert str(cfg) in str(e.value)

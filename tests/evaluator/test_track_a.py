"""Track A end to end: a tiny SigLIP tower, a tiny Qwen3, connector checkpoints from the reference
builders, an image eval set; losses against a plain reference written here (one example at a time,
``inputs_embeds`` built by hand, the model's own ``labels=`` loss)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from evalboard.fixtures import (
    image_examples,
    write_connector_checkpoint,
)
from tests._infra.workspace import evalboard_cli
from tests.evaluator._track_a import BASE_ID, EVALSET, LLAVA_RUN, RUN, TOWER_ID, models_mapping


@dataclass
class Env:
    root: Path
    reg: object
    settings: object

    def ck(self, step: int, run: str = RUN):
        name = f"checkpoint_{step}.pt" if run == RUN else f"checkpoint-{step}"
        return self.reg.get_checkpoint(path=str(self.root / "outputs" / run / name))

    def env(self) -> dict[str, str]:
        import os

        return {
            **os.environ,
            "EVALBOARD_HOME": str(self.settings.home),
            "EVALBOARD_DB": self.settings.db_url,
            "MLFLOW_TRACKING_URI": self.settings.mlflow_uri,
            "EVALBOARD_MODELS": models_mapping(self.root),
        }

    def counts(self) -> tuple[int, int, int]:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.settings.mlflow_uri)
        exps = [e.experiment_id for e in client.search_experiments()]
        runs = len(client.search_runs(exps)) if exps else 0
        return len(self.reg.list_eval_results()), len(self.reg.list_checkpoints()), runs


@pytest.fixture
def env(track_a_ws, mlflow_template, tmp_path, monkeypatch) -> Env:
    from registry.scanner import scan
    from registry.settings import Settings
    from registry.store import Registry

    root = tmp_path / "ws"
    shutil.copytree(track_a_ws, root)
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
    yield Env(root, reg, settings)
    reg.close()


def _reference(
    root: Path, ck_path: Path, *, feature_layer: int = -2, drop_cls: bool = False, llava: bool = False
) -> dict[str, tuple[float, int]]:
    """Per example (loss, scored tokens), one example at a time, written without the evaluator."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForCausalLM, SiglipVisionModel

    from evaluator.connectors import build_connector
    from registry.evalset import EvalSet

    model = AutoModelForCausalLM.from_pretrained(root / "models" / "tiny-qwen3", dtype=torch.float32).eval()
    tower = SiglipVisionModel.from_pretrained(root / "models" / "siglip-tiny", dtype=torch.float32).eval()
    processor = AutoImageProcessor.from_pretrained(root / "models" / "siglip-tiny")
    if llava:
        state = {k.removeprefix("model."): v for k, v in torch.load(ck_path / "mm_projector.bin").items()}
        connector = build_connector(
            "evaluator.connectors:llava_projector", state, {"mm_projector_type": "mlp2x_gelu"}, ck_path
        )
    else:
        obj = torch.load(ck_path, weights_only=True)
        connector = build_connector(obj["config"]["connector_builder"], obj["connector"], obj["config"], ck_path)
    es = EvalSet.load(root / "evalsets" / EVALSET)
    out = {}
    with torch.no_grad():
        for ex in es.examples:
            pixels = processor(images=[Image.open(io.BytesIO(ex.image)).convert("RGB")], return_tensors="pt")[
                "pixel_values"
            ]
            feats = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[feature_layer]
            feats = feats[:, 1:] if drop_cls else feats
            image = connector(feats)[0]
            at = ex.input_ids.index(-200)
            emb = model.get_input_embeddings()
            pieces = [emb(torch.tensor(ex.input_ids[:at])), image, emb(torch.tensor(ex.input_ids[at + 1 :]))]
            labels = ex.labels[:at] + [-100] * image.shape[0] + ex.labels[at + 1 :]
            loss = model(inputs_embeds=torch.cat(pieces)[None], labels=torch.tensor([labels])).loss
            n = sum(1 for x in labels[1:] if x != -100)
            out[ex.example_id] = (float(loss), n)
    return out


def _evaluate(env: Env, ck, **kw):
    from evaluator.service import EvalOptions, Evaluator

    ev = kw.pop("evaluator", None) or Evaluator(env.reg, env.settings)
    es = env.reg.get_evalset(name=EVALSET)
    return ev, ev.evaluate(ck, es, EvalOptions(device="cpu", write_eval_json=False, **kw))


@pytest.mark.slow
def test_connector_losses_match_a_plain_reference(env):
    ck = env.ck(200)
    ev, outcome = _evaluate(env, ck)
    ref = _reference(env.root, Path(ck.path))
    got = {e.example_id: e for e in outcome.report.examples}
    assert set(got) == set(ref)
    for ex_id, (loss, n) in ref.items():
        assert got[ex_id].tokens == n
        assert got[ex_id].loss == pytest.approx(loss, abs=1e-4)
    i2t = sum(loss * n for loss, n in ref.values()) / sum(n for _, n in ref.values())
    assert outcome.result.losses["i2t"] == pytest.approx(i2t, abs=1e-4)
    assert outcome.result.losses["all"] == pytest.approx(i2t, abs=1e-4)
    assert outcome.mlflow["run_id"]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env.settings.mlflow_uri)
    run = client.get_run(outcome.mlflow["run_id"])
    assert run.data.metrics["loss_i2t"] == pytest.approx(i2t, abs=1e-4)
    assert run.data.params["vision_feature_layer"] == "-2" and run.data.params["vision_drop_cls"] == "False"
    model = client.get_logged_model(outcome.mlflow["model_id"])
    assert model.model_type == "vision-connector" and model.params["vision_tower"] == TOWER_ID
    stats = env.reg.get_row_stats(checkpoint_id=ck.id)
    assert set(stats.stats["modules"]) == {"resampler", "projector"}
    assert stats.stats["drift"]["previous_step"] == 100


@pytest.mark.slow
def test_llava_projector_folder_is_evaluated_like_the_reference(env):
    ck = env.ck(500, LLAVA_RUN)
    assert ck.status == "valid" and ck.meta["layout"] == "llava" and ck.meta["input_width"] == 32
    _, outcome = _evaluate(env, ck)
    ref = _reference(env.root, Path(ck.path), feature_layer=-1, llava=True)
    for e in outcome.report.examples:
        assert e.loss == pytest.approx(ref[e.example_id][0], abs=1e-4)


@pytest.mark.slow
def test_a_sweep_runs_the_tower_once_per_image_and_matches_an_uncached_run(env):
    from evaluator.service import Evaluator
    from registry.settings import Settings

    ev, first = _evaluate(env, env.ck(100))
    tower = next(iter(ev.towers.values()))
    n_images = tower.images_forwarded
    assert n_images == 10
    ev, second = _evaluate(env, env.ck(200), evaluator=ev)
    assert tower.images_forwarded == n_images  # the second checkpoint of the sweep never calls the tower
    assert ev.loads == 1  # one base load for the sweep

    # a new process with the same disk cache: no tower forward either
    cached, again = _evaluate(env, env.ck(200), evaluator=Evaluator(env.reg, env.settings), force=True)
    assert next(iter(cached.towers.values())).images_forwarded == 0
    uncached_settings = Settings(
        home=env.settings.home / "nocache",
        db_url=env.settings.db_url,
        mlflow_uri=env.settings.mlflow_uri,
        models=env.settings.models,
        vision_cache_bytes=0,
    )
    plain, fresh = _evaluate(env, env.ck(200), evaluator=Evaluator(env.reg, uncached_settings), force=True)
    assert next(iter(plain.towers.values())).images_forwarded == 10
    assert [e.loss for e in fresh.report.examples] == [e.loss for e in second.report.examples]
    assert [e.loss for e in again.report.examples] == [e.loss for e in second.report.examples]
    assert second.result.losses != first.result.losses  # different connectors, different numbers


@pytest.mark.slow
def test_changed_preprocessing_misses_the_cache(env):
    from evaluator.service import Evaluator

    ev, _ = _evaluate(env, env.ck(100))
    cfg_path = env.root / "models" / "siglip-tiny" / "preprocessor_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["image_mean"] = [0.4, 0.4, 0.4]
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(Exception, match="other preprocessing"):
        _evaluate(env, env.ck(100), evaluator=Evaluator(env.reg, env.settings), force=True)
    ev2, out = _evaluate(env, env.ck(100), evaluator=Evaluator(env.reg, env.settings), force=True, allow_mismatch=True)
    assert next(iter(ev2.towers.values())).images_forwarded == 10  # a miss, not stale features


def test_cache_key_covers_size_preprocessing_layer_and_tower(env):
    from evaluator.vision import load_tower

    tower = load_tower(env.root / "models" / "siglip-tiny", torch.device("cpu"), torch.float32)
    s = tower.resolve(None, None)
    assert (s.feature_layer, s.drop_cls) == (-2, False)  # SigLIP has no CLS token
    key = tower.cache_key("abc", (32, 32), s)
    assert key != tower.cache_key("abc", (64, 64), s)
    assert key != tower.cache_key("abc", (32, 32), tower.resolve(-1, None))
    assert key != tower.cache_key("abc", (32, 32), tower.resolve(None, True))
    tower.preprocessing = {**tower.preprocessing, "image_std": [0.1, 0.1, 0.1]}
    assert key != tower.cache_key("abc", (32, 32), s)


def test_feature_cache_is_bounded(tmp_path):
    from evaluator.vision import FeatureCache

    cache = FeatureCache(tmp_path / "c", max_bytes=3000)
    for i in range(10):
        cache.put(f"{i:02d}" + "a" * 62, torch.full((4, 32), float(i)))
        cache.evict()
    assert cache.size_bytes() <= 3000
    assert cache.get("09" + "a" * 62) is not None  # the most recent survive
    assert cache.get("00" + "a" * 62) is None


def test_audit_names_widths_towers_and_eval_set_kind(env):
    from registry.audit import audit, pair_findings

    write_connector_checkpoint(
        env.root / "outputs" / RUN / "checkpoint_400.pt",
        step=400,
        vision_dim=32,
        llm_dim=48,
        n_queries=6,
        base_llm=BASE_ID,
        vision_tower="other/tower",
    )
    from registry.scanner import scan

    scan(env.reg, [env.root / "outputs"])
    findings = audit(env.reg, models=env.settings.models)
    codes = {f.code: f.message for f in findings}
    assert (
        "produces 48-wide embeddings but the LLM demo/Qwen3-tiny-Base has hidden size 64"
        in codes["connector-output-width"]
    )
    assert "mixes vision towers" in codes["vision-tower-differs"] and "other/tower" in codes["vision-tower-differs"]
    es = env.reg.get_evalset(name=EVALSET)
    errs = pair_findings(env.reg, env.ck(400), es, models=env.settings.models)
    assert any(f.code == "evalset-tower-mismatch" and TOWER_ID in f.message for f in errs)


# --- bad inputs: one line, exit 2, nothing written -----------------------------------------------


def _cli(env: Env, *args: str, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return evalboard_cli(args, env={**env.env(), **(extra_env or {})}, cwd=env.root)


def _one_line_refusal(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def _bad_connector(env: Env, name: str, **kw) -> Path:
    path = env.root / "outputs" / "bad" / name
    write_connector_checkpoint(
        path, step=int(name.split("_")[1].split(".")[0]), base_llm=BASE_ID, vision_tower=TOWER_ID, n_queries=6, **kw
    )
    return path


def _state(**changes):
    from evaluator.connectors import PerceiverConnector

    torch.manual_seed(0)
    state = dict(PerceiverConnector(32, 64, 6, 4).state_dict())
    for k, v in changes.items():
        if v is None:
            state.pop(k.replace("__", "."))
        else:
            state[k.replace("__", ".")] = v
    return state


BAD_CONNECTORS = {
    "missing-key": (dict(state=_state(projector__2__bias=None)), ("missing keys", "projector.2.bias")),
    "extra-key": (
        dict(state=_state(projector__9__weight=torch.zeros(2, 2))),
        ("unexpected keys", "projector.9.weight"),
    ),
    "builder-not-trusted": (
        dict(config={"connector_builder": "no_such_pkg.mod:build"}),
        ("no_such_pkg.mod:build", "not trusted", "[connector_builders] trusted"),
    ),
    "trusted-builder-does-not-import": (
        dict(config={"connector_builder": "no_such_pkg.mod:build"}),
        ("no_such_pkg.mod:build", "does not import"),
    ),
    "builder-wrong-widths": (
        dict(config={"connector_builder": "tests.evaluator.test_track_a:narrow_builder"}),
        ("produces 16-wide embeddings", "hidden size 64"),
    ),
    "llm-width-mismatch": (dict(llm_dim=48), ("48-wide embeddings", "hidden size 64")),
    "tower-width-mismatch": (dict(vision_dim=16), ("16-wide features", "hidden size 32")),
}


def narrow_builder(state, meta):
    """A user builder whose module fits the weights but gives the wrong output width."""
    from evaluator.connectors import PerceiverConnector

    class Narrow(PerceiverConnector):
        def forward(self, features):
            return super().forward(features)[..., :16]

    return Narrow(32, 64, 6, 4)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_CONNECTORS))
def test_bad_connector_checkpoints_are_refused_in_one_line(env, case):
    kw, needles = BAD_CONNECTORS[case]
    path = _bad_connector(env, f"checkpoint_{700 + sorted(BAD_CONNECTORS).index(case)}.pt", **kw)
    from registry.scanner import scan

    scan(env.reg, [path])
    before = env.counts()
    if case == "builder-wrong-widths":  # the module from this test file, trusted by the user
        proc = _cli(
            env,
            "eval",
            str(path),
            "--evalset",
            EVALSET,
            extra_env={
                "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                "EVALBOARD_TRUSTED_BUILDERS": "tests.evaluator.test_track_a:narrow_builder",
            },
        )
    elif case == "trusted-builder-does-not-import":
        proc = _cli(
            env, "eval", str(path), "--evalset", EVALSET, extra_env={"EVALBOARD_TRUSTED_BUILDERS": "no_such_pkg.mod:*"}
        )
    else:
        proc = _cli(env, "eval", str(path), "--evalset", EVALSET)
    _one_line_refusal(proc, str(path), *needles)
    assert env.counts() == before


@pytest.mark.slow
def test_missing_tower_is_refused_in_one_line(env):
    before = env.counts()
    proc = _cli(
        env,
        "eval",
        env.ck(100).path,
        "--evalset",
        EVALSET,
        extra_env={"EVALBOARD_MODELS": f"{BASE_ID}={env.root / 'models' / 'tiny-qwen3'}"},
    )
    _one_line_refusal(proc, TOWER_ID, "not available locally")
    assert env.counts() == before


def test_image_eval_sets_with_bad_images_or_no_placeholder_are_refused(env, tmp_path):
    from registry.evalset import Example, write_evalset

    good = image_examples(3, seed=1)
    cases = {
        "no-placeholder": (
            [
                Example(
                    e.example_id,
                    e.task,
                    [x for x in e.input_ids if x != -200] + [5],
                    e.labels[:1] + e.labels[2:] + [-100],
                    e.image,
                )
                for e in good
            ],
            "0 image placeholders",
        ),
        "unreadable-image": (
            [Example(e.example_id, e.task, e.input_ids, e.labels, e.image[:40]) for e in good],
            "not a readable image",
        ),
        "missing-image": ([Example(e.example_id, e.task, e.input_ids, e.labels, None) for e in good], "image is null"),
    }
    for name, (examples, needle) in cases.items():
        with pytest.raises(Exception) as info:
            write_evalset(tmp_path / name, name, examples, None, vision={"tower": TOWER_ID})
        msg = str(info.value)
        assert needle in msg and str(tmp_path / name) in msg and "\n" not in msg, msg
    # the same through the CLI: exit 2, one line, nothing registered
    before = env.counts()
    n_sets = len(env.reg.list_evalsets())
    proc = _cli(env, "evalset", "add", str(tmp_path / "unreadable-image"))
    _one_line_refusal(proc, "not a readable image")
    assert env.counts() == before and len(env.reg.list_evalsets()) == n_sets


def test_image_path_outside_the_eval_set_or_missing_is_refused(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from registry.errors import InvalidInput
    from registry.evalset import EvalSet

    d = tmp_path / "es"
    d.mkdir()
    (tmp_path / "outside.png").write_bytes(image_examples(1)[0].image)
    (d / "manifest.json").write_text(json.dumps({"name": "x", "vision": {"tower": TOWER_ID}}))
    for path, needle in (("../outside.png", "outside the eval-set folder"), ("nope.png", "does not exist")):
        pq.write_table(
            pa.table(
                {
                    "example_id": ["a"],
                    "task": ["i2t"],
                    "input_ids": [[1, -200, 2, 7]],
                    "labels": [[-100, -100, -100, 7]],
                    "image_path": [path],
                }
            ),
            d / "data.parquet",
        )
        with pytest.raises(InvalidInput, match=needle):
            EvalSet.load(d)
    (d / "img.png").write_bytes(image_examples(1)[0].image)
    pq.write_table(
        pa.table(
            {
                "example_id": ["a"],
                "task": ["i2t"],
                "input_ids": [[1, -200, 2, 7]],
                "labels": [[-100, -100, -100, 7]],
                "image_path": ["img.png"],
            }
        ),
        d / "data.parquet",
    )
    es = EvalSet.load(d)
    assert any(f.name == "img.png" for f in es.files)
    before = es.content_hash
    (d / "img.png").write_bytes(image_examples(2)[1].image)
    assert EvalSet.load(d).content_hash != before  # the image's bytes are part of the hash


def test_track_b_checkpoint_on_an_image_eval_set_is_refused(env, session_ws):
    from registry.audit import pair_findings
    from registry.scanner import scan

    scan(env.reg, [session_ws.checkpoints["stage3_token_lm_iter5"][0]])
    ck = env.reg.get_checkpoint(path=str(session_ws.checkpoints["stage3_token_lm_iter5"][0]))
    errs = pair_findings(env.reg, ck, env.reg.get_evalset(name=EVALSET))
    assert [f.code for f in errs] == ["evalset-kind"]

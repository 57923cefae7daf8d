"""LLaVA's projector pretraining output (haotian-liu/LLaVA, ``--tune_mm_mlp_adapter True``), scanned
as LLaVA writes it (issue 21, items 4 and 6):

- ``<out>/checkpoint-<step>/`` (``LLaVATrainer._save_checkpoint``: ``mm_projector.bin`` +
  ``config.json``) beside the final save in ``<out>`` itself (``mm_projector.bin``, ``config.json``,
  and ``trainer_state.json`` from ``trainer.save_state()``): one run named after ``<out>``;
- ``<out>/mm_projector/checkpoint-<step>.bin`` (``safe_save_model_for_hf_trainer`` for an output
  folder named ``checkpoint-<step>``, and older LLaVA's intermediate saves): checkpoints of run
  ``<out>``, read with ``<out>/checkpoint-<step>/config.json`` or else ``<out>/config.json``;
- a config.json without ``mm_projector_type`` is ``linear``, as LLaVA's ``build_vision_projector``;
- ``image_aspect_ratio`` values evalboard does not implement are refused in one line.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from registry.connector import ConnectorCheckpoint
from registry.errors import InvalidInput
from registry.scanner import scan
from tests._infra.workspace import run_cli
from tests.registry.test_scanner import forbid_tensor_reads

MM_HIDDEN, HIDDEN = 32, 64


def llava_config(**changes) -> dict:
    """The config.json LLaVA's ``model.config.save_pretrained`` writes (the fields evalboard reads
    and a few it does not)."""
    cfg = {
        "_name_or_path": "lmsys/vicuna-7b-v1.5",
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava_llama",
        "hidden_size": HIDDEN,
        "mm_hidden_size": MM_HIDDEN,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_tower": "openai/clip-vit-large-patch14-336",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_use_im_start_end": False,
        "image_aspect_ratio": "pad",
        "tune_mm_mlp_adapter": True,
        "transformers_version": "4.31.0",
    }
    cfg.update(changes)
    return {k: v for k, v in cfg.items() if v is not None}


def save_projector(path: Path, *, seed: int, linear: bool = False) -> Path:
    """``torch.save`` of the adapter state, keyed as LLaVA's named_parameters are (``model.mm_projector.*``)."""
    torch.manual_seed(seed)
    proj = (
        nn.Linear(MM_HIDDEN, HIDDEN)
        if linear
        else nn.Sequential(nn.Linear(MM_HIDDEN, HIDDEN), nn.GELU(), nn.Linear(HIDDEN, HIDDEN))
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({f"model.mm_projector.{k}": v for k, v in proj.state_dict().items()}, path)
    return path


def write_config(folder: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(llava_config(**changes), indent=2))
    return folder / "config.json"


def trainer_state(folder: Path, global_step: int) -> Path:
    """What ``Trainer.save_state()`` writes (TrainerState as JSON)."""
    state = {
        "best_metric": None,
        "best_model_checkpoint": None,
        "epoch": 1.0,
        "global_step": global_step,
        "is_hyper_param_search": False,
        "is_local_process_zero": True,
        "is_world_process_zero": True,
        "log_history": [{"epoch": 1.0, "learning_rate": 0.0, "loss": 2.1, "step": global_step}],
        "logging_steps": 1.0,
        "max_steps": global_step,
        "num_train_epochs": 1,
        "save_steps": 100,
        "total_flos": 0.0,
        "train_batch_size": 32,
    }
    (folder / "trainer_state.json").write_text(json.dumps(state, indent=2))
    return folder / "trainer_state.json"


def llava_output_folder(out: Path, *, final_step: int | None = 300) -> Path:
    """``<out>`` as LLaVA leaves it: checkpoint-100 (without its config.json: leniency),
    checkpoint-200 and checkpoint-300 (mm_projector.bin + config.json), and the final save in
    ``<out>`` itself, byte-equal to checkpoint-300, with trainer_state.json (global_step 300)."""
    save_projector(out / "checkpoint-100" / "mm_projector.bin", seed=1)
    for i, step in enumerate((200, 300)):
        save_projector(out / f"checkpoint-{step}" / "mm_projector.bin", seed=2 + i)
        write_config(out / f"checkpoint-{step}")
    shutil.copy(out / "checkpoint-300" / "mm_projector.bin", out / "mm_projector.bin")
    shutil.copy(out / "checkpoint-300" / "config.json", out / "config.json")
    if final_step is not None:
        trainer_state(out, final_step)
    return out


def _registered(reg) -> dict[str, tuple[str, int | None, str, str]]:
    """checkpoint path -> (run name, step, status, track)."""
    runs = {r.id: r for r in reg.list_runs()}
    return {c.path: (runs[c.run_id].name, c.step, c.status, c.track) for c in reg.list_checkpoints()}


@pytest.mark.parametrize("scan_what", ["output folder", "its parent"])
def test_a_llava_output_folder_is_one_run_of_its_step_folders_and_final_save(
    tmp_path: Path, sqlite_registry, scan_what: str
) -> None:
    parent = tmp_path / "outputs"
    out = llava_output_folder(parent / "llava-v1.5-7b-pretrain")
    summary = scan(sqlite_registry, [out if scan_what == "output folder" else parent])
    assert summary.invalid == 0, summary.invalid_items
    assert (summary.found, summary.new, summary.runs) == (4, 4, 1)
    assert [(r.name, r.path, r.track) for r in sqlite_registry.list_runs()] == [
        ("llava-v1.5-7b-pretrain", str(out), "A")
    ]
    assert _registered(sqlite_registry) == {
        str(out): ("llava-v1.5-7b-pretrain", 300, "valid", "A"),
        str(out / "checkpoint-100"): ("llava-v1.5-7b-pretrain", 100, "valid", "A"),
        str(out / "checkpoint-200"): ("llava-v1.5-7b-pretrain", 200, "valid", "A"),
        str(out / "checkpoint-300"): ("llava-v1.5-7b-pretrain", 300, "valid", "A"),
    }
    final = sqlite_registry.get_checkpoint(path=str(out))
    last = sqlite_registry.get_checkpoint(path=str(out / "checkpoint-300"))
    first = sqlite_registry.get_checkpoint(path=str(out / "checkpoint-100"))
    # the final save is checkpoint-300's bytes: the same content (trainer_state.json gives only the step)
    assert final.content_hash == last.content_hash
    assert sorted(f["name"] for f in final.files) == ["config.json", "mm_projector.bin", "trainer_state.json"]
    assert "trainer_state.json" in " ".join(final.meta["notes"])
    # checkpoint-100 has no config.json of its own: the output folder's, recorded as ../config.json
    assert sorted(f["name"] for f in first.files) == ["../config.json", "mm_projector.bin"]
    assert any("../config.json" in n for n in first.meta["notes"])
    assert first.base_model == "lmsys/vicuna-7b-v1.5" and first.meta["image_aspect_ratio"] == "pad"


def test_a_rescan_of_the_llava_output_folder_reads_no_tensor(
    tmp_path: Path, sqlite_registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = llava_output_folder(tmp_path / "outputs" / "pretrain")
    assert scan(sqlite_registry, [out]).new == 4
    with monkeypatch.context() as m:
        forbid_tensor_reads(m)
        again = scan(sqlite_registry, [tmp_path / "outputs"])
    assert (again.found, again.unchanged, again.new, again.updated, again.invalid) == (4, 4, 0, 0, 0)
    # trainer_state.json is one of the final save's files: a rewrite is seen, the step follows it
    st = os.stat(out / "trainer_state.json")
    trainer_state(out, 310)
    os.utime(out / "trainer_state.json", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    scan(sqlite_registry, [out])
    assert sqlite_registry.get_checkpoint(path=str(out)).step == 310


def test_a_final_save_without_trainer_state_is_step_less_with_a_note(tmp_path: Path, sqlite_registry) -> None:
    out = llava_output_folder(tmp_path / "pretrain", final_step=None)
    summary = scan(sqlite_registry, [out])
    assert summary.invalid == 0, summary.invalid_items
    final = sqlite_registry.get_checkpoint(path=str(out))
    assert (final.status, final.step) == ("valid", None)
    assert final.meta["notes"] == [
        "step: none (the final save of a LLaVA output folder takes its step from trainer_state.json, and there is none)"
    ]
    assert sqlite_registry.get_run(id=final.run_id).name == "pretrain"


def test_bad_trainer_state_is_an_invalid_checkpoint_naming_the_file(tmp_path: Path, sqlite_registry) -> None:
    out = llava_output_folder(tmp_path / "pretrain")
    (out / "trainer_state.json").write_text(json.dumps({"global_step": "300"}))
    summary = scan(sqlite_registry, [out])
    assert [i["path"] for i in summary.invalid_items] == [str(out)]
    reason = summary.invalid_items[0]["reason"]
    assert str(out / "trainer_state.json") in reason and "global_step must be an integer" in reason
    assert "\n" not in reason
    # a step folder's trainer_state.json must agree with its name
    trainer_state(out, 300)
    trainer_state(out / "checkpoint-200", 201)
    summary = scan(sqlite_registry, [out])
    assert [i["path"] for i in summary.invalid_items] == [str(out / "checkpoint-200")]
    assert "global_step 201 disagrees with the folder's name checkpoint-200" in summary.invalid_items[0]["reason"]


@pytest.mark.parametrize("scan_what", ["output folder", "its parent", "mm_projector folder"])
def test_the_mm_projector_folder_layout(tmp_path: Path, sqlite_registry, scan_what: str) -> None:
    """``<out>/mm_projector/checkpoint-<step>.bin``: checkpoint-100's config is the one saved in
    ``<out>/checkpoint-100/`` (beside the Trainer's trainer_state.json: not a checkpoint of ours),
    checkpoint-300's too (a folder holding only that config.json: not a checkpoint either);
    checkpoint-200 has no such folder and uses ``<out>/config.json``."""
    parent = tmp_path / "outputs"
    out = parent / "llava-pretrain-old"
    for step in (100, 200, 300):
        save_projector(out / "mm_projector" / f"checkpoint-{step}.bin", seed=step)
    write_config(out / "checkpoint-100", mm_vision_select_layer=-1)
    trainer_state(out / "checkpoint-100", 100)
    write_config(out / "checkpoint-300", mm_vision_select_layer=-1)
    write_config(out)
    root = {"output folder": out, "its parent": parent, "mm_projector folder": out / "mm_projector"}[scan_what]
    summary = scan(sqlite_registry, [root])
    assert summary.invalid == 0, summary.invalid_items
    assert [(r.name, r.path) for r in sqlite_registry.list_runs()] == [("llava-pretrain-old", str(out))]
    assert _registered(sqlite_registry) == {
        str(out / "mm_projector" / "checkpoint-100.bin"): ("llava-pretrain-old", 100, "valid", "A"),
        str(out / "mm_projector" / "checkpoint-200.bin"): ("llava-pretrain-old", 200, "valid", "A"),
        str(out / "mm_projector" / "checkpoint-300.bin"): ("llava-pretrain-old", 300, "valid", "A"),
    }
    c100 = sqlite_registry.get_checkpoint(path=str(out / "mm_projector" / "checkpoint-100.bin"))
    c200 = sqlite_registry.get_checkpoint(path=str(out / "mm_projector" / "checkpoint-200.bin"))
    assert sorted(f["name"] for f in c100.files) == ["../checkpoint-100/config.json", "checkpoint-100.bin"]
    assert sorted(f["name"] for f in c200.files) == ["../config.json", "checkpoint-200.bin"]
    assert (c100.meta["vision_feature_layer"], c200.meta["vision_feature_layer"]) == (-1, -2)
    assert c100.meta["layout"] == "llava" and c100.meta["output_width"] == HIDDEN
    again = scan(sqlite_registry, [root])
    assert (again.found, again.unchanged) == (3, 3)
    # the config is one of the checkpoint's files: editing it is seen by a rescan
    write_config(out, mm_vision_select_layer=-3)
    os.utime(out / "config.json", ns=(1, 2))
    assert scan(sqlite_registry, [root]).updated == 1
    c200 = sqlite_registry.get_checkpoint(path=str(out / "mm_projector" / "checkpoint-200.bin"))
    assert c200.meta["vision_feature_layer"] == -3


def test_an_mm_projector_file_without_any_config_is_invalid_in_one_line(tmp_path: Path, sqlite_registry) -> None:
    out = tmp_path / "pretrain"
    save_projector(out / "mm_projector" / "checkpoint-100.bin", seed=0)
    summary = scan(sqlite_registry, [out])
    (item,) = summary.invalid_items
    assert item["path"] == str(out / "mm_projector" / "checkpoint-100.bin")
    assert "has no config.json" in item["reason"] and "\n" not in item["reason"]
    ck = sqlite_registry.get_checkpoint(path=item["path"])
    assert (ck.status, ck.step, sqlite_registry.get_run(id=ck.run_id).name) == ("invalid", 100, "pretrain")


def test_a_config_without_mm_projector_type_is_linear_as_in_llava(tmp_path: Path, sqlite_registry) -> None:
    folder = tmp_path / "old-llava" / "checkpoint-500"
    save_projector(folder / "mm_projector.bin", seed=0, linear=True)
    write_config(folder, mm_projector_type=None)
    summary = scan(sqlite_registry, [folder])
    assert summary.invalid == 0, summary.invalid_items
    ck = sqlite_registry.get_checkpoint(path=str(folder))
    assert ck.status == "valid" and ck.step == 500 and ck.meta["mm_projector_type"] == "linear"
    assert ck.meta["notes"] == ["mm_projector_type: linear (default: not in config.json; LLaVA's default)"]

    # evalboard inspect says so, in its text and its JSON output
    home = tmp_path / "home"
    text = run_cli(["inspect", folder], home=home)
    assert text.returncode == 0, text.stderr
    fields = {k.strip(): v for k, v in (line.split(": ", 1) for line in text.stdout.splitlines())}
    assert fields["mm_projector_type"] == "linear"
    assert "mm_projector_type: linear (default: not in config.json" in fields["notes"]
    as_json = json.loads(run_cli(["inspect", folder, "--json"], home=home).stdout)
    assert as_json["mm_projector_type"] == "linear" and as_json["layout"] == "llava"

    # the reference builder defaults it too, as LLaVA's build_vision_projector does
    from evaluator.connectors import build_connector

    loaded = ConnectorCheckpoint.load(folder)
    module = build_connector("evaluator.connectors:llava_projector", loaded.state, {}, folder)
    assert isinstance(module.mm_projector, nn.Linear)


def test_no_mm_projector_type_with_mlp_weights_is_refused_naming_config_json(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "checkpoint-500"
    save_projector(folder / "mm_projector.bin", seed=0)
    write_config(folder, mm_projector_type=None)
    with pytest.raises(InvalidInput) as e:
        ConnectorCheckpoint.load(folder)
    assert str(e.value).startswith(f"{folder / 'config.json'}: has no mm_projector_type, so it is 'linear'")
    assert "mm_projector.0.weight" in str(e.value)


@pytest.mark.parametrize("value", ["anyres", "anyres_max_9", "highres", "crop_split"])
def test_an_unimplemented_image_aspect_ratio_is_refused_in_one_line(tmp_path: Path, value: str) -> None:
    folder = tmp_path / "run" / "checkpoint-500"
    save_projector(folder / "mm_projector.bin", seed=0)
    write_config(folder, image_aspect_ratio=value)
    proc = run_cli(["inspect", folder], home=tmp_path / "home")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(folder / "config.json") in lines[0]
    assert f"image_aspect_ratio {value!r} is not implemented" in lines[0]


@pytest.mark.parametrize(
    ("value", "mode"),
    [("pad", "pad"), (None, "default"), ("", "default"), ("square", "default"), ("resize", "default")],
)
def test_image_aspect_ratio_modes(tmp_path: Path, value, mode: str) -> None:
    folder = tmp_path / "run" / "checkpoint-500"
    save_projector(folder / "mm_projector.bin", seed=0)
    cfg = write_config(folder, image_aspect_ratio=value)
    if value == "":
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "image_aspect_ratio": ""}))
    ck = ConnectorCheckpoint.load(folder)
    assert ck.aspect_ratio == mode and ck.summary()["image_aspect_ratio"] == mode
    if value in ("square", "resize"):  # handed to the processor as is, as LLaVA's process_images does
        assert any(n.startswith(f"image_aspect_ratio: {value!r}") for n in ck.notes)


def test_a_non_string_image_aspect_ratio_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "checkpoint-500"
    save_projector(folder / "mm_projector.bin", seed=0)
    write_config(folder, image_aspect_ratio=1)
    with pytest.raises(InvalidInput, match="image_aspect_ratio must be a string") as e:
        ConnectorCheckpoint.load(folder)
    assert str(folder / "config.json") in str(e.value)

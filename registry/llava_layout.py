"""Where LLaVA (haotian-liu/LLaVA, projector pretraining with ``--tune_mm_mlp_adapter``) puts its
saves, as paths: which folder or file is a checkpoint, which run it belongs to, which
``config.json`` it is read with, which files it is made of, and its step. `registry.connector`
reads the checkpoints themselves (its docstring describes the layouts)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from registry.errors import InvalidInput
from registry.files import FileRecord
from registry.safeio import check_int, require_regular_file, sha256_file
from registry.trainable_rows import check_step_in_name, parse_step

__all__ = [
    "LLAVA_FILES",
    "LLAVA_WEIGHTS",
    "is_llava_step_dir",
    "llava_step",
    "llava_records",
    "is_llava_folder",
    "is_llava_projector_file",
    "is_llava_config_dir",
    "llava_run_dir",
    "llava_files",
    "llava_config",
]

LLAVA_FILES = ("mm_projector.bin", "mm_projector.safetensors", "config.json", "trainer_state.json")
LLAVA_WEIGHTS = LLAVA_FILES[:2]
_TRAINER_STATE = "trainer_state.json"
_LLAVA_STEP_DIR_RE = re.compile(r"^(?:checkpoint|ckpt)[-_]\d+$")
_LLAVA_PROJECTOR_DIR = "mm_projector"
_LLAVA_PROJECTOR_FILE_RE = re.compile(r"^checkpoint-\d+\.bin$")


def is_llava_folder(path: Path) -> bool:
    return any((path / n).exists() for n in LLAVA_WEIGHTS)


def is_llava_projector_file(path: Path) -> bool:
    """``<out>/mm_projector/checkpoint-<step>.bin``: LLaVA's save of a folder named ``checkpoint-<step>``."""
    return path.parent.name == _LLAVA_PROJECTOR_DIR and bool(_LLAVA_PROJECTOR_FILE_RE.match(path.name))


def is_llava_config_dir(path: Path) -> bool:
    """``<out>/checkpoint-<step>/`` holding no projector, beside ``<out>/mm_projector/checkpoint-<step>.bin``:
    where LLaVA saved that file's config.json, not a checkpoint of its own."""
    projector = path.parent / _LLAVA_PROJECTOR_DIR / f"{path.name}.bin"
    return not is_llava_folder(path) and is_llava_projector_file(projector) and projector.is_file()


def is_llava_step_dir(path: Path) -> bool:
    return bool(_LLAVA_STEP_DIR_RE.match(path.name))


def llava_run_dir(path: Path) -> Path:
    """The run (LLaVA's output folder) a LLaVA checkpoint belongs to: the folder holding a
    ``checkpoint-<step>/``, the output folder itself for its final save, ``<out>`` for
    ``<out>/mm_projector/checkpoint-<step>.bin``."""
    if is_llava_projector_file(path):
        return path.parent.parent
    return path.parent if is_llava_step_dir(path) else path


def llava_config(path: Path) -> tuple[Path | None, str | None]:
    """The ``config.json`` a LLaVA checkpoint is read with, and a note when it is not its own."""
    if is_llava_projector_file(path):
        out = path.parent.parent
        own = out / path.name.removesuffix(".bin") / "config.json"
        if own.is_file():
            return own, None
        shared = out / "config.json"
        if shared.is_file():
            return shared, f"config.json: {own.parent.name}/config.json absent, the output folder's config.json is used"
        return None, None
    own = path / "config.json"
    if os.path.lexists(own) or not is_llava_step_dir(path):
        return (own if os.path.lexists(own) else None), None
    shared = path.parent / "config.json"
    if shared.is_file():
        return shared, f"config.json: none in {path.name}/, the output folder's ../config.json is used"
    return None, None


def _record_name(base: Path, p: Path) -> str:
    """``p`` relative to the checkpoint: to its folder, or to the folder holding a single-file one."""
    return os.path.relpath(p, base.parent if is_llava_projector_file(base) else base)


def llava_files(path: Path) -> dict[str, Path]:
    """Record name -> file, for every file a LLaVA checkpoint is made of (weights, the config it
    is read with, ``trainer_state.json``): what registration records and a rescan compares."""
    if is_llava_projector_file(path):
        found = [path]
    else:
        found = [path / n for n in (*LLAVA_WEIGHTS, _TRAINER_STATE) if os.path.lexists(path / n)]
    cfg, _ = llava_config(path)
    if cfg is not None:
        found.append(cfg)
    return {_record_name(path, p): p for p in found}


def llava_records(base: Path, paths: list[Path]) -> tuple[FileRecord, ...]:
    out = []
    for p in paths:
        st = require_regular_file(p)
        out.append(FileRecord(_record_name(base, p), st.st_size, st.st_mtime_ns, sha256_file(p)))
    return tuple(sorted(out, key=lambda r: r.name))


def _trainer_state_step(path: Path) -> int:
    from registry.safeio import read_json

    state = read_json(path)
    if "global_step" not in state:
        raise InvalidInput("missing field 'global_step' (the step the final save was made at)", path=path)
    return check_int(state["global_step"], "global_step", path)


def llava_step(path: Path, notes: list[str]) -> tuple[int | None, Path | None]:
    """(step, trainer_state.json read for it): a step folder's or projector file's from its name (a
    trainer_state.json there must agree), the final save's from the output folder's trainer_state.json."""
    if is_llava_projector_file(path):
        check_step_in_name(path)
        return parse_step(path.name), None
    ts = path / _TRAINER_STATE
    has_ts = os.path.lexists(ts)
    if is_llava_step_dir(path):
        check_step_in_name(path)
        step = parse_step(path.name)
        if has_ts and (got := _trainer_state_step(ts)) != step:
            raise InvalidInput(f"global_step {got} disagrees with the folder's name {path.name}", path=ts)
        return step, ts if has_ts else None
    if not has_ts:
        notes.append(
            "step: none (the final save of a LLaVA output folder takes its step from trainer_state.json, "
            "and there is none)"
        )
        return None, None
    step = _trainer_state_step(ts)
    notes.append(f"step: {step}, the global_step of trainer_state.json (final save of the LLaVA output folder)")
    return step, ts

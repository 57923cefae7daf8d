"""Track B in the evaluator: the resident base is fitted to the checkpoint's token space once, then
only the trained rows are swapped (evaluator/rows.py); the examples are token ids as they are."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from evaluator.batching import Example
from evaluator.options import EvalOptions, subset_examples
from evaluator.rows import RowTensors, TokenSpaceSizes
from evaluator.tracks.base import Applied, EvalTrack, TrackInputs
from registry.atomic import atomic_folder, write_file
from registry.errors import InvalidInput
from registry.evalset import EvalSet
from registry.files import verify_files
from registry.token_space import TokenSpace
from registry.trainable_rows import TrainableRows

if TYPE_CHECKING:
    from evaluator.service import Evaluator
    from registry.entities import CheckpointEntity, EvalSetEntity

__all__ = ["TrainableRowsEval"]


class TrainableRowsEval(EvalTrack):
    letter = "B"
    stats_artifact = "row_stats.json"
    model_type = "trainable-rows"

    def token_space(self, ev: Evaluator, ck: CheckpointEntity) -> TokenSpace:
        ts_id = ck.token_space_id
        if ts_id is None:
            ts_id = ev.reg.get_run(id=ck.run_id).token_space_id
        if ts_id is None:
            raise InvalidInput("has no token_space.json and its run has none", path=ck.path)
        ent = ev.reg.get_token_space(id=ts_id)
        return TokenSpace.from_dict(ent.spec, source=ent.first_path)

    def load(self, ev: Evaluator, ck: CheckpointEntity) -> tuple[TrainableRows, TokenSpace]:
        space = self.token_space(ev, ck)
        verify_files(ck.path, ck.files)
        rows = TrainableRows.load(ck.path, run_token_space=space)
        if rows.content_hash != ck.content_hash:
            raise InvalidInput("changed on disk since registration; rescan it with `evalboard scan`", path=ck.path)
        return rows, space

    def apply(
        self, ev: Evaluator, ck: CheckpointEntity, loaded: Any, device: torch.device, options: EvalOptions
    ) -> Applied:
        rows, space = loaded
        resident = ev.ensure_base(rows.base_model, device)
        sizes = TokenSpaceSizes(space.text_vocab_size, space.vocab_size_total, space.resolved_pad_id())
        report = resident.apply(
            sizes, RowTensors(rows.embed, rows.lm_head, rows.row_start, rows.row_end, source=ck.path)
        )
        return Applied(resident.model, loaded, sizes.pad_token_id, space.abi_hash, report.describe(), context=space)

    def inputs(self, ev: Evaluator, applied: Applied, es: EvalSetEntity, max_examples: int | None) -> TrackInputs:
        space: TokenSpace = applied.context
        key = (es.content_hash, space.abi_hash)
        if key not in ev.examples_cache:
            verify_files(es.path, es.files)
            loaded = EvalSet.load(es.path, token_space=space)
            if loaded.content_hash != es.content_hash:
                raise InvalidInput("eval set changed on disk since registration; re-register it", path=es.path)
            ev.examples_cache[key] = [Example(e.example_id, e.task, e.input_ids, e.labels) for e in loaded.examples]

        examples = ev.examples_cache[key]
        return TrackInputs(subset_examples(examples, max_examples) if max_examples else examples)

    def stats_base(self, ev: Evaluator, ck: CheckpointEntity, loaded: Any) -> Path | None:
        from evaluator.base_model import resolve_base_model

        rows, _ = loaded
        return resolve_base_model(rows.base_model, ev.settings.models)

    def statistics(self, ev: Evaluator, ck: CheckpointEntity, loaded: Any, *, base_dir: Path | None) -> dict[str, Any]:
        from evaluator.stats import checkpoint_row_stats

        rows, space = loaded
        return checkpoint_row_stats(
            rows.embed,
            rows.lm_head,
            rows.row_start,
            space,
            step=ck.step,
            base_dir=base_dir,
            previous=self._previous_rows(ev, ck, space),
        )

    def _previous_rows(self, ev: Evaluator, ck: CheckpointEntity, space: TokenSpace):
        prev = ev.previous_checkpoint(ck)
        if prev is None:
            return None
        try:
            rows = TrainableRows.load(prev.path, run_token_space=space)
        except Exception as e:  # noqa: BLE001 - drift is optional; a broken previous checkpoint only loses it
            ev.log.warning("no drift for %s: previous checkpoint %s unreadable: %s", ck.path, prev.path, e)
            return None
        return prev.step, rows.embed, rows.lm_head

    def materialize(self, ev: Evaluator, ck: CheckpointEntity, out_dir: Path, dtype: torch.dtype | None) -> str:
        """Base + patched rows as a ``save_pretrained`` folder, with the token space beside it."""
        import json
        import shutil

        from evaluator.base_model import load_base, resolve_base_model
        from evaluator.rows import ResidentModel

        rows, space = self.load(ev, ck)
        base_path = resolve_base_model(rows.base_model, ev.settings.models)
        base = load_base(base_path, "cpu", dtype=dtype or _saved_dtype(base_path))
        resident = ResidentModel(base)
        sizes = TokenSpaceSizes(space.text_vocab_size, space.vocab_size_total, space.resolved_pad_id())
        resident.apply(sizes, RowTensors(rows.embed, rows.lm_head, rows.row_start, rows.row_end, source=ck.path))
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        with atomic_folder(out_dir, replace_empty=True) as tmp:
            resident.model.save_pretrained(tmp, safe_serialization=True)
            for name in (
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "vocab.json",
                "merges.txt",
                "generation_config.json",
            ):
                src = Path(base_path) / name
                if src.is_file() and not (tmp / name).exists():
                    shutil.copy2(src, tmp / name)
            space.save(tmp / "token_space.json")
            write_file(
                tmp / "evalboard_materialized.json",
                json.dumps(
                    {
                        "checkpoint": ck.path,
                        "checkpoint_hash": ck.content_hash,
                        "base_model": rows.base_model,
                        "base_path": str(base_path),
                        "token_space_hash": space.abi_hash,
                        "row_start": rows.row_start,
                        "row_end": rows.row_end,
                    },
                    indent=2,
                )
                + "\n",
            )
        return f"materialized {ck.path} into {out_dir}"

    def model_params(self, ck: CheckpointEntity, token_space_hash: str | None) -> dict[str, str]:
        return {
            "step": str(ck.step or 0),
            "base_model": ck.base_model or "",
            "row_start": str(ck.row_start or 0),
            "row_end": str(ck.row_end or 0),
            "token_space_hash": token_space_hash or "",
        }


def _saved_dtype(base_path: Path) -> torch.dtype:
    import json

    try:
        cfg = json.loads((Path(base_path) / "config.json").read_text())
    except (OSError, ValueError):
        return torch.float32
    name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(name), torch.float32)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32

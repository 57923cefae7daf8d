"""Track A in the evaluator: frozen vision tower -> the checkpoint's connector -> frozen LLM.

The LLM and the tower stay resident; switching to the next connector of a sweep loads only the
connector (a few MB). The tower runs once per image: its features are kept in memory for the
eval set and on disk (`evaluator.vision.FeatureCache`), so a sweep's later checkpoints and later
processes reuse them.

Inputs: each example's single placeholder id (``vision.image_token_id``) in ``input_ids`` is
expanded to the connector's output tokens; the decoder gets ``inputs_embeds`` = the LLM's token
embeddings with the connector's outputs written into those positions. The loss is the same as
Track B's: token-weighted NLL of the scored text labels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from evaluator.batching import IGNORE_INDEX, Batch, Example
from evaluator.connectors import BuilderChoice, build_connector, choose_builder, layout_builder
from evaluator.options import EvalOptions, subset_examples
from evaluator.tracks.base import Applied, EvalTrack, TrackInputs
from evaluator.vision import ResidentTower, VisionSettings
from registry.connector import ConnectorCheckpoint
from registry.errors import Incompatible, InvalidInput
from registry.evalset import EvalSet
from registry.files import verify_files

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from evaluator.service import Evaluator
    from registry.entities import CheckpointEntity, EvalSetEntity

__all__ = ["ConnectorEval", "builder_for"]


def builder_for(
    ev: Evaluator, ck: CheckpointEntity, hinted: str | None, default: str | None, chosen: str | None
) -> BuilderChoice:
    """`evaluator.connectors.choose_builder` for a registered connector checkpoint."""
    return choose_builder(
        chosen=chosen,
        settings=ev.settings,
        run_name=ev.reg.get_run(id=ck.run_id).name,
        hinted=hinted,
        default=default,
        where=ck.path,
    )


class _Context:
    """What the inputs builder needs: the connector, the tower and its settings."""

    def __init__(
        self,
        connector: torch.nn.Module,
        tower: ResidentTower,
        settings: VisionSettings,
        builder: str,
    ):
        self.connector = connector
        self.tower = tower
        self.settings = settings
        self.builder = builder


class ConnectorEval(EvalTrack):
    letter = "A"
    stats_artifact = "connector_stats.json"
    model_type = "vision-connector"

    def load(self, ev: Evaluator, ck: CheckpointEntity) -> ConnectorCheckpoint:
        _verify(ck)
        loaded = ConnectorCheckpoint.load(ck.path)
        if loaded.content_hash != ck.content_hash:
            raise InvalidInput("changed on disk since registration; rescan it with `evalboard scan`", path=ck.path)
        return loaded

    def refuse(self, ev: Evaluator, ck: CheckpointEntity, options: EvalOptions) -> None:
        meta = ck.meta or {}
        builder_for(
            ev, ck, meta.get("connector_builder"), layout_builder(meta.get("layout")), options.connector_builder
        )

    def apply(
        self, ev: Evaluator, ck: CheckpointEntity, loaded: Any, device: torch.device, options: EvalOptions
    ) -> Applied:
        from evaluator.base_model import resolve_base_model
        from registry.tracks.connector import model_hidden_size

        # Everything that can be refused without loading a model comes first.
        choice = builder_for(ev, ck, loaded.builder, layout_builder(loaded.layout), options.connector_builder)
        spec = choice.spec
        ev.log.info("connector %s: builder %s (chosen by %s)", ck.path, spec, choice.source)
        connector = build_connector(spec, loaded.state, loaded.meta, ck.path)
        llm_dir = resolve_base_model(loaded.base_llm, ev.settings.models)
        tower_dir = resolve_base_model(loaded.vision_tower, ev.settings.models)
        hidden, tower_width = model_hidden_size(llm_dir), model_hidden_size(tower_dir)
        if hidden is None or tower_width is None:
            raise InvalidInput(f"config.json of {llm_dir if hidden is None else tower_dir} names no hidden_size")
        _check_widths(connector, spec, loaded, ck, tower_width, hidden)
        resident = ev.ensure_base(loaded.base_llm, device, pristine=True)
        tower = ev.ensure_tower(loaded.vision_tower, device)
        settings = tower.resolve(loaded.feature_layer, loaded.drop_cls, loaded.aspect_ratio)
        connector = connector.to(device)
        prepare = (
            f"connector {Path(ck.path).name} built by {spec} ({choice.source}; {loaded.n_params} parameters) on "
            f"{tower.describe()}, features from hidden layer {settings.feature_layer}"
            f"{', CLS dropped' if settings.drop_cls else ''}"
            f"{', images padded to square (image_aspect_ratio pad)' if settings.aspect_ratio == 'pad' else ''}"
        )
        params = {
            "connector_builder": spec,
            "vision_tower": loaded.vision_tower,
            "vision_tower_hash": tower.content_hash,
            "vision_feature_layer": settings.feature_layer,
            "vision_drop_cls": settings.drop_cls,
            "image_aspect_ratio": settings.aspect_ratio,
        }
        pad = resident.model.config.pad_token_id
        return Applied(resident.model, loaded, pad, None, prepare, params, _Context(connector, tower, settings, spec))

    def inputs(self, ev: Evaluator, applied: Applied, es: EvalSetEntity, max_examples: int | None) -> TrackInputs:

        ctx: _Context = applied.context
        key = (es.content_hash, "images")
        if key not in ev.examples_cache:
            verify_files(es.path, es.files)
            loaded = EvalSet.load(es.path)
            if loaded.content_hash != es.content_hash:
                raise InvalidInput("eval set changed on disk since registration; re-register it", path=es.path)
            if loaded.vision is None:
                raise InvalidInput(
                    "has no images (no 'vision' section in its manifest); a connector checkpoint "
                    "needs an image eval set",
                    path=es.path,
                )
            ev.examples_cache[key] = (loaded.vision, list(loaded.examples))
        vision, examples = ev.examples_cache[key]
        if max_examples:
            examples = subset_examples(examples, max_examples)
        features, index = self._features(ev, ctx, es, examples)
        n_out = self._out_tokens(ctx, features)
        expanded = [_expand(e, vision.image_token_id, n_out) for e in examples]
        rows = [index[e.image_sha256, e.image_size] for e in examples]
        return TrackInputs(expanded, _inputs_fn(ctx, features, rows, vision.image_token_id), vision.image_token_id)

    def _out_tokens(self, ctx: _Context, features: torch.Tensor) -> int:
        with torch.no_grad():
            probe = features[:1].to(ctx.tower.device, torch.float32)
            return int(ctx.connector(probe).shape[1])

    def _features(
        self, ev: Evaluator, ctx: _Context, es: EvalSetEntity, examples: list[Any]
    ) -> tuple[torch.Tensor, dict[tuple, int]]:
        """``[unique images, patches, width]`` on the CPU, and (image sha, size) -> row."""
        tower, settings = ctx.tower, ctx.settings
        unique: dict[tuple, int] = {}
        for e in examples:
            unique.setdefault((e.image_sha256, e.image_size), len(unique))
        cache = ev.feature_cache()
        memory = ev.features_memory
        rows: list[torch.Tensor | None] = []
        todo = []
        for (sha, size), i in unique.items():
            k = tower.cache_key(sha, size, settings)
            hit = memory.get(k)
            if hit is None and cache is not None:
                hit = cache.get(k, dtype=tower.dtype, width=tower.hidden_size)
                if hit is not None:
                    memory[k] = hit
            rows.append(hit)
            if hit is None:
                todo.append((i, k))
        if todo:
            data = {(e.image_sha256, e.image_size): e.image for e in examples}
            keys = list(unique)
            computed = tower.features([data[keys[i]] for i, _ in todo], settings).to("cpu")
            for (i, k), f in zip(todo, computed):
                f = f.clone()
                rows[i] = f
                memory[k] = f
                if cache is not None:
                    cache.put(k, f)
            if cache is not None:
                cache.evict()
        shapes = {tuple(r.shape) for r in rows if r is not None}
        if len(shapes) != 1:
            raise Incompatible(
                f"vision tower {tower.path} gave features of different shapes {sorted(shapes)} for the "
                f"images of eval set {es.name!r}; its image processor must resize every image alike"
            )
        return torch.stack([r for r in rows if r is not None]), unique

    def statistics(self, ev: Evaluator, ck: CheckpointEntity, loaded: Any, *, base_dir: Path | None) -> dict[str, Any]:
        from evaluator.stats import connector_stats

        previous = None
        prev = ev.previous_checkpoint(ck)
        if prev is not None:
            try:
                previous = (prev.step, ConnectorCheckpoint.load(prev.path).state)
            except Exception as e:  # noqa: BLE001 - drift is optional
                ev.log.warning("no drift for %s: previous checkpoint %s unreadable: %s", ck.path, prev.path, e)
        return connector_stats(loaded.state, step=ck.step, previous=previous)

    def model_params(self, ck: CheckpointEntity, token_space_hash: str | None) -> dict[str, str]:
        meta = ck.meta or {}
        return {
            "step": str(ck.step or 0),
            "base_model": ck.base_model or "",
            "vision_tower": str(meta.get("vision_tower") or ""),
            "n_params": str(meta.get("n_params") or ""),
        }


def _verify(ck: CheckpointEntity) -> None:
    """`verify_files` for a connector checkpoint, whose record names are relative to its folder or
    to the folder holding a single-file one, and may leave it (LLaVA: ``../config.json``,
    ``../checkpoint-<step>/config.json``): each file is named by its own path in the error."""
    base = Path(ck.path)
    folder = base.parent if base.is_file() else base
    for record in ck.files:
        p = Path(os.path.normpath(folder / str(record["name"])))
        verify_files(p.parent, [{**record, "name": p.name}])


def _check_widths(
    connector: torch.nn.Module,
    spec: str,
    loaded: ConnectorCheckpoint,
    ck: CheckpointEntity,
    tower_width: int,
    hidden: int,
) -> None:
    """A probe forward on zeros: the connector takes the tower's width and gives the LLM's."""
    probe = torch.zeros(1, 4, tower_width)
    try:
        with torch.no_grad():
            out = connector(probe)
    except Exception as e:  # noqa: BLE001 - the user's module: report what does not fit
        raise Incompatible(
            f"connector built by {spec} does not take the {tower_width}-wide features of vision "
            f"tower {loaded.vision_tower} (hidden size {tower_width}): {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}",
            path=ck.path,
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 3:
        raise Incompatible(
            f"connector built by {spec} returned {type(out).__name__} "
            f"{tuple(getattr(out, 'shape', ()))}; expected [batch, tokens, {hidden}]",
            path=ck.path,
        )
    if out.shape[-1] != hidden:
        raise Incompatible(
            f"connector built by {spec} produces {out.shape[-1]}-wide embeddings but the LLM "
            f"{loaded.base_llm} has hidden size {hidden}",
            path=ck.path,
        )


def _expand(e: Any, placeholder: int, n: int) -> Example:
    """The example with its placeholder repeated ``n`` times (labels -100 there)."""
    at = e.input_ids.index(placeholder)
    ids = [*e.input_ids[:at], *[placeholder] * n, *e.input_ids[at + 1 :]]
    labels = [*e.labels[:at], *[IGNORE_INDEX] * n, *e.labels[at + 1 :]]
    return Example(e.example_id, e.task, ids, labels)


def _inputs_fn(ctx: _Context, features: torch.Tensor, rows: list[int], placeholder: int):
    """``inputs_embeds`` for a batch: token embeddings, with the connector's outputs in the slots."""

    @torch.no_grad()
    def inputs(model: PreTrainedModel, batch: Batch) -> dict[str, torch.Tensor]:
        ids = batch.input_ids
        slots = ids == placeholder
        embeds = model.get_input_embeddings()(ids.masked_fill(slots, 0))
        counts = slots.sum(dim=1).tolist()
        if any(counts):
            feats = features[[rows[i] for i in batch.indices]].to(embeds.device, torch.float32)
            out = ctx.connector(feats).to(embeds.dtype)
            embeds[slots] = torch.cat([out[r, :c] for r, c in enumerate(counts) if c])
        return {"inputs_embeds": embeds}

    return inputs

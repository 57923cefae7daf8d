"""Row-norm statistics of trained rows, per modality range, against the base's text rows.

What a researcher looks at before trusting a checkpoint: are the new rows on the same scale as
the text rows (a range whose norms are 10x the text rows' dominates the softmax), are any rows
dead (all zero), broken (NaN/Inf) or never trained (still equal to the initial row), and how much
did each range move since the previous checkpoint.

The base's text rows are read from its safetensors shards with `safe_open(...).get_slice`, so
only rows ``[0, text_vocab_size)`` of the two matrices are read, never the whole model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from registry.errors import InvalidInput
from registry.row_health import row_health
from registry.token_space import TokenSpace

__all__ = ["norm_stats", "checkpoint_row_stats", "read_base_text_rows", "connector_stats", "STAT_KEYS"]

STAT_KEYS = ("count", "mean", "std", "min", "p5", "p50", "p95", "max", "zero_rows", "nonfinite_rows", "unchanged_rows")
_CHUNK = 8192
_EMBED_NAMES = (
    "model.embed_tokens.weight",
    "model.language_model.embed_tokens.weight",
    "embed_tokens.weight",
    "transformer.wte.weight",
)
_HEAD_NAMES = ("lm_head.weight",)


def _row_norms(rows: torch.Tensor) -> torch.Tensor:
    """L2 norm of each row in float32, in chunks (a bf16 32k x 4096 block never doubles in memory)."""
    return torch.cat([c.float().norm(dim=1) for c in torch.split(rows, _CHUNK)]) if len(rows) else torch.zeros(0)


def norm_stats(rows: torch.Tensor, init_row: torch.Tensor | None = None) -> dict[str, Any]:
    """count, mean, std, min, p5, p50, p95, max of row L2 norms over the finite rows, and how many
    rows are all zero, non-finite, or unchanged from ``init_row`` (None when unknown)."""
    finite = torch.isfinite(rows).all(dim=1)
    norms = _row_norms(rows[finite]) if bool(finite.any()) else torch.zeros(0)
    out: dict[str, Any] = {"count": int(rows.shape[0])}
    if len(norms):
        q = torch.quantile(norms.double(), torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)).tolist()
        out.update(
            mean=float(norms.mean()),
            std=float(norms.std(unbiased=False)),
            min=float(norms.min()),
            p5=q[0],
            p50=q[1],
            p95=q[2],
            max=float(norms.max()),
        )
    else:
        out.update({k: None for k in ("mean", "std", "min", "p5", "p50", "p95", "max")})
    out["zero_rows"] = int((rows == 0).all(dim=1).sum())
    out["nonfinite_rows"] = int((~finite).sum())
    if init_row is not None:
        init = init_row.to(rows.dtype).float()
        unchanged = (
            torch.cat(
                [
                    (c.float() - init).abs().amax(dim=1) <= 1e-6 * max(1.0, float(init.abs().max()))
                    for c in torch.split(rows, _CHUNK)
                ]
            )
            if len(rows)
            else torch.zeros(0, dtype=torch.bool)
        )
        out["unchanged_rows"] = int(unchanged.sum())
    else:
        out["unchanged_rows"] = None
    return out


def _drift(cur: torch.Tensor, prev: torch.Tensor) -> dict[str, float]:
    """Mean per-row cosine similarity and mean change of the row norm (current − previous)."""
    c, p = cur.float(), prev.float()
    cos = torch.nn.functional.cosine_similarity(c, p, dim=1, eps=1e-12)
    return {
        "mean_cosine": float(cos.mean()),
        "mean_norm_change": float((c.norm(dim=1) - p.norm(dim=1)).mean()),
        "mean_update_norm": float((c - p).norm(dim=1).mean()),
    }


def _weights_files(model_dir: Path) -> tuple[dict[str, Path], bool]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        mapping = json.loads(index.read_text()).get("weight_map", {})
        return {k: model_dir / v for k, v in mapping.items()}, True
    single = model_dir / "model.safetensors"
    if single.exists():
        from safetensors import safe_open

        with safe_open(str(single), "pt") as f:
            return {k: single for k in f.keys()}, True
    return {}, False


def read_base_text_rows(model_dir: str | Path, text_vocab_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows ``[0, text_vocab_size)`` of the base's input embedding and lm_head (None when tied),
    read as slices from the safetensors shards."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    where, ok = _weights_files(model_dir)
    if not ok:
        raise InvalidInput("has no model.safetensors(.index.json); cannot read base text rows", path=model_dir)
    embed_name = next((n for n in _EMBED_NAMES if n in where), None)
    if embed_name is None:
        raise InvalidInput("safetensors shards have no input-embedding matrix", path=model_dir)
    head_name = next((n for n in _HEAD_NAMES if n in where), None)

    def read(name: str) -> torch.Tensor:
        with safe_open(str(where[name]), "pt") as f:
            sl = f.get_slice(name)
            rows = min(text_vocab_size, sl.get_shape()[0])
            return sl[0:rows]

    return read(embed_name), (read(head_name) if head_name else None)


def _range_rows(t: torch.Tensor, row_start: int, lo: int, hi: int) -> torch.Tensor:
    a, b = max(lo, row_start) - row_start, min(hi, row_start + len(t)) - row_start
    return t[a:b] if b > a else t[0:0]


def checkpoint_row_stats(
    embed: torch.Tensor,
    lm_head: torch.Tensor | None,
    row_start: int,
    token_space: TokenSpace,
    *,
    step: int | None = None,
    base_dir: str | Path | None = None,
    previous: tuple[int | None, torch.Tensor, torch.Tensor | None] | None = None,
    bins: int = 40,
) -> dict[str, Any]:
    """The row-statistics document stored in the registry and logged to MLflow (README "Row statistics")."""
    matrices = {"embed": embed, "lm_head": lm_head if lm_head is not None else embed}
    base = None
    init: dict[str, torch.Tensor | None] = {"embed": None, "lm_head": None}
    if base_dir is not None:
        b_embed, b_head = read_base_text_rows(base_dir, token_space.text_vocab_size)
        base = {"embed": b_embed, "lm_head": b_head if b_head is not None else b_embed}
        # evalboard initialises new rows to the mean text row (evaluator/rows.py): "unchanged" = still that.
        init = {k: v.float().mean(dim=0) for k, v in base.items()}
    ranges: dict[str, Any] = {}
    for r in sorted(token_space.modalities, key=lambda r: r.start):
        ranges[r.name] = {
            m: norm_stats(_range_rows(t, row_start, r.start, r.end), init[m]) for m, t in matrices.items()
        }
    doc: dict[str, Any] = {
        "step": step,
        "tied": lm_head is None,
        "ranges": ranges,
        "base_text": {m: norm_stats(t) for m, t in base.items()} if base else None,
        "drift": None,
    }
    if previous is not None:
        prev_step, p_embed, p_head = previous
        prev = {"embed": p_embed, "lm_head": p_head if p_head is not None else p_embed}
        if all(prev[m].shape == matrices[m].shape for m in matrices):
            doc["drift"] = {
                "previous_step": prev_step,
                "ranges": {
                    r.name: {
                        m: _drift(
                            _range_rows(matrices[m], row_start, r.start, r.end),
                            _range_rows(prev[m], row_start, r.start, r.end),
                        )
                        for m in matrices
                    }
                    for r in token_space.modalities
                },
            }
    doc["histograms"] = _histograms(matrices, base, ranges, row_start, token_space, bins)
    # The verdict on the checkpoint's own rows (the base's are context): what `evalboard stats`
    # prints and the dashboard shows, from the same rule (`registry.row_health`).
    doc["health"] = row_health(doc).to_dict()
    return doc


def _histograms(matrices, base, ranges, row_start, token_space, bins) -> dict[str, Any]:
    series: dict[str, torch.Tensor] = {}
    for r in token_space.modalities:
        for m, t in matrices.items():
            rows = _range_rows(t, row_start, r.start, r.end)
            rows = rows[torch.isfinite(rows).all(dim=1)]
            series[f"{r.name}/{m}"] = _row_norms(rows)
    if base:
        for m, t in base.items():
            series[f"base_text/{m}"] = _row_norms(t)
    values = [s for s in series.values() if len(s)]
    if not values:
        return {"edges": [], "counts": {}}
    lo = min(float(s.min()) for s in values)
    hi = max(float(s.max()) for s in values)
    if hi <= lo:
        hi = lo + 1e-6
    edges = torch.linspace(lo, hi, bins + 1)
    counts = {
        k: torch.histc(s, bins=bins, min=lo, max=hi).long().tolist() if len(s) else [0] * bins
        for k, s in series.items()
    }
    return {"edges": [float(e) for e in edges], "counts": counts}


def connector_stats(
    state: Mapping[str, torch.Tensor],
    *,
    step: int | None = None,
    previous: tuple[int | None, Mapping[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """Per-module parameter norms of a connector, and their drift against the previous checkpoint.

    ``modules[m]``: ``params`` (count), ``norm`` (L2 norm of all its parameters together),
    ``rms`` (norm / sqrt(params)), ``max_abs``, ``nonfinite`` (parameters that are NaN/Inf), and per
    tensor its norm. ``drift.modules[m]``: ``update_norm`` (L2 norm of the change), ``relative_update``
    (update / previous norm), ``cosine`` (between the flattened parameter vectors)."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for k, t in state.items():
        groups.setdefault(k.split(".", 1)[0], {})[k] = t
    modules: dict[str, Any] = {}
    for m, params in sorted(groups.items()):
        flat = torch.cat([t.detach().float().reshape(-1) for t in params.values()]) if params else torch.zeros(0)
        finite = torch.isfinite(flat)
        clean = flat[finite]
        norm = float(clean.norm()) if len(clean) else 0.0
        modules[m] = {
            "params": int(flat.numel()),
            "norm": norm,
            "rms": norm / math.sqrt(max(1, int(clean.numel()))),
            "max_abs": float(clean.abs().max()) if len(clean) else None,
            "nonfinite": int((~finite).sum()),
            "tensors": {
                k: {"shape": list(t.shape), "norm": float(t.detach().float().nan_to_num().norm())}
                for k, t in sorted(params.items())
            },
        }
    doc: dict[str, Any] = {"kind": "connector", "step": step, "modules": modules, "drift": None}
    if previous is not None:
        prev_step, prev_state = previous
        drift: dict[str, Any] = {}
        for m, params in sorted(groups.items()):
            keys = sorted(params)
            if not all(k in prev_state and prev_state[k].shape == params[k].shape for k in keys):
                continue
            cur = torch.cat([params[k].detach().float().reshape(-1) for k in keys]).nan_to_num()
            old = torch.cat([prev_state[k].detach().float().reshape(-1) for k in keys]).nan_to_num()
            update = float((cur - old).norm())
            drift[m] = {
                "update_norm": update,
                "relative_update": update / max(float(old.norm()), 1e-12),
                "cosine": float(torch.nn.functional.cosine_similarity(cur, old, dim=0, eps=1e-12)),
            }
        doc["drift"] = {"previous_step": prev_step, "modules": drift}
    return doc

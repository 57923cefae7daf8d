"""Rebuilding a vision connector from its state dict: builders named ``"package.module:function"``.

The connector's module code belongs to the user's training code, so evalboard never guesses it:
a *builder* takes ``(state_dict, metadata)`` and returns an ``nn.Module`` mapping vision features
``[batch, patches, tower_width]`` to LLM input embeddings ``[batch, tokens, llm_width]``.

Code runs only when a person chose it (`choose_builder`, the one place that decides): first the
user's explicit choice (``--connector-builder`` on eval / enqueue / worker), then the configuration
(per run, then ``"*"``; `Settings.connector_builders`), then the builder the checkpoint names, but
only when it is a reference builder below or the user listed it as trusted
(`Settings.trusted_builders`); then the layout's reference builder (LLaVA folders). A builder named
only by a file is otherwise refused, before anything is imported.

Two reference builders infer every dimension from the weights:

- `perceiver_resampler`: learned queries cross-attend over the features (one
  ``nn.MultiheadAttention``), then an MLP projector (``Linear, GELU, Linear, ...``). Keys
  ``resampler.queries``, ``resampler.attn.*``, ``projector.<i>.*``; the number of attention heads is
  the one thing weights cannot tell, so the metadata must say it (``num_heads``).
- `llava_projector`: LLaVA's ``mm_projector`` (``linear`` or ``mlp<N>x_gelu``), one embedding per patch;
  without ``mm_projector_type``, LLaVA's weights (``mm_projector.*``) are ``linear``, as LLaVA's
  ``build_vision_projector`` defaults it.

Weights are loaded strictly: missing or unexpected keys are an error that lists them.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from registry.errors import Incompatible, InvalidInput
from registry.settings import CONFIG_NAME, HOME_NAME, TRUSTED_KEY, Settings

__all__ = [
    "PerceiverConnector",
    "ProjectorConnector",
    "perceiver_resampler",
    "llava_projector",
    "load_builder",
    "build_connector",
    "choose_builder",
    "BuilderChoice",
    "REFERENCE_BUILDERS",
    "LAYOUT_BUILDERS",
    "layout_builder",
]

REFERENCE_BUILDERS = ("evaluator.connectors:perceiver_resampler", "evaluator.connectors:llava_projector")
LAYOUT_BUILDERS = {"llava": "evaluator.connectors:llava_projector"}
"""The reference builder of a checkpoint layout that implies its model (LLaVA's projector types):
the catalogue records the layout (``ConnectorCheckpoint.layout``); which code builds it is ours."""


def layout_builder(layout: str | None) -> str | None:
    """The builder a checkpoint layout implies, or None (an evalboard ``.pt`` implies none)."""
    return LAYOUT_BUILDERS.get(layout or "")


_HEAD_KEYS = ("num_heads", "n_heads", "resampler_heads", "resampler_num_heads", "attn_heads")


def _mlp(widths: list[int]) -> nn.Sequential:
    """``Linear(w0, w1), GELU, Linear(w1, w2), ...``: indices 0, 2, 4 hold the linear layers."""
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        if i:
            layers.append(nn.GELU())
        layers.append(nn.Linear(widths[i], widths[i + 1]))
    return nn.Sequential(*layers)


def _mlp_widths(state: Mapping[str, torch.Tensor], prefix: str, where: str) -> list[int]:
    """Layer widths of an MLP saved as ``<prefix>.<i>.weight`` (or a single ``<prefix>.weight``)."""
    if f"{prefix}.weight" in state:
        w = state[f"{prefix}.weight"]
        return [int(w.shape[1]), int(w.shape[0])]
    found = sorted(
        (int(m.group(1)), k) for k in state if (m := re.fullmatch(re.escape(prefix) + r"\.(\d+)\.weight", k))
    )
    if not found:
        raise InvalidInput(f"has no {prefix}.<i>.weight tensors to build the projector from", path=where)
    if found[0][0] != 0:
        raise InvalidInput(
            f"{prefix} layers start at index {found[0][0]}; the reference builders expect Linear "
            "layers at 0, 2, 4, ... with GELU between (name another builder)",
            path=where,
        )
    chain = []
    for j, (i, k) in enumerate(found):
        if i != 2 * j:
            break  # further keys are left for the strict load to name
        chain.append(k)
    weights = [state[k] for k in chain]
    widths = [int(weights[0].shape[1])]
    for w in weights:
        if w.dim() != 2 or int(w.shape[1]) != widths[-1]:
            raise InvalidInput(f"{prefix} layer widths do not chain: {[tuple(x.shape) for x in weights]}", path=where)
        widths.append(int(w.shape[0]))
    return widths


class _Resampler(nn.Module):
    """Learned queries and the attention that pools the vision features onto them."""

    def __init__(self, vision_dim: int, n_queries: int, num_heads: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(n_queries, vision_dim) * 0.02)
        self.attn = nn.MultiheadAttention(vision_dim, num_heads=num_heads, batch_first=True)


class PerceiverConnector(nn.Module):
    """Learned queries attend over the vision features (the resampler), then an MLP projects each
    query to the LLM's width: ``[B, patches, vision_dim] -> [B, n_queries, llm_dim]``."""

    def __init__(
        self, vision_dim: int, llm_dim: int, n_queries: int, num_heads: int, projector_widths: list[int] | None = None
    ):
        super().__init__()
        if vision_dim % num_heads:
            raise Incompatible(f"vision width {vision_dim} is not divisible by num_heads={num_heads}")
        self.resampler = _Resampler(vision_dim, n_queries, num_heads)
        self.projector = _mlp(projector_widths or [vision_dim, llm_dim, llm_dim])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        q = self.resampler.queries.to(features.dtype).expand(features.shape[0], -1, -1)
        pooled, _ = self.resampler.attn(q, features, features, need_weights=False)
        return self.projector(pooled)


class ProjectorConnector(nn.Module):
    """One embedding per vision patch: ``mm_projector`` (LLaVA) or ``projector`` is an MLP."""

    def __init__(self, widths: list[int], attribute: str = "mm_projector", single: bool = False):
        super().__init__()
        self._attribute = attribute
        setattr(self, attribute, nn.Linear(widths[0], widths[1]) if single else _mlp(widths))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return getattr(self, self._attribute)(features)


def perceiver_resampler(state: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> nn.Module:
    """Reference builder: `PerceiverConnector` with every width read off ``state``."""
    where = str(meta.get("_path", "connector"))
    queries = state.get("resampler.queries")
    if queries is None or queries.dim() != 2:
        raise InvalidInput(
            "has no 2-D resampler.queries tensor [n_queries, vision_dim] (perceiver_resampler)", path=where
        )
    heads = next((meta[k] for k in _HEAD_KEYS if k in meta), None)
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise InvalidInput(
            "the resampler's number of attention heads cannot be read off the weights; record it as "
            f"num_heads in the checkpoint's config (got {heads!r})",
            path=where,
        )
    widths = _mlp_widths(state, "projector", where)
    n_queries, vision_dim = (int(x) for x in queries.shape)
    if widths[0] != vision_dim:
        raise InvalidInput(
            f"projector takes {widths[0]}-wide inputs but the resampler's queries are {vision_dim} wide", path=where
        )
    return PerceiverConnector(vision_dim, widths[-1], n_queries, heads, widths)


def llava_projector(state: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> nn.Module:
    """Reference builder for LLaVA's ``mm_projector`` (``linear`` or ``mlp<N>x_gelu``)."""
    where = str(meta.get("_path", "connector"))
    attribute = "mm_projector" if any(k.startswith("mm_projector.") for k in state) else "projector"
    kind = meta.get("mm_projector_type")
    if kind is None and attribute == "mm_projector":
        kind = "linear"  # LLaVA's build_vision_projector: getattr(config, 'mm_projector_type', 'linear')
    single = f"{attribute}.weight" in state
    widths = _mlp_widths(state, attribute, where)
    if kind is not None:
        m = re.fullmatch(r"mlp(\d+)x_gelu", str(kind))
        if kind == "linear":
            if not single:
                raise InvalidInput(
                    f"mm_projector_type is 'linear' but the weights hold {len(widths) - 1} layers", path=where
                )
        elif m is None:
            raise InvalidInput(
                f"mm_projector_type {kind!r} is not one llava_projector builds (linear, mlp<N>x_gelu); "
                "name a connector builder for it",
                path=where,
            )
        elif int(m.group(1)) != len(widths) - 1:
            raise InvalidInput(
                f"mm_projector_type {kind!r} says {m.group(1)} layers, the weights hold {len(widths) - 1}", path=where
            )
    return ProjectorConnector(widths, attribute, single)


@dataclass(frozen=True)
class BuilderChoice:
    """Which builder rebuilds a connector, and who chose it (said in logs and errors)."""

    spec: str
    """``package.module:function``."""
    source: str
    """"--connector-builder", "configuration", "checkpoint (reference builder)",
    "checkpoint (trusted)" or "layout default"."""


def choose_builder(
    *,
    chosen: str | None,
    settings: Settings,
    run_name: str | None,
    hinted: str | None,
    default: str | None,
    where: str | Path,
) -> BuilderChoice:
    """The builder to run for one connector checkpoint, deciding on names only (nothing imported).

    ``chosen``: the user's explicit choice (flag, job option); ``hinted``: the name the checkpoint
    file gives; ``default``: its layout's reference builder. A hint that is neither a reference
    builder nor trusted by the user is refused in one line that says how to trust it."""
    if chosen:
        return BuilderChoice(chosen, "--connector-builder")
    configured = settings.connector_builder_for(run_name)
    if configured:
        return BuilderChoice(configured, "configuration")
    if hinted:
        if hinted in REFERENCE_BUILDERS:
            return BuilderChoice(hinted, "checkpoint (reference builder)")
        if settings.trusts_builder(hinted):
            return BuilderChoice(hinted, "checkpoint (trusted)")
        raise InvalidInput(
            f"names connector builder {hinted!r}, which you have not trusted: evalboard runs code a "
            f"checkpoint names only when you list it (add it to [connector_builders] {TRUSTED_KEY} = "
            f'["{hinted}"] in {HOME_NAME}/{CONFIG_NAME}, or to EVALBOARD_TRUSTED_BUILDERS), or choose '
            "a builder yourself with --connector-builder / EVALBOARD_CONNECTOR_BUILDER",
            path=where,
        )
    if default:
        return BuilderChoice(default, "layout default")
    raise InvalidInput(
        "names no connector builder: pass --connector-builder, set EVALBOARD_CONNECTOR_BUILDER or "
        f"[connector_builders] in {HOME_NAME}/{CONFIG_NAME} (per run or for all) "
        f"(reference builders: {', '.join(REFERENCE_BUILDERS)})",
        path=where,
    )


def _first_line(e: BaseException) -> str:
    text = str(e)
    return text.splitlines()[0][:300] if text else ""


def load_builder(spec: str) -> Callable[..., nn.Module]:
    """Import ``package.module:function``; a clear error when it does not import or is not callable.
    Whatever the import raises (``SystemExit`` and ``KeyboardInterrupt`` included) becomes that error,
    so a builder cannot end the process that evaluates it."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidInput(f"connector builder {spec!r} must be 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except BaseException as e:  # noqa: BLE001 - user code: any import failure is reported, not raised as is
        raise InvalidInput(
            f"connector builder {spec!r} does not import: {type(e).__name__}: {_first_line(e)}"
        ) from None
    fn: Any = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise InvalidInput(f"connector builder {spec!r}: module {module_name} has no {attr!r}")
    if not callable(fn):
        raise InvalidInput(f"connector builder {spec!r} is not callable")
    return fn


def build_connector(
    spec: str, state: Mapping[str, torch.Tensor], meta: Mapping[str, Any], where: str | Path
) -> nn.Module:
    """Build with ``spec`` and load ``state`` strictly; eval mode, no gradients."""
    try:
        fn = load_builder(spec)
    except InvalidInput as e:
        raise InvalidInput(str(e), path=where) from None
    try:
        module = fn(dict(state), {**dict(meta), "_path": str(where)})
    except (InvalidInput, Incompatible) as e:
        message = str(e).removeprefix(f"{e.path}: ") if e.path else str(e)
        raise type(e)(f"connector builder {spec}: {message}", path=where) from None
    except BaseException as e:  # noqa: BLE001 - user code: SystemExit / KeyboardInterrupt fail the job too
        raise InvalidInput(
            f"connector builder {spec} failed: {type(e).__name__}: {_first_line(e)}", path=where
        ) from None
    if not isinstance(module, nn.Module):
        raise InvalidInput(
            f"connector builder {spec} returned a {type(module).__name__}, not a torch.nn.Module", path=where
        )
    expected = set(module.state_dict())
    given = set(state)
    missing, unexpected = sorted(expected - given), sorted(given - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise InvalidInput(f"connector weights do not fit the module built by {spec}: " + "; ".join(parts), path=where)
    try:
        module.load_state_dict(dict(state), strict=True)
    except RuntimeError as e:
        shapes = re.findall(
            r"size mismatch for ([^:]+): copying a param with shape (torch.Size\([^)]*\)) from "
            r"checkpoint, the shape in current model is (torch.Size\([^)]*\))",
            str(e),
        )
        detail = "; ".join(f"{k}: file {a}, module {b}" for k, a, b in shapes[:3]) or str(e).splitlines()[0]
        raise InvalidInput(f"connector weights do not fit the module built by {spec}: {detail}", path=where) from None
    module.eval()
    module.requires_grad_(False)
    return module


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return f"[{shown}{f', ... ({len(keys)} in all)' if len(keys) > n else ''}]"

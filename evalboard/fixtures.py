"""Build tiny but real things: a Qwen3 base, token spaces, Track A/B checkpoints, eval sets.

Tests, benchmarks and the demo all use these, so every file written here is in the exact format
a real training run writes (see README "Formats"), only small.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.atomic import atomic_file, write_file
from registry.eval_result import EvalResult, eval_filename
from registry.evalset import IGNORE_INDEX, EvalSet, Example, write_evalset
from registry.token_space import ModalityRange, TokenSpace

__all__ = [
    "TinyBaseSpec",
    "build_tiny_base",
    "make_token_space",
    "write_trainable_rows",
    "write_connector_checkpoint",
    "TinyTowerSpec",
    "build_tiny_vision_tower",
    "synthetic_image",
    "image_examples",
    "make_image_evalset",
    "synthetic_examples",
    "make_evalset",
    "build_workspace",
    "Workspace",
]


@dataclass(frozen=True)
class TinyBaseSpec:
    """A Qwen3 small enough to run a forward pass in milliseconds on a CPU."""

    text_vocab_size: int = 256
    embedding_rows: int | None = None  # > text_vocab_size mimics Qwen's padded matrix
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    intermediate_size: int = 128
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    output_scale: float = 1.0
    """Multiplies the final norm's weight. With random weights (std 0.02) logits are tiny and the
    softmax is nearly flat whatever the input; a larger scale lets a frozen random base make
    confident predictions, so training only new rows can visibly lower the loss (the demo)."""


def build_tiny_base(out_dir: str | Path, spec: TinyBaseSpec = TinyBaseSpec(), *, seed: int = 0) -> Path:
    """Random-weight Qwen3ForCausalLM saved with ``save_pretrained`` (safetensors)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=spec.embedding_rows or spec.text_vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = Qwen3ForCausalLM(config).to(torch.float32).eval()
    if spec.output_scale != 1.0:
        with torch.no_grad():
            model.model.norm.weight.mul_(spec.output_scale)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    return out


def make_token_space(
    text_vocab_size: int = 256,
    *,
    audio: int = 64,
    image: int = 64,
    image_first: bool = False,
    audio_codec: tuple[str, str] = ("encodec_24khz", "1.0"),
    image_codec: tuple[str, str] = ("vqgan_f16", "2.1"),
    tokenizer: tuple[str, str] = ("Qwen/Qwen3-8B-Base", "2025.04"),
    pad_token_id: int = 0,
    gap: int = 0,
) -> TokenSpace:
    """Text rows, then an audio range and an image range (``gap`` unused rows between them)."""
    order = (
        [("image", image, image_codec), ("audio", audio, audio_codec)]
        if image_first
        else [("audio", audio, audio_codec), ("image", image, image_codec)]
    )
    start = text_vocab_size
    ranges = []
    for name, size, (codec, version) in order:
        ranges.append(ModalityRange(name, start, start + size, codec, version))
        start += size + gap
    total = start - gap
    return TokenSpace(
        text_vocab_size=text_vocab_size,
        vocab_size_total=total,
        modalities=tuple(ranges),
        special_tokens={"pad": pad_token_id},
        pad_token_id=pad_token_id,
        tokenizer_name=tokenizer[0],
        tokenizer_version=tokenizer[1],
    )


def write_trainable_rows(
    ckpt_dir: str | Path,
    token_space: TokenSpace,
    *,
    base_model: str,
    hidden_size: int,
    step: int | None = None,
    seed: int = 0,
    scale: float = 0.02,
    rows: Any = None,
    lm_head_rows: Any = None,
    fmt: str = "pt",
    embed_key: str = "embed_tokens",
    lm_head_key: str | None = "lm_head",
    ship_token_space: bool = True,
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """A Track B ``checkpoint_<step>/`` folder with rows ``[text_vocab_size, vocab_size_total)``."""
    import torch

    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    start, end = token_space.text_vocab_size, token_space.vocab_size_total
    g = torch.Generator().manual_seed(seed)
    embed = rows if rows is not None else torch.randn(end - start, hidden_size, generator=g) * scale
    head = lm_head_rows if lm_head_rows is not None else torch.randn(end - start, hidden_size, generator=g) * scale
    tensors = {embed_key: embed.contiguous()}
    if lm_head_key is not None:
        tensors[lm_head_key] = head.contiguous()
    if fmt == "safetensors":
        from safetensors.torch import save

        write_file(d / "trainable_rows.safetensors", save(tensors))
    else:
        with atomic_file(d / "trainable_rows.pt") as fh:
            torch.save(tensors, fh)
    meta = {
        "base_model": base_model,
        "row_start": start,
        "row_end": end,
        "hidden_size": hidden_size,
        "dtype": str(embed.dtype).removeprefix("torch."),
    }
    if step is not None:
        meta["step"] = step
    if lm_head_key is None:
        meta["tie_word_embeddings"] = True
    meta.update(extra_meta or {})
    write_file(d / "trainable_rows.json", json.dumps(meta, indent=2) + "\n")
    if ship_token_space:
        token_space.save(d / "token_space.json")
    return d


PERCEIVER_BUILDER = "evaluator.connectors:perceiver_resampler"


def write_connector_checkpoint(
    path: str | Path,
    *,
    step: int,
    vision_dim: int = 32,
    llm_dim: int = 64,
    n_queries: int = 8,
    num_heads: int = 4,
    base_llm: str = "demo/Qwen3-tiny-Base",
    vision_tower: str = "demo/vit-tiny",
    with_optimizer: bool = True,
    seed: int = 0,
    state: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """A Track A ``checkpoint_<step>.pt``: resampler + projector weights (the reference
    `PerceiverConnector`'s, unless ``state`` is given), pointers, and the settings that rebuild it
    (``connector_builder``, ``num_heads``)."""
    import torch

    from evaluator.connectors import PerceiverConnector

    if state is None:
        torch.manual_seed(seed)
        module = PerceiverConnector(vision_dim, llm_dim, n_queries, num_heads)
        with torch.no_grad():
            for p in module.parameters():  # not the default init: distinct checkpoints differ everywhere
                p.normal_(0, 0.05)
        state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    cfg = {
        "n_queries": n_queries,
        "vision_dim": vision_dim,
        "llm_dim": llm_dim,
        "num_heads": num_heads,
        "connector_builder": PERCEIVER_BUILDER,
    }
    cfg.update(config or {})
    obj: dict[str, Any] = {
        "step": step,
        "connector": state,
        "base_llm": base_llm,
        "vision_tower": vision_tower,
        "config": cfg,
    }
    if with_optimizer:
        obj["optimizer"] = {
            "state": {i: {"exp_avg": torch.zeros_like(t)} for i, t in enumerate(state.values())},
            "param_groups": [{"lr": 1e-4, "params": list(range(len(state)))}],
        }
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(p) as fh:
        torch.save(obj, fh)
    return p


@dataclass(frozen=True)
class TinyTowerSpec:
    """A vision tower small enough to run in milliseconds on a CPU (SigLIP, or CLIP with a CLS token)."""

    kind: str = "siglip"
    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 64
    image_size: int = 32
    patch_size: int = 8


def build_tiny_vision_tower(out_dir: str | Path, spec: TinyTowerSpec = TinyTowerSpec(), *, seed: int = 0) -> Path:
    """Random-weight SigLIP (or CLIP) vision model + its image processor, ``save_pretrained``."""
    import torch
    import transformers

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    torch.manual_seed(seed)
    common = dict(
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        num_channels=3,
    )
    size = {"height": spec.image_size, "width": spec.image_size}
    if spec.kind == "siglip":
        model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**common))
        processor_cls = getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
        processor = processor_cls(size=size)
    elif spec.kind == "clip":
        model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(projection_dim=spec.hidden_size, **common))
        processor_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
        processor = processor_cls(
            size={"shortest_edge": spec.image_size}, crop_size={"height": spec.image_size, "width": spec.image_size}
        )
    else:
        raise ValueError(f"unknown tower kind {spec.kind!r}; known: siglip, clip")
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


def synthetic_image(label: int, *, size: int = 32, seed: int = 0, noise: float = 0.15) -> bytes:
    """A PNG whose pattern encodes ``label`` (a class colour and stripe frequency) plus noise."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = np.random.default_rng(1000 + label).uniform(0.1, 0.9, size=3)
    y, x = np.mgrid[0:size, 0:size] / size
    stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (label % 4 + 1) * (x if label % 2 else y))
    img = base[None, None, :] * (0.6 + 0.4 * stripes[..., None]) + noise * rng.standard_normal((size, size, 3))
    buf = io.BytesIO()
    Image.fromarray((np.clip(img, 0, 1) * 255).astype("uint8")).save(buf, format="PNG")
    return buf.getvalue()


def image_examples(
    n: int,
    *,
    n_classes: int = 8,
    answer_len: int = 4,
    text_vocab: int = 256,
    seed: int = 0,
    image_size: int = 32,
    task: str = "i2t",
    placeholder: int = -200,
) -> list[Example]:
    """i2t examples: ``[BOS, <image>, SEP, answer...]``; the answer is the image's class's fixed text."""
    rng = random.Random(seed)
    ans_rng = random.Random(12345)
    hi = min(text_vocab, 200)
    answers = [[ans_rng.randrange(3, hi) for _ in range(answer_len)] for _ in range(n_classes)]
    out = []
    for i in range(n):
        c = rng.randrange(n_classes)
        ids = [1, placeholder, 2, *answers[c]]
        labels = [IGNORE_INDEX] * (len(ids) - answer_len) + answers[c]
        out.append(
            Example(
                f"{task}-{seed}-{i:05d}",
                task,
                ids,
                labels,
                synthetic_image(c, size=image_size, seed=seed * 100_000 + i),
            )
        )
    return out


def make_image_evalset(
    out_dir: str | Path, name: str, *, tower: str, tower_dir: str | Path, n: int = 12, seed: int = 7, **kw: Any
) -> EvalSet:
    """An image eval set for ``tower`` (its preprocessing recorded in the manifest)."""
    from registry.vision import read_tower_preprocessing

    pre = read_tower_preprocessing(tower_dir) or {}
    return write_evalset(
        out_dir,
        name,
        image_examples(n, seed=seed, **kw),
        None,
        vision={"tower": tower, "preprocessing": pre},
        description="synthetic image -> text answers",
    )


def synthetic_examples(
    token_space: TokenSpace,
    *,
    n_per_task: int = 8,
    prefix_len: tuple[int, int] = (12, 40),
    answer_len: tuple[int, int] = (3, 8),
    seed: int = 0,
    text_ids: tuple[int, int] | None = None,
) -> list[Example]:
    """a2t / i2t examples: modality tokens, a separator, then scored text tokens.

    The answer is a deterministic function of the modality tokens (so a model can learn it):
    each answer token is ``text_lo + (modality token offset * 7 + i) % n_text``.
    """
    rng = random.Random(seed)
    lo, hi = text_ids or (3, min(token_space.text_vocab_size, 3 + 200))
    n_text = hi - lo
    out: list[Example] = []
    for task, modality in (("a2t", "audio"), ("i2t", "image")):
        r = token_space.modality(modality)
        if r is None:
            continue
        for i in range(n_per_task):
            k = rng.randint(*prefix_len)
            prefix = [rng.randrange(r.start, r.end) for _ in range(k)]
            m = rng.randint(*answer_len)
            answer = [lo + ((prefix[j % k] - r.start) * 7 + j) % n_text for j in range(m)]
            ids = [1, *prefix, 2, *answer]
            labels = [IGNORE_INDEX] * (len(ids) - m) + answer
            out.append(Example(f"{task}-{i:04d}", task, ids, labels))
    return out


def make_evalset(out_dir: str | Path, name: str, token_space: TokenSpace, **kw: Any) -> EvalSet:
    return write_evalset(out_dir, name, synthetic_examples(token_space, **kw), token_space)


@dataclass
class Workspace:
    root: Path
    base_dir: Path
    base_model: str
    token_space: TokenSpace
    other_token_space: TokenSpace
    runs: dict[str, Path] = field(default_factory=dict)
    checkpoints: dict[str, list[Path]] = field(default_factory=dict)
    evalsets: dict[str, Path] = field(default_factory=dict)
    broken: list[Path] = field(default_factory=list)


def build_workspace(
    root: str | Path,
    *,
    base_model: str = "demo/Qwen3-tiny-Base",
    spec: TinyBaseSpec = TinyBaseSpec(),
    steps: Sequence[int] = (100, 200, 300),
    with_broken: bool = True,
    with_track_a: bool = True,
    with_eval_json: bool = True,
) -> Workspace:
    """The standard tree: two Track B runs (the second in a token space with a different image
    range), one Track A run, an eval set, and (optionally) a broken checkpoint."""
    root = Path(root)
    base_dir = build_tiny_base(root / "models" / "tiny-qwen3", spec)
    ts = make_token_space(spec.text_vocab_size)
    other = make_token_space(spec.text_vocab_size, image=96)  # a different image range
    ws = Workspace(root, base_dir, base_model, ts, other)
    outputs = root / "outputs"
    for run, space, seed in (("stage3_token_lm_iter5", ts, 1), ("stage3_token_lm_wide_image", other, 2)):
        run_dir = outputs / run
        run_dir.mkdir(parents=True, exist_ok=True)
        space.save(run_dir / "token_space.json")
        ws.runs[run] = run_dir
        ws.checkpoints[run] = []
        for i, step in enumerate(steps):
            ck = write_trainable_rows(
                run_dir / f"checkpoint_{step}",
                space,
                base_model=base_model,
                hidden_size=spec.hidden_size,
                step=step,
                seed=seed * 1000 + i,
            )
            ws.checkpoints[run].append(ck)
        if with_eval_json:
            EvalResult(
                step=steps[-1],
                losses={"all": 2.7462, "a2t": 2.3606, "i2t": 3.3357},
                tokens={"all": 300, "a2t": 150, "i2t": 150},
            ).save(run_dir / eval_filename(steps[-1]))
    if with_track_a:
        run_dir = outputs / "stage1_align_trial"
        ws.runs["stage1_align_trial"] = run_dir
        ws.checkpoints["stage1_align_trial"] = [
            write_connector_checkpoint(
                run_dir / f"checkpoint_{s}.pt", step=s, llm_dim=spec.hidden_size, base_llm=base_model, seed=s
            )
            for s in (1225, 2450, 3675)
        ]
    if with_broken:
        bad = outputs / "stage3_token_lm_iter5" / "checkpoint_400"
        write_trainable_rows(bad, ts, base_model=base_model, hidden_size=spec.hidden_size, step=400, seed=9)
        (bad / "trainable_rows.pt").write_bytes((bad / "trainable_rows.pt").read_bytes()[:200])  # truncated
        ws.broken.append(bad)
        ws.checkpoints["stage3_token_lm_iter5"].append(bad)
    ws.evalsets["synthetic-a2t-i2t"] = make_evalset(
        root / "evalsets" / "synthetic-a2t-i2t", "synthetic-a2t-i2t", ts
    ).path
    return ws

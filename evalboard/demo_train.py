"""Real (tiny) training for the demo: stage-3 style trainable rows, and a stage-1 style connector.

Track B: the base is frozen; only the new rows of the input embedding and of lm_head train (the
text rows get zero gradient, so Adam never moves them). The task is learnable from the new rows
alone: an "audio" or "image" token sequence encodes a class, and the text answer is the class's
fixed answer string. A checkpoint in the seed format is saved every ``save_every`` steps.

Track A: a frozen tiny SigLIP tower encodes synthetic images whose class decides a fixed text
answer; a resampler (learned queries attending over the tower's features) and a projector feed
the frozen LLM the image; only the connector trains, and ``checkpoint_<step>.pt`` files are saved.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from evalboard.fixtures import write_connector_checkpoint, write_trainable_rows
from registry.evalset import IGNORE_INDEX, Example
from registry.token_space import TokenSpace

__all__ = ["SyntheticTask", "train_rows_run", "train_connector_run"]

BOS = 1


@dataclass(frozen=True)
class SyntheticTask:
    """Classes of modality tokens, each with a fixed text answer.

    Within a class, modality tokens follow each other in a fixed order (a seeded permutation of
    the class's token group, like a codec's frames), so the next modality token is predictable
    from the current one. Tasks:

    - ``a2t`` / ``i2t``: modality tokens, then the class's text answer (what the eval set scores);
    - ``t2a`` / ``t2i``: the text answer, then modality tokens of its class (generation).

    Training scores the modality tokens as well as the text (``score_modality=True``), so every
    new row of lm_head is a target and every new embedding row predicts its successor: the rows
    of a modality drift apart as in real training instead of staying one shared vector.
    """

    space: TokenSpace
    n_classes: int = 8
    answer_len: int = 3
    seed: int = 0

    EVAL_TASKS = ("a2t", "i2t")
    TRAIN_TASKS = ("a2t", "i2t", "t2a", "t2i")
    _MODALITY = {"a2t": "audio", "i2t": "image", "t2a": "audio", "t2i": "image"}

    def _answers(self) -> list[list[int]]:
        rng = random.Random(self.seed)
        hi = min(self.space.text_vocab_size, 200)
        return [[rng.randrange(3, hi) for _ in range(self.answer_len)] for _ in range(self.n_classes)]

    def _group(self, modality: str, c: int) -> list[int]:
        """Class `c`'s modality tokens in their sequence order (a seeded permutation)."""
        r = self.space.modality(modality)
        size = max(1, r.size // self.n_classes)
        lo = r.start + c * size
        group = list(range(lo, min(lo + size, r.end)))
        random.Random(f"{self.seed}:{modality}:{c}").shuffle(group)
        return group

    def _modality_tokens(self, rng: random.Random, modality: str, c: int, n: int) -> list[int]:
        group = self._group(modality, c)
        at = rng.randrange(len(group))
        return [group[(at + k) % len(group)] for k in range(n)]

    def examples(
        self,
        n_per_task: int,
        *,
        seed: int,
        prefix: tuple[int, int] = (10, 24),
        tasks: tuple[str, ...] = EVAL_TASKS,
        score_modality: bool = False,
    ) -> list[Example]:
        """`n_per_task` examples of each task whose modality exists in the token space. Labels
        score the text answer of a2t/i2t and the modality tokens of t2a/t2i; with
        `score_modality`, also the modality tokens of a2t/i2t after the first."""
        unknown = set(tasks) - set(self._MODALITY)
        if unknown:
            raise ValueError(f"unknown synthetic tasks {sorted(unknown)}; known: {', '.join(self._MODALITY)}")
        rng = random.Random(seed)
        answers = self._answers()
        out = []
        for task in tasks:
            modality = self._MODALITY[task]
            if self.space.modality(modality) is None:
                continue
            for i in range(n_per_task):
                c = rng.randrange(self.n_classes)
                toks = self._modality_tokens(rng, modality, c, rng.randint(*prefix))
                if task.endswith("2t"):
                    # The answer follows the modality tokens directly, as in a2t/i2t data: the last
                    # modality token's (trainable) embedding predicts the first answer token.
                    ids = [BOS, *toks, *answers[c]]
                    scored_toks = toks[1:] if score_modality else [IGNORE_INDEX] * (len(toks) - 1)
                    labels = [IGNORE_INDEX, IGNORE_INDEX, *scored_toks, *answers[c]]
                else:
                    ids = [BOS, *answers[c], *toks]
                    labels = [IGNORE_INDEX] * (1 + self.answer_len) + toks
                out.append(Example(f"{task}-{seed}-{i:05d}", task, ids, labels))
        return out


def _batches(examples: list[Example], batch_size: int, pad: int, seed: int):
    rng = random.Random(seed)
    while True:
        batch = rng.sample(examples, min(batch_size, len(examples)))
        n = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), n), pad, dtype=torch.long)
        labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, e in enumerate(batch):
            ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
            labels[i, : len(e.labels)] = torch.tensor(e.labels)
            mask[i, : len(e.input_ids)] = 1
        yield ids, mask, labels


def _load_frozen(base_dir: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model.train(False)
    model.requires_grad_(False)
    return model


def train_rows_run(
    base_dir: Path,
    run_dir: Path,
    space: TokenSpace,
    task: SyntheticTask,
    *,
    base_model: str,
    lr: float,
    steps: int,
    save_every: int,
    batch_size: int = 32,
    seed: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> list[Path]:
    """Train only the new rows on text and modality targets (`SyntheticTask.TRAIN_TASKS`); save
    ``checkpoint_<step>/`` every ``save_every`` steps, its ``trainable_rows.json`` recording the
    run's settings under ``trainer`` (what Compare's "Parameters and metadata" shows)."""
    from evaluator.rows import prepare_for_token_space

    torch.manual_seed(seed)
    model = _load_frozen(base_dir)
    prepare_for_token_space(model, space.text_vocab_size, space.vocab_size_total, space.resolved_pad_id())
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    text = space.text_vocab_size
    params = [emb] if head is emb else [emb, head]
    for p in params:
        p.requires_grad_(True)
        p.register_hook(lambda g: torch.cat([torch.zeros_like(g[:text]), g[text:]]))
    opt = torch.optim.Adam(params, lr=lr)
    run_dir.mkdir(parents=True, exist_ok=True)
    space.save(run_dir / "token_space.json")
    train = task.examples(256, seed=seed + 1000, tasks=task.TRAIN_TASKS, score_modality=True)
    settings = {
        "recipe": "evalboard demo: train_rows_run",
        "trainable": "new embedding + lm_head rows",
        "optimizer": "Adam",
        "lr": lr,
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "save_every": save_every,
        "tasks": ",".join(task.TRAIN_TASKS),
        "scored": "text + modality tokens",
        "train_examples": len(train),
        "init": "mean text row",
    }
    data = _batches(train, batch_size, space.resolved_pad_id() or 0, seed)
    saved = []
    model.train()
    for step in range(1, steps + 1):
        ids, mask, labels = next(data)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % save_every == 0:
            with torch.no_grad():
                rows = emb[text:].detach().clone()
                head_rows = head[text:].detach().clone()
            saved.append(
                write_trainable_rows(
                    run_dir / f"checkpoint_{step}",
                    space,
                    base_model=base_model,
                    hidden_size=rows.shape[1],
                    step=step,
                    rows=rows,
                    lm_head_rows=head_rows,
                    extra_meta={"trainer": settings},
                )
            )
        if on_step:
            on_step(step)
    return saved


def train_connector_run(
    base_dir: Path,
    tower_dir: Path,
    run_dir: Path,
    *,
    base_model: str,
    vision_tower: str,
    steps: int,
    save_every: int,
    lr: float = 3e-3,
    n_queries: int = 8,
    num_heads: int = 4,
    batch_size: int = 16,
    n_train: int = 256,
    seed: int = 0,
    on_step: Callable[[int], None] | None = None,
) -> list[Path]:
    """Stage-1 alignment in miniature: frozen LLM, frozen vision tower, only the connector (the
    reference Perceiver resampler + MLP projector) trains on image -> answer examples; a
    ``checkpoint_<step>.pt`` with the settings that rebuild it is saved every ``save_every`` steps."""
    from evalboard.fixtures import PERCEIVER_BUILDER, image_examples
    from evaluator.connectors import PerceiverConnector
    from evaluator.vision import load_tower

    torch.manual_seed(seed)
    model = _load_frozen(base_dir)
    tower = load_tower(tower_dir, torch.device("cpu"), torch.float32)
    settings = tower.resolve(None, None)
    train = image_examples(n_train, seed=seed + 1000, text_vocab=model.config.vocab_size)
    feats = tower.features([e.image for e in train], settings)  # the tower is frozen: once per image
    conn = PerceiverConnector(tower.hidden_size, model.config.hidden_size, n_queries, num_heads)
    opt = torch.optim.Adam(conn.parameters(), lr=lr)
    embed = model.get_input_embeddings()
    config = {
        "connector_builder": PERCEIVER_BUILDER,
        "num_heads": num_heads,
        "n_queries": n_queries,
        "vision_feature_layer": settings.feature_layer,
        "vision_drop_cls": settings.drop_cls,
        "lr": lr,
        "batch_size": batch_size,
        "steps": steps,
        "seed": seed,
    }
    g = torch.Generator().manual_seed(seed)
    saved = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(train), (batch_size,), generator=g).tolist()
        image = conn(feats[idx])
        rows, labels = [], []
        for b, i in enumerate(idx):
            ids, lab = train[i].input_ids, train[i].labels
            at = ids.index(-200)
            rows.append(torch.cat([embed(torch.tensor(ids[:at])), image[b], embed(torch.tensor(ids[at + 1 :]))]))
            labels.append(lab[:at] + [IGNORE_INDEX] * n_queries + lab[at + 1 :])
        loss = model(inputs_embeds=torch.stack(rows), labels=torch.tensor(labels)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % save_every == 0:
            saved.append(
                write_connector_checkpoint(
                    run_dir / f"checkpoint_{step}.pt",
                    step=step,
                    base_llm=base_model,
                    vision_tower=vision_tower,
                    state={k: v.detach().clone() for k, v in conn.state_dict().items()},
                    config=config,
                    n_queries=n_queries,
                    vision_dim=tower.hidden_size,
                    llm_dim=model.config.hidden_size,
                    num_heads=num_heads,
                    with_optimizer=True,
                )
            )
        if on_step:
            on_step(step)
    return saved

"""What a save costs the training process with the training callbacks (evalboard/integrations).

Per save, the callback writes the new rows (atomically, in the seed format), registers the
checkpoint and queues its evaluation; evaluation itself runs in workers. This times exactly that
work (`Publisher.save`, what `EvalboardCallback.on_save` runs) on a model whose embedding and
lm_head have the given shape, against a fresh SQLite registry, and, for scale, one training step
(forward + backward + optimizer step on a small batch) of the same model.

Prints progress to stderr and one JSON object on the last stdout line:
  {"save_s_median", "write_s_median", "registry_s_median", "save_s_max", "train_step_s_median",
   "rows_mb", "saves", "all_enqueued", ...}
"""

from __future__ import annotations

import _bench_path  # noqa: F401  (first: see benchmarks/_bench_path.py)

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch  # noqa: E402

from evalboard.fixtures import make_evalset, make_token_space  # noqa: E402
from evalboard.integrations.publisher import Publisher, RowsFormat  # noqa: E402
from registry.scanner import register_evalset  # noqa: E402
from registry.settings import Settings  # noqa: E402
from registry.store import Registry  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_model(text_vocab: int, total: int, hidden: int, dtype: torch.dtype):
    """A one-layer Qwen3 whose embedding and lm_head have the benchmark's shape; only the new rows
    get gradients, as in rows-only training."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    heads = max(1, hidden // 128)
    config = Qwen3Config(
        vocab_size=total,
        hidden_size=hidden,
        intermediate_size=min(4 * hidden, 1024),
        num_hidden_layers=1,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        tie_word_embeddings=False,
        pad_token_id=0,
    )
    model = Qwen3ForCausalLM(config).to(dtype)
    model.requires_grad_(False)
    for p in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        p.requires_grad_(True)
        p.register_hook(lambda g: torch.cat([torch.zeros_like(g[:text_vocab]), g[text_vocab:]]))
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=2048, help="hidden size of the rows")
    ap.add_argument("--new-rows", type=int, default=8192, help="new rows (audio + image ranges together)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    ap.add_argument("--saves", type=int, default=5)
    ap.add_argument("--fmt", choices=["safetensors", "pt"], default="safetensors")
    ap.add_argument("--batch", type=int, default=4, help="training batch for the step timing")
    ap.add_argument("--seq", type=int, default=256, help="sequence length for the step timing")
    args = ap.parse_args()
    dtype = DTYPES[args.dtype]
    text_vocab = 256
    space = make_token_space(text_vocab, audio=args.new_rows // 2, image=args.new_rows - args.new_rows // 2)
    model = build_model(text_vocab, space.vocab_size_total, args.hidden, dtype)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        settings = Settings(home=tmp / "home")
        settings.home.mkdir()
        es = make_evalset(tmp / "evalsets" / "bench", "bench", space, n_per_task=2)
        with Registry(settings.db_url) as reg:
            register_evalset(reg, es.path)
        publisher = Publisher(
            tmp / "outputs" / "bench_run",
            "bench",
            RowsFormat(space, base_model="bench/base", fmt=args.fmt),
            settings=settings,
        )
        publisher.open()
        steps, events = [], []
        try:
            for i in range(1, args.saves + 1):
                ids = torch.randint(0, space.vocab_size_total, (args.batch, args.seq), generator=g)
                t0 = time.perf_counter()
                loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                steps.append(time.perf_counter() - t0)
                events.append(publisher.save(model, i * 100))
                print(f"save {i}: {events[-1].seconds:.3f} s ({events[-1].action})", file=sys.stderr)
        finally:
            publisher.close()
    rows_bytes = 2 * args.new_rows * args.hidden * torch.tensor([], dtype=dtype).element_size()
    saves = [e.seconds for e in events]
    figures = {
        "save_s_median": round(statistics.median(saves), 4),
        "save_s_max": round(max(saves), 4),
        "write_s_median": round(statistics.median(e.write_seconds for e in events), 4),
        "registry_s_median": round(statistics.median(e.registry_seconds for e in events), 4),
        "train_step_s_median": round(statistics.median(steps), 4),
        "rows_mb": round(rows_bytes / 2**20, 2),
        "saves": len(events),
        "all_enqueued": all(e.action == "enqueued" for e in events),
        "hidden": args.hidden,
        "new_rows": args.new_rows,
        "dtype": args.dtype,
        "fmt": args.fmt,
        "device": "cpu",
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

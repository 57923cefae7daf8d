"""Track A: a sweep of connector checkpoints on one image eval set, with and without the
vision-feature cache.

Builds, in a temporary folder, a tiny Qwen3, a SigLIP vision tower (its forward dominates, as a
real tower's does against a connector), ``--checkpoints`` connector checkpoints of one run and an
image eval set, registers them, then evaluates the whole sweep twice through `Evaluator`:

- uncached: the tower runs for every checkpoint (no disk cache, the in-memory features dropped
  before each checkpoint), as a naive sweep would;
- cached: a fresh evaluator with an empty disk cache: the first checkpoint fills it, the rest
  reuse it.

Figures (last stdout line, one JSON object): ``tower_forwards_per_image`` over the cached sweep
(goal 1.0), ``trackA_sweep_speedup`` (uncached sweep time / cached sweep time) and
``max_abs_loss_diff`` between the two (goal 0), plus the times.

    python benchmarks/track_a_sweep.py            # CPU, about a minute
"""

from __future__ import annotations

import _bench_path  # noqa: F401  (first: see benchmarks/_bench_path.py)

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--checkpoints", type=int, default=8, help="connector checkpoints in the sweep")
    p.add_argument("--images", type=int, default=64, help="examples (one image each) in the eval set")
    p.add_argument("--image-size", type=int, default=96, help="image side in pixels")
    p.add_argument("--tower-hidden", type=int, default=192, help="vision tower hidden size")
    p.add_argument("--tower-layers", type=int, default=6, help="vision tower layers")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from evalboard.fixtures import (
        TinyBaseSpec,
        TinyTowerSpec,
        build_tiny_base,
        build_tiny_vision_tower,
        make_image_evalset,
        write_connector_checkpoint,
    )
    from evaluator.service import EvalOptions, Evaluator
    from registry.scanner import scan
    from registry.settings import Settings
    from registry.store import Registry

    with tempfile.TemporaryDirectory(prefix="evalboard-trackA-") as tmp:
        root = Path(tmp)
        base = build_tiny_base(root / "models" / "llm", TinyBaseSpec())
        tower_spec = TinyTowerSpec(
            hidden_size=args.tower_hidden,
            num_layers=args.tower_layers,
            num_heads=4,
            intermediate_size=4 * args.tower_hidden,
            image_size=args.image_size,
            patch_size=8,
        )
        tower = build_tiny_vision_tower(root / "models" / "tower", tower_spec)
        for i in range(args.checkpoints):
            write_connector_checkpoint(
                root / "outputs" / "sweep" / f"checkpoint_{(i + 1) * 100}.pt",
                step=(i + 1) * 100,
                vision_dim=args.tower_hidden,
                llm_dim=64,
                n_queries=16,
                base_llm="bench/llm",
                vision_tower="bench/tower",
                seed=i,
            )
        make_image_evalset(
            root / "evalsets" / "images",
            "images",
            tower="bench/tower",
            tower_dir=tower,
            n=args.images,
            image_size=args.image_size,
        )
        models = {"bench/llm": str(base), "bench/tower": str(tower)}

        def settings(home: str, cache_bytes: int) -> Settings:
            return Settings(
                home=root / home,
                db_url=f"sqlite:///{root / 'registry.db'}",
                mlflow_uri=f"sqlite:///{root / 'mlflow.db'}",
                models=models,
                vision_cache_bytes=cache_bytes,
            )

        reg = Registry(settings=settings("home", 0))
        scan(reg, [root / "outputs", root / "evalsets"])
        es = reg.get_evalset(name="images")
        cks = sorted(reg.list_checkpoints(status="valid"), key=lambda c: c.step)
        options = EvalOptions(device="cpu", force=True, write_eval_json=False, log_to_mlflow=False)

        def sweep(ev: Evaluator, *, drop_features: bool) -> tuple[float, list[list[float]], int]:
            losses, start = [], time.perf_counter()
            for ck in cks:
                if drop_features:
                    ev.features_memory.clear()
                report = ev.compute(ck, es, options).report
                losses.append([e.loss for e in report.examples])
            elapsed = time.perf_counter() - start
            return elapsed, losses, sum(t.images_forwarded for t in ev.towers.values())

        log(f"uncached sweep of {len(cks)} checkpoints over {args.images} images ...")
        warm = Evaluator(reg, settings("home-warmup", 0))
        warm.compute(cks[0], es, options)  # load the models once so neither sweep pays for it first
        plain = Evaluator(reg, settings("home-plain", 0))
        plain.base, plain.resident, plain.towers = warm.base, warm.resident, warm.towers
        for t in plain.towers.values():
            t.images_forwarded = 0
        t_plain, l_plain, _ = sweep(plain, drop_features=True)
        log("cached sweep ...")
        cached = Evaluator(reg, settings("home-cached", 2 << 30))
        cached.base, cached.resident, cached.towers = warm.base, warm.resident, warm.towers
        for t in cached.towers.values():
            t.images_forwarded = 0
        t_cached, l_cached, forwarded = sweep(cached, drop_features=False)
        diff = max(abs(a - b) for ra, rb in zip(l_plain, l_cached) for a, b in zip(ra, rb))
        figures = {
            "checkpoints": len(cks),
            "images": args.images,
            "tower_forwards_per_image": forwarded / args.images,
            "uncached_sweep_s": round(t_plain, 3),
            "cached_sweep_s": round(t_cached, 3),
            "trackA_sweep_speedup": round(t_plain / t_cached, 2),
            "max_abs_loss_diff": diff,
            "threads": args.threads,
            "device": "cpu",
        }
        reg.close()
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()

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

if not __package__:  # run as a script (first: see benchmarks/_bench_path.py), not imported as benchmarks.*
    import _bench_path  # noqa: F401

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class SweepWorkspace:
    """A registered Track A sweep: connector checkpoints of one run and an image eval set."""

    root: Path
    reg: Any
    cks: list
    es: Any
    models: dict[str, str]

    def settings(self, home: str, cache_bytes: int):
        from registry.settings import Settings

        return Settings(
            home=self.root / home,
            db_url=f"sqlite:///{self.root / 'registry.db'}",
            mlflow_uri=f"sqlite:///{self.root / 'mlflow.db'}",
            models=self.models,
            vision_cache_bytes=cache_bytes,
        )


def build_workspace(
    root: Path,
    *,
    checkpoints: int,
    images: int,
    image_size: int,
    tower_hidden: int,
    tower_layers: int,
    llm_dir: Path | None = None,
    llm_hidden: int = 64,
    n_queries: int = 16,
    answer_len: int = 4,
) -> SweepWorkspace:
    """Tower, connector checkpoints, image eval set under ``root``, scanned into a registry there.
    ``llm_dir``: an existing base LLM of width ``llm_hidden`` (default: a tiny one is built)."""
    from evalboard.fixtures import (
        TinyBaseSpec,
        TinyTowerSpec,
        build_tiny_base,
        build_tiny_vision_tower,
        make_image_evalset,
        write_connector_checkpoint,
    )
    from registry.scanner import scan
    from registry.store import Registry

    if llm_dir is None:
        llm_dir = build_tiny_base(root / "models" / "llm", TinyBaseSpec())
        llm_hidden = TinyBaseSpec().hidden_size
    tower_spec = TinyTowerSpec(
        hidden_size=tower_hidden,
        num_layers=tower_layers,
        num_heads=4,
        intermediate_size=4 * tower_hidden,
        image_size=image_size,
        patch_size=8,
    )
    tower = build_tiny_vision_tower(root / "models" / "tower", tower_spec)
    for i in range(checkpoints):
        write_connector_checkpoint(
            root / "outputs" / "sweep" / f"checkpoint_{(i + 1) * 100}.pt",
            step=(i + 1) * 100,
            vision_dim=tower_hidden,
            llm_dim=llm_hidden,
            n_queries=n_queries,
            base_llm="bench/llm",
            vision_tower="bench/tower",
            seed=i,
        )
    make_image_evalset(
        root / "evalsets" / "images",
        "images",
        tower="bench/tower",
        tower_dir=tower,
        n=images,
        image_size=image_size,
        answer_len=answer_len,
    )
    ws = SweepWorkspace(root, None, [], None, {"bench/llm": str(llm_dir), "bench/tower": str(tower)})
    ws.reg = Registry(settings=ws.settings("home", 0))
    scan(ws.reg, [root / "outputs", root / "evalsets"])
    ws.es = ws.reg.get_evalset(name="images")
    ws.cks = sorted(ws.reg.list_checkpoints(status="valid"), key=lambda c: c.step)
    return ws


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
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from evaluator.service import EvalOptions, Evaluator

    with tempfile.TemporaryDirectory(prefix="evalboard-trackA-") as tmp:
        ws = build_workspace(
            Path(tmp),
            checkpoints=args.checkpoints,
            images=args.images,
            image_size=args.image_size,
            tower_hidden=args.tower_hidden,
            tower_layers=args.tower_layers,
        )
        cks, es, settings, reg = ws.cks, ws.es, ws.settings, ws.reg
        options = EvalOptions(device=args.device, force=True, write_eval_json=False, log_to_mlflow=False)

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
            "device": args.device,
        }
        reg.close()
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()

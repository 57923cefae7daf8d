"""Scan speed: first scan vs rescan of a tree of Track B checkpoints.

Builds RUNS x PER_RUN checkpoint folders in the seed format (small rows), registers them into a
fresh SQLite registry, then rescans the unchanged tree (which must read no tensor data).
Prints progress to stderr and one JSON object on the last stdout line:
  {"checkpoints", "first_scan_s", "rescan_s", "speedup", "first_scan_per_ckpt_ms", ...}
Target: speedup >= 20.
"""

from __future__ import annotations

import _bench_path  # noqa: F401  (first: see benchmarks/_bench_path.py)

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evalboard.fixtures import make_token_space, write_trainable_rows  # noqa: E402
from registry.scanner import scan  # noqa: E402
from registry.store import Registry  # noqa: E402


def build_tree(root: Path, runs: int, per_run: int, hidden: int) -> int:
    import torch

    space = make_token_space(64, audio=8, image=8)
    n = 0
    for r in range(runs):
        run_dir = root / f"run_{r:03d}"
        run_dir.mkdir(parents=True)
        space.save(run_dir / "token_space.json")
        for s in range(per_run):
            rows = torch.randn(16, hidden)
            write_trainable_rows(
                run_dir / f"checkpoint_{(s + 1) * 100}",
                space,
                base_model="bench/base",
                hidden_size=hidden,
                step=(s + 1) * 100,
                rows=rows,
                lm_head_rows=rows * 0.5,
            )
            n += 1
        print(f"built {n} checkpoints", file=sys.stderr, end="\r")
    print(file=sys.stderr)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=100, help="number of run folders")
    ap.add_argument("--per-run", type=int, default=100, help="checkpoints per run")
    ap.add_argument("--hidden", type=int, default=32, help="hidden size of the rows")
    ap.add_argument("--db", default=None, help="SQLAlchemy URL of the registry (default: a temp SQLite file)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "outputs"
        t0 = time.perf_counter()
        n = build_tree(root, args.runs, args.per_run, args.hidden)
        build_s = time.perf_counter() - t0
        reg = Registry(args.db or f"sqlite:///{tmp}/registry.db")
        t0 = time.perf_counter()
        first = scan(reg, [root])
        first_s = time.perf_counter() - t0
        print(f"first scan: {first_s:.1f}s {first.to_dict()['new']} new", file=sys.stderr)
        t0 = time.perf_counter()
        second = scan(reg, [root])
        rescan_s = time.perf_counter() - t0
        print(f"rescan: {rescan_s:.2f}s {second.unchanged} unchanged", file=sys.stderr)
        result = {
            "checkpoints": n,
            "first_scan_s": round(first_s, 3),
            "rescan_s": round(rescan_s, 3),
            "speedup": round(first_s / rescan_s, 1) if rescan_s else None,
            "first_scan_per_ckpt_ms": round(1000 * first_s / n, 2),
            "rescan_per_ckpt_ms": round(1000 * rescan_s / n, 3),
            "build_tree_s": round(build_s, 1),
            "first_new": first.new,
            "rescan_new": second.new,
            "rescan_unchanged": second.unchanged,
            "db": reg.dialect,
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()

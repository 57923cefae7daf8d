"""`evalboard compare`: is checkpoint B's loss really different from A's?"""

from __future__ import annotations

import math
import os
from pathlib import Path

import typer

from evalboard.cli_common import open_registry, out, print_json
from registry import bootstrap
from registry.errors import NotFound


def compare_cmd(
    checkpoint_a: str = typer.Argument(..., help="The baseline: a registered checkpoint's path or id."),
    checkpoint_b: str = typer.Argument(..., help="The checkpoint compared with it (path or id)."),
    evalset: str = typer.Option(..., "--evalset", help="Registered eval-set name both were evaluated on."),
    iters: int = typer.Option(
        bootstrap.DEFAULT_ITERS, "--iters", min=1, max=bootstrap.MAX_ITERS, help="Bootstrap draws (B)."
    ),
    seed: int = typer.Option(
        bootstrap.DEFAULT_SEED, "--seed", min=0, help="Seed of the draws (recorded in the output)."
    ),
    max_examples: int | None = typer.Option(
        None,
        "--max-examples",
        min=1,
        help="Compare the results of `eval --max-examples N` (default: whole eval set, else the newest subset).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the comparison as one JSON object."),
) -> None:
    """Loss of CHECKPOINT_B minus loss of CHECKPOINT_A on an eval set, per task and for all, with a paired bootstrap
    95% interval: examples are resampled with replacement (stratified by task), the same draws for both
    checkpoints, and each draw's statistic is the token-weighted loss sum(nll)/sum(tokens). p = (c+1)/(B+1),
    c = draws whose delta does not have the observed sign. The per-example losses are read from each
    result's MLflow run (cached under the evalboard home). Results on different eval-set contents or
    subsets are refused (exit 2, both hashes named); imported results have point values only."""
    from registry.comparison import compare_results, example_cache, load_examples, pick_result

    reg, settings = open_registry()
    es = reg.get_evalset(name=evalset)
    cks = [_registered_checkpoint(reg, ref) for ref in (checkpoint_a, checkpoint_b)]
    results = [pick_result(reg, ck, es, max_examples=max_examples) for ck in cks]
    cache = example_cache(settings.home, settings.mlflow_uri)
    sides = [load_examples(r, cache) for r in results]
    cmp = compare_results(sides[0], sides[1], iters=iters, seed=seed)
    doc = {
        "evalset": {"name": es.name, "content_hash": es.content_hash},
        "a": _side_doc(cks[0], sides[0]),
        "b": _side_doc(cks[1], sides[1]),
        "delta": {t: cmp.delta(t) for t in sorted(sides[0].losses, key=lambda t: (t != "all", t))},
        "bootstrap": cmp.paired.to_dict() if cmp.paired else None,
        "no_interval": cmp.missing,
    }
    if json_out:
        print_json(_finite(doc))
        return
    for line in _lines(doc, cmp):
        out.print(line, markup=False, highlight=False)


def _registered_checkpoint(reg, ref: str):
    """By id or path; never registers anything (a checkpoint with no result cannot be compared)."""
    if ref.isdigit() and not Path(ref).exists():
        return reg.get_checkpoint(id=int(ref))
    try:
        return reg.get_checkpoint(path=os.path.realpath(ref))
    except NotFound:
        raise NotFound(f"checkpoint {ref} is not registered; scan or evaluate it first") from None


def _side_doc(ck, side) -> dict:
    r = side.result
    return {
        "checkpoint": ck.path,
        "checkpoint_id": ck.id,
        "step": ck.step,
        "result_id": r.id,
        "source": r.source,
        "mlflow_run_id": r.mlflow_run_id,
        "evalset_hash": r.evalset_hash,
        "subset": side.examples.subset if side.examples else None,
        "losses": side.losses,
    }


def _finite(obj):
    """JSON has no NaN: missing values become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _lines(doc: dict, cmp) -> list[str]:
    a, b = doc["a"], doc["b"]
    lines = [
        f"A: {a['checkpoint']} (step {a['step']})",
        f"B: {b['checkpoint']} (step {b['step']})",
    ]
    p = cmp.paired
    if p is None:
        lines.append(f"eval set {doc['evalset']['name']}: {cmp.missing}")
        lines.append(f"{'task':<8} {'A loss':>9} {'B loss':>9} {'B - A':>10}")
        for task, d in doc["delta"].items():
            lines.append(f"{task:<8} {a['losses'][task]:>9.4f} {b['losses'].get(task, math.nan):>9.4f} {d:>+10.4f}")
        return lines
    pct = f"{p.confidence:.0%}"
    lines.append(
        f"eval set {doc['evalset']['name']} (hash {p.evalset_hash[:12]}, {p.subset}); "
        f"paired bootstrap B={p.iters} seed={p.seed}"
    )
    lines.append(f"{'task':<8} {'A loss':>9} {'B loss':>9} {'B - A':>10} {pct + ' interval':>22} {'p':>7}")
    for task, d in p.tasks.items():
        verdict = "significant" if d.significant else "not significant"
        lines.append(
            f"{task:<8} {d.loss_a:>9.4f} {d.loss_b:>9.4f} {d.delta:>+10.4f} "
            f"{f'[{d.low:+.4f}, {d.high:+.4f}]':>22} {d.p_value:>7.3f}  {verdict}"
        )
    return lines


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_cmd)

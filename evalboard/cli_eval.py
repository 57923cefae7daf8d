"""CLI commands that drive the evaluator: eval, stats, materialize, import-eval."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from evalboard.cli_common import open_registry, resolve_checkpoint, resolve_evalset
from registry.errors import EvalboardError, InvalidInput, NotFound


def _registry():
    return open_registry()


def _check_tracking(settings) -> None:
    """The MLflow store must be usable before anything is computed or registered."""
    from evaluator.tracking import check_tracking_store

    check_tracking_store(settings.mlflow_uri)


def _setup_logging(verbose: bool) -> None:
    if verbose:  # without it, `evalboard`'s root callback already configured logging
        from evalboard import logs

        logs.configure(True)


def eval_cmd(
    checkpoints: list[str] = typer.Argument(..., help="Checkpoint folders (registered on the fly) or registry ids."),
    evalset: str = typer.Option(..., "--evalset", help="Registered eval-set name, or a path to one."),
    device: str | None = typer.Option(None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object per checkpoint (a list)."),
    force: bool = typer.Option(False, "--force", help="Evaluate again even if this content was evaluated on this set."),
    max_examples: int | None = typer.Option(
        None, "--max-examples", min=1, help="Deterministic subset: at most N examples per task."
    ),
    allow_mismatch: bool = typer.Option(
        False, "--allow-mismatch", help="Evaluate despite a token-space mismatch (run tagged as such)."
    ),
    no_eval_json: bool = typer.Option(
        False, "--no-eval-json", help="Do not write eval_step<step>.json next to the checkpoint."
    ),
    batch_tokens: int | None = typer.Option(
        None, "--batch-tokens", min=1, help="Padded tokens per forward pass (default: automatic)."
    ),
    connector_builder: str | None = typer.Option(
        None,
        "--connector-builder",
        metavar="PKG.MODULE:FUNCTION",
        help="The builder that rebuilds connector modules, chosen by you: it comes before the configured one "
        "(EVALBOARD_CONNECTOR_BUILDER) and the one a checkpoint names (honoured only if it is a reference "
        "builder or listed in [connector_builders] trusted); e.g. evaluator.connectors:perceiver_resampler.",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what loading and patching did."),
) -> None:
    """Evaluate checkpoints on an eval set: loss(all) and per task, logged to MLflow and the registry.
    Several checkpoints share one base-model load (only their rows are swapped). Every checkpoint is
    checked (compatibility, file integrity) before any is evaluated; a refusal exits 2 and logs nothing."""
    from evalboard.cli_common import err
    from evalboard.cli_common import progress as _progress
    from evaluator.base_model import parse_device
    from evaluator.service import EvalOptions, Evaluator

    parse_device(device)  # before anything is registered on the fly
    _setup_logging(verbose)
    reg, settings = _registry()
    _check_tracking(settings)
    es = resolve_evalset(reg, evalset)
    cks = [resolve_checkpoint(reg, c) for c in checkpoints]
    options = EvalOptions(
        device=device,
        max_examples=max_examples,
        force=force,
        allow_mismatch=allow_mismatch,
        write_eval_json=not no_eval_json,
        max_tokens_per_batch=batch_tokens,
        connector_builder=connector_builder,
    )
    with _progress("eval") as bar:
        ck_task = bar.add_task("checkpoints", total=len(cks))
        tok_task = bar.add_task("tokens", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(tok_task, completed=done, total=total)

        ev = Evaluator(reg, settings, progress=progress)
        for ck in cks:  # refuse before computing anything
            ev.check(ck, es, options)
        outcomes = []
        for ck in cks:
            outcomes.append(ev.evaluate(ck, es, options))
            bar.advance(ck_task)
            if not json_out:
                err.print(outcomes[-1].line(), markup=False, highlight=False)
    if json_out:
        sys.stdout.write(
            json.dumps(
                [
                    {
                        "checkpoint": o.checkpoint.path,
                        "step": o.checkpoint.step,
                        "evalset": o.evalset.name,
                        "losses": dict(o.result.losses),
                        "tokens": dict(o.result.tokens),
                        "examples": dict(o.result.examples),
                        "skipped": o.skipped,
                        "mlflow_run_id": o.mlflow.get("run_id"),
                    }
                    for o in outcomes
                ],
                indent=2,
            )
            + "\n"
        )


def stats_cmd(
    checkpoint: str = typer.Argument(..., help="Checkpoint (folder or .pt file) or registry id."),
    json_out: bool = typer.Option(False, "--json", help="Print the statistics document as JSON."),
    no_base: bool = typer.Option(False, "--no-base", help="Skip the base model's text rows (no base needed)."),
) -> None:
    """Statistics of a checkpoint's trained weights, with drift against the run's previous checkpoint.
    Trainable rows: row-norm statistics per modality range for the embedding and lm_head rows (count,
    mean, std, min, p5, p50, p95, max; zero, non-finite and never-trained rows) and the base's text rows
    (read as slices from its safetensors, not the whole model). Connectors: parameter norms per module."""
    from evaluator.service import Evaluator

    reg, settings = _registry()
    ck = resolve_checkpoint(reg, checkpoint)
    doc = Evaluator(reg, settings).statistics(ck, with_base=not no_base)
    if json_out:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    from evalboard.cli_common import out

    for line in stats_lines(doc):
        out.print(line, highlight=False, markup=False)


def stats_lines(doc: dict) -> list[str]:
    """The human-readable lines of a statistics document (either kind)."""
    lines = []
    for name, mats in (doc.get("ranges") or {}).items():
        for m, s in mats.items():
            lines.append(
                f"{name:>10} {m:<8} n={s['count']} mean={_f(s['mean'])} std={_f(s['std'])} "
                f"p5={_f(s['p5'])} p50={_f(s['p50'])} p95={_f(s['p95'])} zero={s['zero_rows']} "
                f"nonfinite={s['nonfinite_rows']} unchanged={s['unchanged_rows']}"
            )
    for m, s in (doc.get("base_text") or {}).items():
        lines.append(
            f"{'base text':>10} {m:<8} n={s['count']} mean={_f(s['mean'])} p50={_f(s['p50'])} zero={s['zero_rows']}"
        )
    drift = (doc.get("drift") or {}).get("modules") or {}
    for m, s in (doc.get("modules") or {}).items():
        d = drift.get(m)
        lines.append(
            f"{m:>12} params={s['params']} norm={_f(s['norm'])} rms={_f(s['rms'])} "
            f"max_abs={_f(s['max_abs'])} nonfinite={s['nonfinite']}"
            + (
                f" update={_f(d['update_norm'])} relative={_f(d['relative_update'])} cosine={_f(d['cosine'])}"
                if d
                else ""
            )
        )
    from registry.row_health import row_health

    lines.append(row_health(doc).line())
    return lines


def _f(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def materialize_cmd(
    checkpoint: str = typer.Argument(..., help="Track B checkpoint folder or registry id."),
    out_dir: Path = typer.Option(
        ...,
        "--out",
        help="Folder to write the full model into (new, or an empty folder; written beside it, then renamed in place).",
    ),
    dtype: str | None = typer.Option(None, help="Save as float32/bfloat16/float16 (default: the base's dtype)."),
) -> None:
    """Write base + patched rows as a full `save_pretrained` snapshot, loadable with plain
    `AutoModelForCausalLM.from_pretrained(OUT)` (the seed's "full model snapshot")."""
    import torch

    from evaluator import tracks
    from evaluator.service import Evaluator
    from registry.atomic import check_folder_target

    reg, settings = _registry()
    ck = resolve_checkpoint(reg, checkpoint)
    if ck.status != "valid":
        raise InvalidInput(f"cannot be materialized ({ck.reason})", path=ck.path)
    check_folder_target(out_dir, replace_empty=True)
    want = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype is not None and dtype not in want:
        raise typer.BadParameter(f"--dtype must be one of {', '.join(want)}")
    line = tracks.get(ck.track).materialize(Evaluator(reg, settings), ck, out_dir, want.get(dtype) if dtype else None)
    from evalboard.cli_common import err

    err.print(line, markup=False, highlight=False)


def import_eval_cmd(
    paths: list[Path] = typer.Argument(..., help="eval_step*.json files (or folders holding them)."),
    json_out: bool = typer.Option(False, "--json", help="Print what was imported as JSON."),
) -> None:
    """Backfill existing eval_step*.json files into MLflow (and the registry), linked to their
    checkpoints when those are registered. Importing the same file twice does nothing."""
    from evaluator.tracking import Tracker
    from registry.imports import EvalJson, check_attribution, matching_evalset, record_import

    reg, settings = _registry()
    files: list[Path] = []
    for p in paths:
        files += sorted(p.glob("eval_step*.json")) if p.is_dir() else [p]
    parsed = [EvalJson.read(f) for f in files]  # validate everything before writing
    linked = [_checkpoint_of(reg, ej) for ej in parsed]
    for ej, ck in zip(parsed, linked):
        check_attribution(ej, ck)  # a result computed on other content is refused before anything is written
    _check_tracking(settings)
    tracker = Tracker(settings.mlflow_uri, artifact_location=settings.artifact_location)
    done = []
    for ej, ck in zip(parsed, linked):
        f, res = ej.path, ej.result
        run_dir = os.path.realpath(f.parent)
        try:
            run = reg.get_run(path=run_dir)
        except NotFound:
            run = None  # registered below, once MLflow took the result
        evalset = matching_evalset(reg, res)
        model_type, model_params = _logged_model_of(reg, ck) if ck is not None else (None, None)
        ids = tracker.log_imported(
            run_name=run.name if run else Path(run_dir).name,
            step=res.step,
            losses=res.losses,
            tokens=res.tokens,
            source_path=str(f),
            checkpoint=ck,
            model_type=model_type,
            model_params=model_params,
            evalset=evalset,
            file_sha256=ej.sha256,
        )
        if run is None:
            run = reg.upsert_run(path=run_dir, name=Path(run_dir).name)
        record_import(
            reg,
            ej,
            run_id=run.id,
            checkpoint=ck,
            mlflow_run_id=ids["run_id"],
            extra={
                "mlflow_experiment_id": ids["experiment_id"],
                "run_name": run.name,
                **({"mlflow_model_id": ids["model_id"]} if ids.get("model_id") else {}),
            },
        )
        done.append(
            {
                "path": str(f),
                "run": run.name,
                "step": res.step,
                "linked": ck is not None,
                "mlflow_run_id": ids["run_id"],
                "already_imported": ids.get("reused") == "true",
            }
        )
    if json_out:
        sys.stdout.write(json.dumps(done, indent=2) + "\n")
    else:
        from evalboard.cli_common import err

        for d in done:
            err.print(
                f"{'already imported' if d['already_imported'] else 'imported'} {d['path']} "
                f"(run {d['run']}, step {d['step']}, {'linked' if d['linked'] else 'unlinked'})",
                markup=False,
                highlight=False,
            )


def _checkpoint_of(reg, ej):
    """The registered valid checkpoint of the file's run at the file's step, if any."""
    from registry.imports import checkpoints_by_step

    try:
        run = reg.get_run(path=os.path.realpath(ej.path.parent))
    except NotFound:
        return None
    if ej.result.step is None:
        return None
    valid = [c for c in reg.list_checkpoints(run_id=run.id) if c.status == "valid"]
    return checkpoints_by_step(valid).get(ej.result.step)


def _logged_model_of(reg, ck) -> tuple[str, dict[str, str]]:
    """The MLflow LoggedModel type and parameters of a checkpoint, as an evaluation records them."""
    from evaluator import tracks as eval_tracks

    track = eval_tracks.get(ck.track)
    space = reg.get_token_space(id=ck.token_space_id).abi_hash if ck.token_space_id else None
    return track.model_type, track.model_params(ck, space)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command("stats")(stats_cmd)
    app.command("materialize")(materialize_cmd)
    app.command("import-eval")(import_eval_cmd)


__all__ = ["register", "resolve_checkpoint", "resolve_evalset", "EvalboardError"]

"""`evalboard demo`: from nothing to a populated dashboard, with real work done on this machine.

Stages (each with a progress bar):
1. build a tiny Qwen3 base (random weights, `save_pretrained`) registered as `demo/Qwen3-tiny-Base`,
   and a tiny SigLIP vision tower registered as `demo/siglip-tiny`;
2. make a synthetic a2t/i2t task in a token space with an audio and an image range, and an
   image -> text task over synthetic images; write both eval sets in the registry's Parquet format;
3. train: three Track B runs (different learning rates; only the new rows train), one Track B run
   in a token space with a wider image range (a real mismatch for the audit), one Track A run
   (resampler + projector over the frozen tower);
4. scan, enqueue every checkpoint against the eval sets of its kind (the mismatched run is refused
   with the audit's reason), run a worker until the queue is empty, logging to the local MLflow store;
5. start the dashboard and print its URL (and how to open the MLflow UI on the same store).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from registry.atomic import write_file
from registry.errors import InvalidInput

BASE_ID = "demo/Qwen3-tiny-Base"
TOWER_ID = "demo/siglip-tiny"
MARKER = ".evalboard-demo"
EVALSET = "demo-a2t-i2t"
IMAGE_EVALSET = "demo-i2t-images"


@dataclass(frozen=True)
class DemoPlan:
    """How much work the demo does; `quick()` is what the tests run."""

    steps: int = 300
    save_every: int = 25
    mismatch_steps: int = 100
    connector_steps: int = 150
    eval_examples_per_task: int = 48
    learning_rates: tuple[float, ...] = (3e-3, 1e-2, 3e-2)

    @classmethod
    def quick(cls) -> DemoPlan:
        return cls(
            steps=60,
            save_every=30,
            mismatch_steps=30,
            connector_steps=20,
            eval_examples_per_task=12,
            learning_rates=(1e-2, 3e-2, 5e-2),
        )


def _prepare_workdir(workdir: Path) -> None:
    if workdir.exists() and any(workdir.iterdir()) and not (workdir / MARKER).exists():
        raise InvalidInput("exists and is not an evalboard demo folder; choose an empty or new --workdir", path=workdir)
    for sub in ("models", "outputs", "evalsets", ".evalboard"):
        shutil.rmtree(workdir / sub, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    write_file(workdir / MARKER, "created by `evalboard demo`; safe to delete\n")


def _bar(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def run_demo(
    workdir: Path, *, port: int = 8501, serve: bool = True, console: Console | None = None, plan: DemoPlan | None = None
) -> dict:
    """Run every stage; returns a summary (paths, counts, refused evaluations)."""
    import torch

    from evalboard.demo_train import SyntheticTask, train_connector_run, train_rows_run
    from evalboard.fixtures import (
        TinyBaseSpec,
        build_tiny_base,
        build_tiny_vision_tower,
        make_image_evalset,
        make_token_space,
    )
    from registry.evalset import write_evalset

    console = console or Console(stderr=True, markup=False)
    plan = plan or DemoPlan()
    workdir = Path(workdir).resolve()
    _prepare_workdir(workdir)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    env = _demo_env(workdir, {BASE_ID: "models/Qwen3-tiny-Base", TOWER_ID: "models/siglip-tiny"})
    for var in WORKSPACE_ENV_VARS:  # the demo's own workspace config decides, not the caller's env
        os.environ.pop(var, None)
    os.environ.update(env)
    from evalboard import logs

    logs.configure(verbose=False)  # our bars only: no library progress bars or INFO lines

    with _bar(console) as bar:
        t = bar.add_task("1/5 build tiny Qwen3 + vision tower", total=1)
        base_dir = build_tiny_base(
            workdir / "models" / "Qwen3-tiny-Base", TinyBaseSpec(text_vocab_size=512, hidden_size=64, output_scale=8.0)
        )
        tower_dir = build_tiny_vision_tower(workdir / "models" / "siglip-tiny")
        bar.advance(t)

        t = bar.add_task("2/5 synthetic task + eval set", total=1)
        space = make_token_space(512, audio=128, image=128)
        wide = make_token_space(512, audio=128, image=160)
        task = SyntheticTask(space)
        write_evalset(
            workdir / "evalsets" / EVALSET,
            EVALSET,
            task.examples(plan.eval_examples_per_task, seed=7),
            space,
            description="synthetic audio->text and image->text answers",
        )
        make_image_evalset(
            workdir / "evalsets" / IMAGE_EVALSET,
            IMAGE_EVALSET,
            tower=TOWER_ID,
            tower_dir=tower_dir,
            n=2 * plan.eval_examples_per_task,
            seed=7,
        )
        bar.advance(t)

        runs = [(f"stage3_lr{lr:g}", space, lr, plan.steps) for lr in plan.learning_rates]
        runs.append(("stage3_wide_image", wide, plan.learning_rates[1], plan.mismatch_steps))
        total = sum(r[3] for r in runs) + plan.connector_steps
        t = bar.add_task("3/5 train (only new rows / connector)", total=total)
        outputs = workdir / "outputs"
        for i, (name, sp, lr, steps) in enumerate(runs):
            train_rows_run(
                base_dir,
                outputs / name,
                sp,
                SyntheticTask(sp),
                base_model=BASE_ID,
                lr=lr,
                steps=steps,
                save_every=plan.save_every,
                seed=i,
                on_step=lambda _s: bar.advance(t),
            )
        train_connector_run(
            base_dir,
            tower_dir,
            outputs / "stage1_connector",
            base_model=BASE_ID,
            vision_tower=TOWER_ID,
            steps=plan.connector_steps,
            save_every=max(1, plan.connector_steps // 3),
            on_step=lambda _s: bar.advance(t),
        )

        summary = _scan_and_evaluate(workdir, bar)
    _print_audit(console, summary["findings"])
    _print_refused(console, summary["refused"], summary["findings"])
    _print_next_steps(console, workdir, port)
    if serve:
        _serve(workdir, port, env, console)
    return summary


WORKSPACE_ENV_VARS = (
    "EVALBOARD_WORKSPACE",
    "EVALBOARD_HOME",
    "EVALBOARD_DB",
    "MLFLOW_TRACKING_URI",
    "EVALBOARD_ARTIFACT_LOCATION",
    "EVALBOARD_MODELS",
)


def _demo_env(workdir: Path, models: dict[str, str]) -> dict[str, str]:
    """Make `workdir` a workspace (`.evalboard/config.toml`: registry, MLflow store and artifacts
    under `.evalboard/`, the base models under `models/`), so every command run inside it later,
    with no environment variable, finds the same stores and models. Returns the environment that
    names it for the demo's own processes."""
    from registry.settings import write_workspace_config

    write_workspace_config(workdir, models=models)
    return {"EVALBOARD_WORKSPACE": str(workdir)}


def _print_refused(console: Console, refused: list[str], findings) -> None:
    """One line per run and reason, naming its refused checkpoints: the reasons of a run's
    checkpoints differ only in the checkpoint's name, and the audit above already printed one."""
    shown = [f.message for f in findings if f.severity != "info"]
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for item in refused:
        name, _, reason = item.partition(": ")
        run = name.rsplit("/", 1)[0]
        groups.setdefault((run, reason.replace(name, "<checkpoint>")), []).append((name, reason))
    for members in groups.values():
        names = ", ".join(n for n, _ in members)
        said = any(all(part in message for part in members[0][1].split("; ")) for message in shown)
        console.print(
            f"refused: {names}: " + ("not evaluated, see the audit error above" if said else members[0][1]),
            markup=False,
            highlight=False,
        )


def _print_next_steps(console: Console, workdir: Path, port: int) -> None:
    from registry.settings import Settings

    s = Settings.from_env()
    evalboard = Path(sys.executable).with_name("evalboard")
    lines = [
        "",
        f"workspace: {workdir}   (commands run in it or below use it: `evalboard info`)",
        f"registry:  {s.db_url}",
        f"MLflow:    {s.mlflow_uri}   artifacts: {s.artifact_location}",
        "",
        "next, from the workspace:",
        f"  cd {workdir}",
        f"  {evalboard} runs                      (or activate the venv: source {evalboard.parent}/activate)",
        f"  {evalboard} dashboard --port {port}   (reopen the dashboard)",
        f"  {evalboard} worker                    (evaluate what is queued; the Queue page can start one too)",
        f"  {s.mlflow_ui_command(executable=str(evalboard.with_name('mlflow')))}   (MLflow's own UI)",
    ]
    console.print("\n".join(lines), markup=False, highlight=False)


def _scan_and_evaluate(workdir: Path, bar: Progress) -> dict:
    from registry import tracks
    from registry.audit import audit
    from registry.policy import enqueue_checkpoints
    from registry.scanner import scan
    from registry.settings import Settings
    from registry.store import Registry

    settings = Settings.from_env()
    reg = Registry(settings=settings)
    t = bar.add_task("4/5 scan + enqueue", total=None)
    summary = scan(
        reg,
        [workdir / "outputs", workdir / "evalsets"],
        on_total=lambda n: bar.update(t, total=n),
        progress=lambda _p: bar.advance(t),
    )
    refused, jobs = [], []
    valid = reg.list_checkpoints(status="valid")
    for es in reg.list_evalsets():  # each checkpoint on the eval sets of the kind its track evaluates
        mine = [ck for ck in valid if tracks.get(ck.track).accepts_evalset(es)]
        for d in enqueue_checkpoints(reg, mine, es, models=settings.models):
            ck = d.checkpoint
            if d.action == "refused":
                refused.append(f"{Path(ck.path).parent.name}/{Path(ck.path).name}: {d.detail}")
            elif d.job is not None:
                jobs.append(d.job)
    t = bar.add_task("5/5 evaluate (worker)", total=len(jobs))
    _run_jobs(reg, settings, jobs, lambda: bar.advance(t))
    findings = audit(reg, models=settings.models)
    return {
        "scan": summary.to_dict(),
        "jobs": len(jobs),
        "refused": refused,
        "findings": findings,
        "evalset": EVALSET,
        "image_evalset": IMAGE_EVALSET,
    }


def _run_jobs(reg, settings, jobs, advance) -> None:
    """Drain the queue with one in-process worker: the same code path as `evalboard worker --once`."""
    from evaluator.worker import Worker, WorkerConfig, WorkerHooks
    from registry import queue

    if not jobs:
        return
    worker = Worker(
        reg, settings, WorkerConfig(once=True, worker_id="demo"), hooks=WorkerHooks(after_job=lambda _job: advance())
    )
    try:
        code = worker.run()
    finally:
        queue.worker_gone(reg, worker.worker_id)
    if code:
        raise RuntimeError(f"the demo worker stopped with exit status {code}")
    failed = [j for j in reg.list_jobs(status="failed")]
    if failed:
        raise RuntimeError(f"{len(failed)} demo evaluations failed, first: {failed[0].last_error}")


def _print_audit(console: Console, findings) -> None:
    from registry.audit import summarize

    for f in findings:
        if f.severity != "info":
            console.print(f"{f.severity:>7} {f.code}: {f.message}", markup=False, highlight=False)
    c = summarize(findings)
    console.print(f"audit: {c['error']} errors, {c['warning']} warnings, {c['info']} info", highlight=False)


def _serve(workdir: Path, port: int, env: dict[str, str], console: Console) -> None:
    from evalboard.procs import run_child
    from registry.processes import child_env, python_module_command

    cmd = python_module_command("evalboard.cli", "dashboard", "--port", str(port))
    console.print(f"dashboard: http://127.0.0.1:{port}  (Ctrl-C to stop)", markup=False, highlight=False)
    run_child(cmd, child_env({**os.environ, **env}))

"""CLI commands of the eval queue: worker, enqueue, jobs (cancel, retry, reconcile), watch."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path

import typer

from registry.errors import EvalboardError, Incompatible, InvalidInput

jobs_app = typer.Typer(help="List queued evaluation jobs; cancel, retry them.", invoke_without_command=True)


def _registry():
    from evalboard.cli_common import open_registry

    return open_registry()


def _setup_logging(verbose: bool = False) -> None:
    """Services (worker, watch) log what they do at INFO; libraries only their warnings."""
    from evalboard import logs

    logs.configure(verbose, ours=logging.INFO)


def worker_cmd(
    ctx: typer.Context,
    device: str | None = typer.Option(None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)."),
    gpus: str | None = typer.Option(None, help="'all' (or a list like 0,1): one worker process per GPU."),
    once: bool = typer.Option(False, "--once", help="Exit when there is nothing left to claim."),
    max_jobs: int | None = typer.Option(None, "--max-jobs", min=1, help="Exit after running N jobs."),
    lease_seconds: float = typer.Option(60.0, "--lease-seconds", help="Lease per claim, extended by heartbeats."),
    heartbeat_seconds: float | None = typer.Option(
        None, "--heartbeat-seconds", help="Heartbeat interval (default: a third of the lease)."
    ),
    poll_seconds: float = typer.Option(2.0, "--poll-seconds", help="Wait between claims when the queue is empty."),
    reconcile_seconds: float = typer.Option(
        60.0, "--reconcile-seconds", help="How often to close MLflow runs left RUNNING by dead workers."
    ),
    outbox_seconds: float = typer.Option(
        10.0, "--outbox-seconds", help="How often to retry logging results kept while MLflow was away."
    ),
    connector_builder: str | None = typer.Option(
        None,
        "--connector-builder",
        metavar="PKG.MODULE:FUNCTION",
        help="The builder that rebuilds connector modules for jobs that name none themselves; comes before the "
        "configured one and the one a checkpoint names (honoured only if trusted).",
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Say which workspace and stores are used; show library logs."
    ),
) -> None:
    """Claim queued evaluations and run them until stopped, keeping the base model resident.

    SIGTERM: stop claiming and finish the current job (a second SIGTERM releases it at once).
    Exit status 3 after an unrecoverable CUDA error (the job is released; restart the worker)."""
    from evaluator.worker import Worker, WorkerConfig, supervise_gpus
    from registry import queue

    _setup_logging(verbose or bool((ctx.obj or {}).get("verbose")))
    if gpus is not None:
        if device is not None:
            raise InvalidInput("give either --device or --gpus, not both")
        argv = [a for a in sys.argv[2:]]
        argv = _without_option(argv, "--gpus")
        raise typer.Exit(supervise_gpus(argv, _gpu_list(gpus)))
    config = WorkerConfig(
        device=device,
        lease_seconds=lease_seconds,
        heartbeat_seconds=heartbeat_seconds,
        poll_seconds=poll_seconds,
        once=once,
        max_jobs=max_jobs,
        reconcile_seconds=reconcile_seconds,
        outbox_seconds=outbox_seconds,
        connector_builder=connector_builder,
    )
    reg, settings = _existing_registry()
    worker = Worker(reg, settings, config)
    worker.install_signal_handlers()
    try:
        code = worker.run()
    finally:
        queue.worker_gone(reg, worker.worker_id)
    raise typer.Exit(code)


def _existing_registry():
    """The registry a worker serves. A worker never creates one: a database that does not exist
    (or holds no registry) is named and refused, instead of an empty registry polled for ever."""
    from registry.settings import Settings
    from registry.store import Registry

    settings = Settings.from_env()
    hint = (
        "a worker never creates a registry; point EVALBOARD_DB (or EVALBOARD_HOME) at the one that "
        "`evalboard scan` / `evalboard enqueue` wrote"
    )
    return Registry.existing(settings, hint=hint), settings


def _gpu_list(gpus: str) -> list[int]:
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus == "all":
        if visible == 0:
            raise InvalidInput(
                "--gpus all: torch sees no CUDA device on this machine; "
                "run `evalboard worker` without --gpus to use the CPU"
            )
        return list(range(visible))
    try:
        wanted = [int(g) for g in gpus.split(",") if g.strip()]
    except ValueError:
        raise InvalidInput(f"--gpus {gpus!r}: expected 'all' or a list of device numbers like 0,1") from None
    missing = [g for g in wanted if g >= visible]
    if missing or not wanted:
        raise InvalidInput(f"--gpus {gpus}: only {visible} CUDA devices are visible")
    return wanted


def _without_option(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def enqueue_cmd(
    checkpoints: list[str] = typer.Argument(..., help="Checkpoint folders (registered on the fly) or registry ids."),
    evalset: str = typer.Option(..., "--evalset", help="Registered eval-set name, or a path to one."),
    force: bool = typer.Option(False, "--force", help="Queue again even if this content is queued or done."),
    max_attempts: int = typer.Option(
        3, "--max-attempts", min=1, max=2**31 - 1, help="Attempts before the job is failed (1 to 2^31-1)."
    ),
    max_examples: int | None = typer.Option(
        None, "--max-examples", min=1, help="Deterministic subset: at most N examples per task."
    ),
    priority: int = typer.Option(0, help="Higher runs first."),
    connector_builder: str | None = typer.Option(
        None,
        "--connector-builder",
        metavar="PKG.MODULE:FUNCTION",
        help="The builder that rebuilds connector modules for these jobs (kept with the job); comes before the "
        "configured one and the one a checkpoint names (honoured only if trusted).",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the jobs as JSON."),
    verbose_flag: bool = typer.Option(False, "--verbose", "-v", help="Say which workspace and stores are used."),
) -> None:
    """Queue evaluations of checkpoints on an eval set (one job per checkpoint content and eval set:
    enqueuing twice returns the first job). A pair the audit refuses (e.g. token spaces that do not
    match) is not queued: the reason is printed and the exit status is 2."""
    from evalboard.cli_common import err, resolve_checkpoint, resolve_evalset, verbose
    from registry import queue
    from registry.policy import enqueue_checkpoints

    verbose(verbose_flag)
    reg, _settings = _registry()
    es = resolve_evalset(reg, evalset)
    cks = [resolve_checkpoint(reg, c) for c in checkpoints]
    options: dict = {"max_examples": max_examples} if max_examples else {}
    if connector_builder:
        from registry.settings import parse_connector_builders

        options["connector_builder"] = parse_connector_builders(connector_builder)["*"]
    decisions = enqueue_checkpoints(
        reg,
        cks,
        es,
        models=_settings.models,
        force=force,
        max_attempts=max_attempts,
        options=options,
        priority=priority,
        all_or_nothing=True,
    )
    refused = [d for d in decisions if d.action == "refused"]
    if refused:  # the audit refuses all before any is queued; a store refusal names its checkpoint
        raise Incompatible(
            f"not queued on eval set {es.name!r}: " + " | ".join(f"{d.checkpoint.path}: {d.detail}" for d in refused)
        )
    rows = [
        {
            "job_id": d.job.id,
            "checkpoint": d.checkpoint.path,
            "step": d.checkpoint.step,
            "evalset": es.name,
            "status": d.job.status,
            "created": d.action == "enqueued",
        }
        for d in decisions
        if d.job is not None
    ]
    if json_out:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    for r in rows:
        state = "queued" if r["created"] else f"already {r['status']}"
        err.print(f"job {r['job_id']} {state}: {r['checkpoint']} on {r['evalset']}", markup=False, highlight=False)
    if any(r["created"] for r in rows) and not queue.live_workers(reg):
        err.print(
            "no worker is running for this registry: start one with `evalboard worker` "
            "(or `evalboard worker --once` to drain the queue and exit)",
            markup=False,
            highlight=False,
        )


@jobs_app.callback()
def jobs_cmd(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help="Print the jobs as a JSON list."),
    status: str | None = typer.Option(None, help="Only jobs with this status (queued, running, done, ...)."),
    verbose_flag: bool = typer.Option(False, "--verbose", "-v", help="Say which workspace and stores are used."),
) -> None:
    """The status table of evaluation jobs: which run and step, who ran them, when, for how long,
    attempts, errors (and, on stderr, which registry was read and whether a worker is alive)."""
    if ctx.invoked_subcommand is not None:
        return
    from evalboard.cli_common import err, out, say_registry, verbose
    from registry import queue

    verbose(verbose_flag)
    reg, s = _registry()
    jobs = reg.list_jobs(status=status)
    cks = {c.id: c for c in reg.list_checkpoints()}
    run_names = {r.id: r.name for r in reg.list_runs()}
    evalsets = {e.id: e.name for e in reg.list_evalsets()}
    say_registry(s, "jobs" if status is None else f"{status} jobs", len(jobs))
    workers = queue.live_workers(reg)
    if any(j.status == "queued" for j in jobs) or workers:
        err.print(
            f"live workers: {', '.join(w.worker_id for w in workers)}"
            if workers
            else "no live worker: queued jobs wait until one starts (`evalboard worker`)",
            markup=False,
            highlight=False,
        )
    rows = [
        {
            "job_id": j.id,
            "status": j.status,
            "run": run_names.get(cks[j.checkpoint_id].run_id) if j.checkpoint_id in cks else None,
            "checkpoint": cks[j.checkpoint_id].path if j.checkpoint_id in cks else None,
            "step": cks[j.checkpoint_id].step if j.checkpoint_id in cks else None,
            "evalset": evalsets.get(j.evalset_id),
            "worker": j.worker_id,
            "attempts": j.attempts,
            "max_attempts": j.max_attempts,
            "enqueued_at": j.enqueued_at,
            "started_at": j.started_at,
            "finished_at": j.finished_at,
            "duration_s": j.duration_s,
            "mlflow_run_id": j.mlflow_run_id,
            "outbox": j.outbox_state,
            "last_error": j.last_error,
            "losses": (j.result or {}).get("losses") or ((j.result or {}).get("record") or {}).get("losses"),
        }
        for j in jobs
    ]
    if json_out:
        sys.stdout.write(json.dumps(rows, indent=2, default=str) + "\n")
        return
    if not rows:
        return
    width = min(32, max(3, *(len(str(r["run"] or "-")) for r in rows)))
    out.print(
        f"{'id':>5} {'status':<9} {'run':<{width}} {'step':>7} {'evalset':<20} {'attempts':>8} {'seconds':>8} "
        f"{'worker':<24} {'loss_all':>9}  error",
        markup=False,
        highlight=False,
    )
    for r in rows:
        loss = (r["losses"] or {}).get("all")
        step = "-" if r["step"] is None else str(r["step"])
        seconds = "-" if r["duration_s"] is None else f"{r['duration_s']:.1f}"
        loss_text = "-" if loss is None else f"{loss:.4f}"
        out.print(
            f"{r['job_id']:>5} {r['status']:<9} {str(r['run'] or '-')[:width]:<{width}} {step:>7} "
            f"{str(r['evalset'])[:20]:<20} "
            f"{r['attempts']:>4}/{r['max_attempts']:<3} {seconds:>8} {str(r['worker'] or '-')[:24]:<24} "
            f"{loss_text:>9}  {(r['last_error'] or '')[:80]}",
            markup=False,
            highlight=False,
        )


@jobs_app.command("cancel")
def jobs_cancel(
    job_ids: list[int] = typer.Argument(..., min=1, max=2**31 - 1, help="Job ids."),
    running: bool = typer.Option(False, "--running", help="Also cancel running jobs (their worker drops them)."),
) -> None:
    """Cancel queued jobs (and running ones with --running)."""
    from evalboard.cli_common import err
    from registry import queue

    reg, _ = _registry()
    for i in job_ids:
        changed = queue.cancel(reg, job_id=i, running=running)
        err.print(
            f"job {i} {'cancelled' if changed else 'not cancelled: it is ' + reg.get_job(id=i).status}",
            markup=False,
            highlight=False,
        )


@jobs_app.command("retry")
def jobs_retry(job_ids: list[int] = typer.Argument(..., min=1, max=2**31 - 1, help="Job ids.")) -> None:
    """Put failed or cancelled jobs back in the queue with their attempts reset."""
    from evalboard.cli_common import err
    from registry import queue

    reg, _ = _registry()
    for i in job_ids:
        changed = queue.retry(reg, job_id=i)
        err.print(
            f"job {i} {'queued again' if changed else 'not retried: it is ' + reg.get_job(id=i).status}",
            markup=False,
            highlight=False,
        )


@jobs_app.command("reconcile")
def jobs_reconcile(
    json_out: bool = typer.Option(False, "--json", help="Print what changed as JSON."),
    hosts_gone: list[str] = typer.Option(
        [],
        "--host-gone",
        help="HOST: a machine that will never end its runs (decommissioned); its RUNNING runs of no "
        "queued job are ended KILLED too (repeatable).",
    ),
) -> None:
    """Reap expired leases and close MLflow runs left RUNNING by dead workers, and by `evalboard
    eval` / `import-eval` processes of this host that are gone (workers also do this at start and
    periodically). Runs started on other hosts are left alone, unless named with --host-gone."""
    from evaluator.worker import Worker, WorkerConfig
    from registry import queue

    reg, settings = _registry()
    reaped = queue.reap_expired(reg)
    out = {**reaped, **Worker(reg, settings, WorkerConfig()).reconcile(hosts_gone=hosts_gone)}
    if json_out:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        from evalboard.cli_common import err

        err.print(
            f"requeued {out['queued']}, failed {out['failed']}, killed runs {out['killed']}, "
            f"superseded runs {out['superseded']}",
            markup=False,
            highlight=False,
        )


def watch_cmd(
    paths: list[Path] = typer.Argument(..., help="Training output folders to watch."),
    evalset: str = typer.Option(..., "--evalset", help="Registered eval-set name (or path) to evaluate on."),
    interval: float = typer.Option(10.0, "--interval", help="Seconds between polls."),
    settle_seconds: float = typer.Option(
        30.0, "--settle-seconds", help="A checkpoint's files must be unchanged this long to count as complete."
    ),
    max_attempts: int = typer.Option(
        3, "--max-attempts", min=1, max=2**31 - 1, help="Attempts per queued job (1 to 2^31-1)."
    ),
    once: bool = typer.Option(False, "--once", help="Poll until nothing is still settling, then exit."),
) -> None:
    """Register each new checkpoint under PATHS once its files are complete (all present, sizes and
    mtimes unchanged for --settle-seconds, and valid) and queue its evaluation, once per content.
    Runs until SIGTERM/Ctrl-C."""
    run_watch(paths, evalset, interval=interval, settle_seconds=settle_seconds, max_attempts=max_attempts, once=once)


def run_watch(
    paths: list[Path],
    evalset: str,
    *,
    interval: float,
    settle_seconds: float,
    max_attempts: int = 3,
    once: bool = False,
) -> None:
    """The watch loop behind `evalboard watch` and `evalboard scan --watch`."""
    import os

    from evalboard.cli_common import err, resolve_evalset
    from registry.watch import Watcher

    if interval <= 0 or settle_seconds < 0:
        raise InvalidInput("--interval must be positive and --settle-seconds not negative")
    _setup_logging()
    reg, settings = _registry()
    es = resolve_evalset(reg, evalset)
    watcher = Watcher(
        reg,
        [Path(os.path.realpath(p)) for p in paths],
        es,
        settle_seconds=settle_seconds,
        max_attempts=max_attempts,
        models=settings.models,
    )
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.append(True))
    err.print(
        f"watching {', '.join(map(str, paths))} for checkpoints to evaluate on {es.name!r} "
        f"(poll {interval:g} s, settle {settle_seconds:g} s)",
        markup=False,
        highlight=False,
    )

    def should_stop() -> bool:
        return bool(stopping) or (once and watcher.polls > 0 and not watcher.settling)

    watcher.run(interval=interval, should_stop=should_stop)


def register(app: typer.Typer) -> None:
    app.command("worker")(worker_cmd)
    app.command("enqueue")(enqueue_cmd)
    app.command("watch")(watch_cmd)
    app.add_typer(jobs_app, name="jobs")


__all__ = ["register", "run_watch", "EvalboardError"]

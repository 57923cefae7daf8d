"""`evalboard worker`: claim queued evaluations and run them until stopped.

One job, start to end:

    claim (committed) -> heartbeat thread -> compute (no writes) -> write artifacts
      -> log to MLflow (or keep the result in the outbox when MLflow is unreachable) -> complete

The durable state is the database row, never this process: a worker killed at any point leaves
a job whose lease expires and which another worker claims again (a new fencing token). MLflow
sees each job at most once FINISHED because the tracker reuses a FINISHED run tagged with the job
id, a worker that lost its lease ends its run FAILED instead of FINISHED, and the reconciler
(`Tracker.reconcile`, at start and every `reconcile_seconds`) closes runs that dead workers left
RUNNING.

Faults: out-of-memory shrinks the batch inside `evaluate_loss`; a non-finite loss is an
`InvalidInput` (the job fails at once, nothing is logged); an unrecoverable CUDA error releases
the job and stops the worker with exit code 3 so its supervisor restarts it on a fresh context.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from registry import queue
from registry.entities import EvalJobEntity
from registry.errors import EvalboardError, InvalidInput
from registry.job_options import JobOptions
from registry.settings import Settings
from registry.store import Registry

if TYPE_CHECKING:
    import torch

__all__ = ["WorkerConfig", "WorkerHooks", "Worker", "is_unrecoverable_device_error", "EXIT_DEVICE_FAULT"]

log = logging.getLogger("evalboard.worker")

EXIT_DEVICE_FAULT = 3
"""Exit status after an unrecoverable CUDA error: the job was released; restart the worker."""
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class WorkerConfig:
    device: str | None = None
    """'cpu', 'cuda' or 'cuda:N'; None picks CUDA when available, else the CPU (and says so)."""
    lease_seconds: float = 60.0
    """How long a claim lasts without a heartbeat (measured by the database's clock)."""
    heartbeat_seconds: float | None = None
    """How often the lease is extended; default a third of the lease."""
    poll_seconds: float = 2.0
    """Wait between claims when the queue is empty."""
    once: bool = False
    """Exit when there is nothing to claim instead of waiting for new jobs."""
    max_jobs: int | None = None
    """Exit after running this many jobs."""
    reconcile_seconds: float = 60.0
    """How often to close MLflow runs that dead workers left RUNNING (also done at start)."""
    outbox_seconds: float = 10.0
    """How often to retry logging results kept while MLflow was unreachable."""
    worker_id: str | None = None
    """Name recorded on claimed jobs; default `<host>:<pid>`."""
    connector_builder: str | None = None
    """Connector builder (`--connector-builder`) for jobs whose options name none: the user's choice,
    before the configured builder and a checkpoint's own (`evaluator.connectors.choose_builder`)."""

    def __post_init__(self) -> None:
        from evaluator.base_model import parse_device

        parse_device(self.device)
        if not self.lease_seconds > 0:
            raise InvalidInput(f"--lease-seconds must be positive, got {self.lease_seconds}")
        if self.heartbeat_seconds is not None and not 0 < self.heartbeat_seconds < self.lease_seconds:
            raise InvalidInput(
                f"--heartbeat-seconds must be between 0 and the lease ({self.lease_seconds} s), "
                f"got {self.heartbeat_seconds}"
            )
        if self.max_jobs is not None and self.max_jobs < 1:
            raise InvalidInput(f"--max-jobs must be at least 1, got {self.max_jobs}")
        if not self.poll_seconds > 0:
            raise InvalidInput(f"--poll-seconds must be positive, got {self.poll_seconds}")

    @property
    def heartbeat_interval(self) -> float:
        return self.heartbeat_seconds or self.lease_seconds / 3


@dataclass
class WorkerHooks:
    """Test seams: called in the worker's main thread."""

    after_compute: Callable[[EvalJobEntity], None] | None = None
    after_job: Callable[[EvalJobEntity], None] | None = None
    """Called after each claimed job reached its state (progress bars)."""


class Interrupted(BaseException):
    """A second SIGTERM/SIGINT: give the current job back now."""


def is_unrecoverable_device_error(error: BaseException) -> bool:
    """A CUDA error that poisons the process's CUDA context (not an out-of-memory, which
    `evaluate_loss` survives by shrinking the batch)."""
    import torch

    from evaluator.loss import is_out_of_memory

    accelerator_error = getattr(torch, "AcceleratorError", None)
    seen: BaseException | None = error
    while seen is not None:
        if not is_out_of_memory(seen):
            if accelerator_error is not None and isinstance(seen, accelerator_error):
                return True
            text = str(seen)
            if isinstance(seen, RuntimeError) and ("CUDA error" in text or "device-side assert" in text):
                return True
        seen = seen.__cause__ or seen.__context__
    return False


class _Heartbeat:
    """Extends one job's lease in a background thread; `lost` is set when the job is not ours."""

    def __init__(self, reg: Registry, job: EvalJobEntity, config: WorkerConfig):
        self.reg, self.job, self.config = reg, job, config
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job.id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> bool:
        return queue.heartbeat(
            self.reg, job_id=self.job.id, token=self.job.fencing_token, lease_seconds=self.config.lease_seconds
        )

    def _run(self) -> None:
        while not self._stop.wait(self.config.heartbeat_interval):
            try:
                if not self._beat():
                    log.warning("job %d: lease lost (claimed by another worker or cancelled)", self.job.id)
                    self.lost.set()
                    return
            except EvalboardError as e:  # a database blip: the lease still runs; try again
                log.warning("job %d: heartbeat failed: %s", self.job.id, e)

    def still_owner(self) -> bool:
        """Asked right before results become final: a fresh heartbeat proves the token is current."""
        return not self.lost.is_set() and self._beat()


@dataclass
class _Stats:
    done: int = 0
    failed: int = 0
    outbox: int = 0
    lost: int = 0
    started: float = field(default_factory=time.monotonic)


class Worker:
    """Runs jobs from the registry's queue with one resident base model."""

    def __init__(
        self,
        registry: Registry,
        settings: Settings,
        config: WorkerConfig = WorkerConfig(),
        *,
        hooks: WorkerHooks | None = None,
        evaluator: Any = None,
    ):
        self.reg, self.settings, self.config = registry, settings, config
        self.hooks = hooks or WorkerHooks()
        self.worker_id = config.worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self._evaluator = evaluator
        self._stop = threading.Event()
        self._signals = 0
        self._handles_signals = False
        self._base_model: str | None = None
        self._mlflow_down_until = 0.0
        self._next_reconcile = 0.0
        self._next_outbox = 0.0
        self.stats = _Stats()
        self.device: torch.device | None = None

    @property
    def evaluator(self):
        if self._evaluator is None:
            from evaluator.service import Evaluator

            self._evaluator = Evaluator(self.reg, self.settings)
        return self._evaluator

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; the current job (if any) is finished first."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        """First SIGTERM/SIGINT: finish the current job, claim no more. Second: release it now."""

        def handle(signum, _frame):
            self._signals += 1
            if self._signals == 1:
                log.info(
                    "%s: got %s; finishing the current job, claiming no more",
                    self.worker_id,
                    signal.Signals(signum).name,
                )
                self.stop()
            else:
                raise Interrupted(signal.Signals(signum).name)

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        self._handles_signals = True

    def run(self) -> int:
        """Claim and run jobs until stopped; returns the process exit status."""
        from evaluator.service import resolve_device

        self.device = resolve_device(self.config.device)  # a clear error before claiming anything
        if self.config.device is None and self.device.type == "cpu":
            log.warning("%s: no GPU visible; running on the CPU", self.worker_id)
        log.info(
            "%s: worker started on %s (registry %s, MLflow %s, lease %.0f s)",
            self.worker_id,
            self.device,
            self.reg.url,
            self.settings.mlflow_uri,
            self.config.lease_seconds,
        )
        self.maintain(force=True)
        try:
            while not self._stop.is_set():
                if self.config.max_jobs is not None and self.stats.done + self.stats.failed >= self.config.max_jobs:
                    break
                self.maintain()
                job = queue.claim(
                    self.reg,
                    worker_id=self.worker_id,
                    lease_seconds=self.config.lease_seconds,
                    prefer_base_model=self._base_model,
                )
                if job is None:
                    if self.config.once:
                        break
                    self._stop.wait(self.config.poll_seconds)
                    continue
                code = self.run_job(job)
                if self.hooks.after_job is not None:
                    self.hooks.after_job(job)
                if code:
                    return code
        except Interrupted:
            return EXIT_INTERRUPTED
        finally:
            s = self.stats
            log.info(
                "%s: stopping after %.0f s: %d done, %d failed, %d kept in the outbox, %d lost leases",
                self.worker_id,
                time.monotonic() - s.started,
                s.done,
                s.failed,
                s.outbox,
                s.lost,
            )
        if self.config.once or self._stop.is_set():
            self.flush_outbox()
        return 0

    # -- one job -----------------------------------------------------------------------------

    def run_job(self, job: EvalJobEntity) -> int:
        """Run one claimed job to a final state; returns a non-zero exit status only for a fault
        that must end the process."""
        from evaluator.service import EvalOptions

        t0 = time.monotonic()
        token = job.fencing_token
        with _Heartbeat(self.reg, job, self.config) as beat:
            try:
                ck = self.reg.get_checkpoint(id=job.checkpoint_id)
                es = self.reg.get_evalset(id=job.evalset_id)
                opts = JobOptions.parse(job.options)
                options = EvalOptions(
                    device=str(self.device),
                    force=True,
                    max_examples=opts.max_examples,
                    allow_mismatch=opts.allow_mismatch,
                    write_eval_json=opts.write_eval_json,
                    max_tokens_per_batch=opts.max_tokens_per_batch,
                    connector_builder=opts.connector_builder or self.config.connector_builder,
                )
                prior = (
                    None if opts.force else self.evaluator.prior_result(ck, es, options.max_examples, logged_only=True)
                )
                if prior is not None:
                    queue.complete(
                        self.reg,
                        job_id=job.id,
                        token=token,
                        mlflow_run_id=prior.mlflow_run_id,
                        result={"reused_result_id": prior.id},
                    )
                    self.stats.done += 1
                    log.info(
                        "job %d done: %s was already evaluated on %s (MLflow run %s); not computed again",
                        job.id,
                        ck.path,
                        es.name,
                        prior.mlflow_run_id,
                    )
                    return 0
                ev = self.evaluator
                computed = ev.compute(ck, es, options)
                self._base_model = ck.base_model
                if self.hooks.after_compute is not None:
                    self.hooks.after_compute(job)
                if beat.lost.is_set():
                    raise queue.LeaseLost(f"job {job.id}: lease lost during the evaluation")
                pub = ev.prepare_publication(computed, job_id=job.id, job_token=token)
                run_id = self._publish_or_keep(job, pub, beat)
            except queue.LeaseLost as e:
                self.stats.lost += 1
                log.warning("job %d: %s", job.id, e)
                return 0
            except Interrupted:
                self._give_back(job, "worker interrupted (second SIGTERM/SIGINT)", count_attempt=False)
                raise
            except (SystemExit, KeyboardInterrupt) as e:
                if isinstance(e, KeyboardInterrupt) and not self._handles_signals:
                    raise  # a real Ctrl-C: with our handlers installed it would arrive as a stop
                # Raised by user code (a connector module): the job fails, the worker lives on.
                reason = InvalidInput(f"user code raised {type(e).__name__}({e}) during job {job.id}")
                return self._failed(job, reason, time.monotonic() - t0)
            except Exception as e:  # noqa: BLE001 - every failure is recorded on the job
                return self._failed(job, e, time.monotonic() - t0)
        self.stats.done += 1
        where = f"mlflow run {run_id}" if run_id else "kept in the outbox (MLflow unreachable)"
        result = computed.result
        losses = " ".join(f"{k}={v:.4f}" for k, v in result.losses.items())
        log.info(
            "job %d done: %s step %s on %s: %s tokens=%d (%.2f s, %s, attempt %d/%d, %s)",
            job.id,
            pub.result_fields["extra"]["run_name"],
            ck.step,
            es.name,
            losses,
            result.tokens.get("all", 0),
            time.monotonic() - t0,
            self.device,
            job.attempts,
            job.max_attempts,
            where,
        )
        return 0

    def _publish_or_keep(self, job: EvalJobEntity, pub, beat: _Heartbeat) -> str | None:
        """Log to MLflow and complete; when MLflow is unreachable, complete with the result kept."""
        summary = {"losses": dict(pub.record.losses), "tokens": dict(pub.record.tokens)}
        if time.monotonic() >= self._mlflow_down_until:
            try:
                ids, _ = self.evaluator.publish(pub, still_owner=beat.still_owner)
            except queue.LeaseLost:
                raise
            except Exception as e:  # noqa: BLE001 - decided below: unreachable server or a real error
                if self._mlflow_reachable():
                    raise
                log.warning(
                    "job %d: MLflow at %s is unreachable (%s: %s); keeping the result in the outbox",
                    job.id,
                    self.settings.mlflow_uri,
                    type(e).__name__,
                    str(e).splitlines()[0][:200],
                )
                self._mlflow_down_until = time.monotonic() + self.config.outbox_seconds
            else:
                queue.complete(
                    self.reg, job_id=job.id, token=job.fencing_token, mlflow_run_id=ids.get("run_id"), result=summary
                )
                return ids.get("run_id")
        queue.complete(self.reg, job_id=job.id, token=job.fencing_token, result=pub.to_dict(), outbox=True)
        self.stats.outbox += 1
        return None

    def _failed(self, job: EvalJobEntity, error: Exception, seconds: float) -> int:
        if is_unrecoverable_device_error(error):
            log.error(
                "job %d: unrecoverable device error on %s: %s; releasing the job and exiting",
                job.id,
                self.device,
                error,
            )
            self._give_back(job, f"unrecoverable device error on {self.device}: {error}", count_attempt=True)
            return EXIT_DEVICE_FAULT
        try:
            after = queue.fail(self.reg, job_id=job.id, token=job.fencing_token, error=error)
        except queue.LeaseLost as e:
            self.stats.lost += 1
            log.warning("job %d: %s", job.id, e)
            return 0
        self.stats.failed += after.status == "failed"
        fate = "failed" if after.status == "failed" else f"will be retried ({after.attempts}/{after.max_attempts})"
        log.error(
            "job %d %s after %.2f s: %s: %s",
            job.id,
            fate,
            seconds,
            type(error).__name__,
            error,
            exc_info=not isinstance(error, EvalboardError),
        )
        return 0

    def _give_back(self, job: EvalJobEntity, reason: str, *, count_attempt: bool) -> None:
        try:
            queue.release(self.reg, job_id=job.id, token=job.fencing_token, reason=reason, count_attempt=count_attempt)
        except EvalboardError as e:
            log.warning("job %d: could not release it: %s", job.id, e)

    # -- housekeeping ------------------------------------------------------------------------

    def maintain(self, force: bool = False) -> None:
        """Reap expired leases, flush the outbox and reconcile MLflow when their time has come."""
        now = time.monotonic()
        try:
            reaped = queue.reap_expired(self.reg)
            if reaped["queued"] or reaped["failed"]:
                log.warning(
                    "expired leases: jobs %s back in the queue, jobs %s failed (no attempts left)",
                    reaped["queued"],
                    reaped["failed"],
                )
        except EvalboardError as e:
            log.warning("could not reap expired leases: %s", e)
        if force or now >= self._next_outbox:
            self._next_outbox = now + self.config.outbox_seconds
            self.flush_outbox()
        if force or now >= self._next_reconcile:
            self._next_reconcile = now + self.config.reconcile_seconds
            self.reconcile()

    def reconcile(self, hosts_gone: Sequence[str] = ()) -> dict[str, list[str]]:
        """Close MLflow runs of dead attempts and dead processes (see `Tracker.reconcile`)."""
        try:
            out = self.evaluator.tracker.reconcile(
                lambda: queue.live_leases(self.reg), self._done_runs, hosts_gone=hosts_gone
            )
        except Exception as e:  # noqa: BLE001 - MLflow away: try again next time
            log.warning("could not reconcile MLflow runs: %s: %s", type(e).__name__, str(e).splitlines()[0][:200])
            return {"killed": [], "superseded": []}
        if out["killed"] or out["superseded"]:
            log.info("reconciled MLflow: killed %s, superseded %s", out["killed"], out["superseded"])
        return out

    def _done_runs(self) -> dict[int, str | None]:
        return {j.id: j.mlflow_run_id for j in self.reg.list_jobs(status="done")}

    def flush_outbox(self) -> int:
        """Log results kept while MLflow was unreachable; returns how many were logged."""
        from evaluator.service import Publication

        if not queue.outbox_pending(self.reg) or not self._mlflow_reachable():
            return 0
        logged = 0
        while (
            job := queue.claim_outbox(self.reg, worker_id=self.worker_id, lease_seconds=self.config.lease_seconds)
        ) is not None:
            assert job.result is not None  # a pending outbox entry keeps its result (queue.complete)
            pub = Publication.from_dict(job.result)
            try:
                with _Heartbeat(self.reg, job, self.config) as lease:
                    ids, _ = self.evaluator.publish(pub, still_owner=lease.still_owner)
                queue.mark_logged(self.reg, job_id=job.id, token=job.fencing_token, mlflow_run_id=ids["run_id"])
            except queue.LeaseLost as e:
                log.warning("outbox job %d: %s", job.id, e)
                continue
            except Exception as e:  # noqa: BLE001 - leave it pending; its lease expires and it is retried
                log.warning(
                    "outbox job %d: could not log it yet: %s: %s",
                    job.id,
                    type(e).__name__,
                    str(e).splitlines()[0][:200],
                )
                return logged
            logged += 1
            log.info("outbox job %d logged to MLflow run %s", job.id, ids["run_id"])
        self._mlflow_down_until = 0.0
        return logged

    def _mlflow_reachable(self) -> bool:
        from evaluator.tracking import mlflow_available

        return mlflow_available(self.settings.mlflow_uri)


def supervise_gpus(argv: list[str], devices: list[int]) -> int:
    """`--gpus`: one worker process per device, signals forwarded; returns the first failure's status.

    Each child is a plain `evalboard worker --device cuda:N`, so a crashed one can be restarted by
    itself (systemd/SLURM restart the parent, which starts them all again)."""
    import subprocess

    from registry.processes import child_env, python_module_command

    env = child_env()
    children = [
        subprocess.Popen(python_module_command("evalboard.cli", "worker", "--device", f"cuda:{d}", *argv), env=env)
        for d in devices
    ]

    def forward(signum, _frame):
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return next((c for c in codes if c), 0)

"""The evaluation queue: a handful of verbs over the `eval_jobs` table, on SQLite and PostgreSQL.

    enqueue      add a job, deduplicated on (checkpoint content, eval-set content) unless forced
    claim        take the best queued job (or one whose lease expired): ONE atomic statement
    heartbeat    extend the lease of a job you hold
    complete     mark it done (with its MLflow run, or its result kept in the outbox)
    fail         record an error: back to the queue while attempts remain, else `failed`
    release      give a job back (SIGTERM, unusable GPU)
    cancel       take a job out of the queue
    retry        put a failed or cancelled job back, attempts reset
    reap_expired put jobs whose lease expired back in the queue (or fail them: no attempts left)
    claim_outbox / mark_logged / outbox_pending   results computed while MLflow was unreachable
    live_workers workers whose last claim attempt or heartbeat is within their lease

Why one statement: select-then-update lets two workers read the same queued row and both take
it. PostgreSQL locks the chosen row with `FOR UPDATE SKIP LOCKED` inside the UPDATE's subquery, so
concurrent claimers skip each other's rows instead of waiting; SQLite has no row locks but the
registry opens write transactions with `BEGIN IMMEDIATE`, so the UPDATE ... RETURNING runs alone.
(SQLAlchemy silently drops `skip_locked` on SQLite, hence hand-written SQL per dialect.) The
statements live in the store (`Registry.claim_job` and its neighbours), the only module that holds
a database session; these verbs check their arguments and name the rules.

Leases are timed by the database's clock (`now()` / `strftime('now')` inside the SQL), never the
worker's, so a worker with a skewed clock cannot steal or keep jobs. Each claim increments the
job's `fencing_token`; heartbeat, complete, fail and release must present the token they got, so
a worker that lost its lease (someone else claimed the job since) is refused with `LeaseLost`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from registry.entities import EvalJobEntity, WorkerEntity
from registry.errors import InvalidInput, LeaseLost
from registry.store import Registry

__all__ = [
    "LeaseLost",
    "enqueue",
    "claim",
    "heartbeat",
    "complete",
    "fail",
    "release",
    "cancel",
    "retry",
    "reap_expired",
    "claim_outbox",
    "mark_logged",
    "outbox_pending",
    "live_leases",
    "live_workers",
    "worker_gone",
    "db_now",
]

MAX_ERROR_CHARS = 4000


def _check_lease(lease_seconds: float) -> float:
    if not lease_seconds > 0:
        raise InvalidInput(f"lease_seconds must be positive, got {lease_seconds}")
    return float(lease_seconds)


def _error_text(error: BaseException | str) -> str:
    if isinstance(error, BaseException):
        error = f"{type(error).__name__}: {error}"
    return str(error)[:MAX_ERROR_CHARS]


# -- verbs ------------------------------------------------------------------------------------------


def enqueue(
    reg: Registry,
    *,
    checkpoint_id: int,
    evalset_id: int,
    force: bool = False,
    max_attempts: int = 3,
    options: dict[str, Any] | None = None,
    priority: int = 0,
) -> tuple[EvalJobEntity, bool]:
    """Queue an evaluation; returns (job, created). See `Registry.enqueue_job` for the dedupe."""
    return reg.enqueue_job(
        checkpoint_id=checkpoint_id,
        evalset_id=evalset_id,
        force=force,
        max_attempts=max_attempts,
        options=options,
        priority=priority,
    )


def claim(
    reg: Registry, *, worker_id: str, lease_seconds: float = 60.0, prefer_base_model: str | None = None
) -> EvalJobEntity | None:
    """Take one job, or None when there is none. The claim is committed before this returns.

    Candidates: queued jobs, and running jobs whose lease expired with attempts left (their
    worker died). Order: jobs whose checkpoint's base model is `prefer_base_model` first (no base
    reload), then higher priority, then oldest. Each claim counts one attempt and a new token.
    """
    return reg.claim_job(
        worker_id=worker_id, lease_seconds=_check_lease(lease_seconds), prefer_base_model=prefer_base_model
    )


def heartbeat(reg: Registry, *, job_id: int, token: int, lease_seconds: float = 60.0) -> bool:
    """Extend the lease to now + lease_seconds (DB clock). False when the job is no longer ours.
    Also extends the lease of an outbox entry taken with `claim_outbox`."""
    return reg.heartbeat_job(job_id=job_id, token=token, lease_seconds=_check_lease(lease_seconds))


def complete(
    reg: Registry,
    *,
    job_id: int,
    token: int,
    mlflow_run_id: str | None = None,
    result: dict[str, Any] | None = None,
    outbox: bool = False,
) -> EvalJobEntity:
    """Mark the job done. With `outbox=True` the result (everything needed to log it) is kept in
    the job with outbox_state 'pending' because MLflow could not be reached; `claim_outbox` and
    `mark_logged` finish it later. Raises `LeaseLost` when the token is stale."""
    if outbox and result is None:
        raise InvalidInput("complete(outbox=True) needs the result to keep")
    state = "pending" if outbox else ("logged" if mlflow_run_id else "none")
    return reg.complete_job(job_id=job_id, token=token, mlflow_run_id=mlflow_run_id, outbox_state=state, result=result)


def fail(
    reg: Registry, *, job_id: int, token: int, error: BaseException | str, retryable: bool | None = None
) -> EvalJobEntity:
    """Record `error`. A retryable error puts the job back while attempts remain; a non-retryable
    one (an `EvalboardError` whose `retryable` is False: bad input, unsafe pickle, non-finite loss)
    fails it at once. Raises `LeaseLost` when the token is stale."""
    if retryable is None:
        retryable = getattr(error, "retryable", True) if isinstance(error, BaseException) else True
    return reg.finish_job_attempt(
        job_id=job_id, token=token, error=_error_text(error), give_up=not retryable, verb="fail"
    )


def release(
    reg: Registry, *, job_id: int, token: int, reason: str = "released by its worker", count_attempt: bool = False
) -> EvalJobEntity:
    """Give the job back to the queue. A release that is not the job's fault (SIGTERM) does not
    count as an attempt; one that might be (a CUDA error) does, so a poison job still ends."""
    return reg.finish_job_attempt(
        job_id=job_id, token=token, error=_error_text(reason), give_up=False, verb="release", uncount=not count_attempt
    )


def cancel(reg: Registry, *, job_id: int, running: bool = False) -> bool:
    """Cancel a queued job (and a running one when `running=True`: its worker's token is then
    stale, so it cannot complete it). Returns whether the job changed."""
    return reg.cancel_job(job_id=job_id, running=running)


def retry(reg: Registry, *, job_id: int) -> bool:
    """Put a failed or cancelled job back in the queue with its attempts reset."""
    return reg.retry_job(job_id=job_id)


def reap_expired(reg: Registry) -> dict[str, list[int]]:
    """Running jobs whose lease expired (their worker died): back to the queue, or `failed` when
    they used all their attempts (a job that kills its worker is a poison job).
    `claim` also takes expired jobs directly; reaping keeps the status table truthful."""
    return reg.reap_expired_jobs()


# -- the outbox -------------------------------------------------------------------------------------


def outbox_pending(reg: Registry) -> list[EvalJobEntity]:
    """Done jobs whose result is kept here because MLflow was unreachable when they finished."""
    return reg.outbox_jobs()


def claim_outbox(reg: Registry, *, worker_id: str, lease_seconds: float = 60.0) -> EvalJobEntity | None:
    """Take one pending outbox entry to log it (leased and fenced like a job, so two workers
    flushing at once do not both log it)."""
    return reg.claim_outbox_job(worker_id=worker_id, lease_seconds=_check_lease(lease_seconds))


def mark_logged(reg: Registry, *, job_id: int, token: int, mlflow_run_id: str) -> EvalJobEntity:
    """The outbox entry reached MLflow as run `mlflow_run_id`."""
    return reg.mark_job_logged(job_id=job_id, token=token, mlflow_run_id=mlflow_run_id)


def live_leases(reg: Registry) -> dict[int, int]:
    """job id -> fencing token of every unexpired lease (running jobs and outbox flushes).
    An MLflow run tagged with another token (or a job missing here) belongs to a dead attempt."""
    return reg.live_leases()


def live_workers(reg: Registry) -> list[WorkerEntity]:
    """Workers seen within their lease (a claim attempt or a heartbeat), most recent first: a
    queued job is picked up only if this is not empty."""
    return reg.live_workers()


def worker_gone(reg: Registry, worker_id: str) -> None:
    """A worker that stops cleanly says so, instead of looking alive until its lease runs out."""
    reg.worker_gone(worker_id=worker_id)


def db_now(reg: Registry) -> datetime:
    """The database's current time (UTC), the clock every lease is measured against."""
    return reg.db_now()

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
(SQLAlchemy silently drops `skip_locked` on SQLite, hence hand-written SQL per dialect.)

Leases are timed by the database's clock (`now()` / `strftime('now')` inside the SQL), never the
worker's, so a worker with a skewed clock cannot steal or keep jobs. Each claim increments the
job's `fencing_token`; heartbeat, complete, fail and release must present the token they got, so
a worker that lost its lease (someone else claimed the job since) is refused with `LeaseLost`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from registry import models as M
from registry.entities import EvalJobEntity, WorkerEntity
from registry.errors import EvalboardError, InvalidInput, NotFound
from registry.store import Registry, _entity

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


class LeaseLost(EvalboardError):
    """The job is no longer this worker's: its lease expired and another worker claimed it, or it
    was cancelled. The worker must drop it without writing anything."""


# -- dialect fragments: the database's clock ------------------------------------------------------
# SQLite stores SQLAlchemy datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' text and compares text, so the
# SQL clock must produce the same format: strftime gives milliseconds, padded to microseconds.

_SQLITE_NOW = "(strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')"
_SQLITE_LEASE = "(strftime('%Y-%m-%d %H:%M:%f', 'now', '+' || :lease || ' seconds') || '000')"
_SQLITE_SECONDS_SINCE_START = "((julianday('now') - julianday(started_at)) * 86400.0)"
_PG_NOW = "now()"
_PG_LEASE = "(now() + make_interval(secs => :lease))"
_PG_SECONDS_SINCE_START = "EXTRACT(EPOCH FROM (now() - started_at))"


def _sql(reg: Registry) -> dict[str, str]:
    if reg.dialect == "postgresql":
        return {"now": _PG_NOW, "lease": _PG_LEASE, "elapsed": _PG_SECONDS_SINCE_START,
                "lock": "FOR UPDATE OF j SKIP LOCKED", "pref": "CAST(:pref AS VARCHAR)"}
    return {"now": _SQLITE_NOW, "lease": _SQLITE_LEASE, "elapsed": _SQLITE_SECONDS_SINCE_START,
            "lock": "", "pref": ":pref"}


def _check_lease(lease_seconds: float) -> float:
    if not lease_seconds > 0:
        raise InvalidInput(f"lease_seconds must be positive, got {lease_seconds}")
    return float(lease_seconds)


def _job(s, job_id: int) -> EvalJobEntity:
    row = s.get(M.EvalJob, job_id)
    if row is None:
        raise NotFound(f"no job with id {job_id} is registered")
    s.refresh(row)
    return _entity(row)


def _lost(s, job_id: int, token: int, verb: str) -> LeaseLost:
    row = s.get(M.EvalJob, job_id)
    if row is None:
        return LeaseLost(f"cannot {verb} job {job_id}: it no longer exists")
    s.refresh(row)
    return LeaseLost(
        f"cannot {verb} job {job_id} with fencing token {token}: the job is {row.status} with token "
        f"{row.fencing_token} (worker {row.worker_id}); its lease was lost, nothing was written")


def _error_text(error: BaseException | str) -> str:
    if isinstance(error, BaseException):
        error = f"{type(error).__name__}: {error}"
    return str(error)[:MAX_ERROR_CHARS]


def _seen(s, q: dict[str, str], worker_id: str, lease: float) -> None:
    """Record that `worker_id` is alive for the next `lease` seconds (database clock)."""
    s.execute(text(f"""
        INSERT INTO workers (worker_id, first_seen, last_seen, expires_at)
        VALUES (:worker, {q['now']}, {q['now']}, {q['lease']})
        ON CONFLICT (worker_id) DO UPDATE SET last_seen = excluded.last_seen, expires_at = excluded.expires_at"""),
              {"worker": worker_id, "lease": lease})


# -- verbs ------------------------------------------------------------------------------------------


def enqueue(reg: Registry, *, checkpoint_id: int, evalset_id: int, force: bool = False,
            max_attempts: int = 3, options: dict[str, Any] | None = None,
            priority: int = 0) -> tuple[EvalJobEntity, bool]:
    """Queue an evaluation; returns (job, created). See `Registry.enqueue_job` for the dedupe."""
    return reg.enqueue_job(checkpoint_id=checkpoint_id, evalset_id=evalset_id, force=force,
                           max_attempts=max_attempts, options=options, priority=priority)


def claim(reg: Registry, *, worker_id: str, lease_seconds: float = 60.0,
          prefer_base_model: str | None = None) -> EvalJobEntity | None:
    """Take one job, or None when there is none. The claim is committed before this returns.

    Candidates: queued jobs, and running jobs whose lease expired with attempts left (their
    worker died). Order: jobs whose checkpoint's base model is `prefer_base_model` first (no base
    reload), then higher priority, then oldest. Each claim counts one attempt and a new token.
    """
    q = _sql(reg)
    statement = text(f"""
        UPDATE eval_jobs
           SET status = 'running', attempts = attempts + 1, fencing_token = fencing_token + 1,
               worker_id = :worker, lease_expires_at = {q['lease']}, started_at = {q['now']},
               finished_at = NULL, duration_s = NULL
         WHERE id = (
             SELECT j.id FROM eval_jobs j JOIN checkpoints c ON c.id = j.checkpoint_id
              WHERE j.status = 'queued'
                 OR (j.status = 'running' AND j.lease_expires_at < {q['now']}
                     AND j.attempts < j.max_attempts)
              ORDER BY CASE WHEN c.base_model = {q['pref']} THEN 0 ELSE 1 END, j.priority DESC, j.id
              LIMIT 1 {q['lock']})
        RETURNING id""")
    params = {"worker": worker_id, "lease": _check_lease(lease_seconds), "pref": prefer_base_model}
    with reg._session() as s:
        _seen(s, q, worker_id, params["lease"])
        job_id = s.execute(statement, params).scalar()
        return None if job_id is None else _job(s, job_id)


def heartbeat(reg: Registry, *, job_id: int, token: int, lease_seconds: float = 60.0) -> bool:
    """Extend the lease to now + lease_seconds (DB clock). False when the job is no longer ours.
    Also extends the lease of an outbox entry taken with `claim_outbox`."""
    q = _sql(reg)
    statement = text(f"""
        UPDATE eval_jobs SET lease_expires_at = {q['lease']}
         WHERE id = :id AND fencing_token = :token
           AND (status = 'running' OR (status = 'done' AND outbox_state = 'pending'))""")
    lease = _check_lease(lease_seconds)
    with reg._session() as s:
        if s.execute(statement, {"id": job_id, "token": token, "lease": lease}).rowcount != 1:
            return False
        s.execute(text(f"""
            UPDATE workers SET last_seen = {q['now']}, expires_at = {q['lease']}
             WHERE worker_id = (SELECT worker_id FROM eval_jobs WHERE id = :id)"""), {"id": job_id, "lease": lease})
        return True


def complete(reg: Registry, *, job_id: int, token: int, mlflow_run_id: str | None = None,
             result: dict[str, Any] | None = None, outbox: bool = False) -> EvalJobEntity:
    """Mark the job done. With `outbox=True` the result (everything needed to log it) is kept in
    the job with outbox_state 'pending' because MLflow could not be reached; `claim_outbox` and
    `mark_logged` finish it later. Raises `LeaseLost` when the token is stale."""
    if outbox and result is None:
        raise InvalidInput("complete(outbox=True) needs the result to keep")
    state = "pending" if outbox else ("logged" if mlflow_run_id else "none")
    q = _sql(reg)
    statement = text(f"""
        UPDATE eval_jobs
           SET status = 'done', finished_at = {q['now']}, duration_s = {q['elapsed']},
               lease_expires_at = NULL, mlflow_run_id = :run, outbox_state = :state,
               last_error = NULL
         WHERE id = :id AND fencing_token = :token AND status = 'running'""")
    with reg._session() as s:
        params = {"id": job_id, "token": token, "run": mlflow_run_id, "state": state}
        if s.execute(statement, params).rowcount != 1:
            raise _lost(s, job_id, token, "complete")
        row = s.get(M.EvalJob, job_id)
        row.result = result
        s.flush()
        return _job(s, job_id)


def fail(reg: Registry, *, job_id: int, token: int, error: BaseException | str,
         retryable: bool | None = None) -> EvalJobEntity:
    """Record `error`. A retryable error puts the job back while attempts remain; a non-retryable
    one (an `EvalboardError` whose `retryable` is False: bad input, unsafe pickle, non-finite loss)
    fails it at once. Raises `LeaseLost` when the token is stale."""
    if retryable is None:
        retryable = getattr(error, "retryable", True) if isinstance(error, BaseException) else True
    return _finish_attempt(reg, job_id, token, _error_text(error), give_up=not retryable, verb="fail")


def release(reg: Registry, *, job_id: int, token: int, reason: str = "released by its worker",
            count_attempt: bool = False) -> EvalJobEntity:
    """Give the job back to the queue. A release that is not the job's fault (SIGTERM) does not
    count as an attempt; one that might be (a CUDA error) does, so a poison job still ends."""
    return _finish_attempt(reg, job_id, token, reason, give_up=False, verb="release",
                           uncount=not count_attempt)


def _finish_attempt(reg: Registry, job_id: int, token: int, error: str, *, give_up: bool, verb: str,
                    uncount: bool = False) -> EvalJobEntity:
    q = _sql(reg)
    attempts = "attempts - 1" if uncount else "attempts"
    statement = text(f"""
        UPDATE eval_jobs
           SET attempts = {attempts},
               status = CASE WHEN :give_up OR {attempts} >= max_attempts THEN 'failed' ELSE 'queued' END,
               finished_at = CASE WHEN :give_up OR {attempts} >= max_attempts THEN {q['now']} ELSE NULL END,
               duration_s = {q['elapsed']}, lease_expires_at = NULL, last_error = :error
         WHERE id = :id AND fencing_token = :token AND status = 'running'""")
    with reg._session() as s:
        params = {"id": job_id, "token": token, "error": error, "give_up": give_up}
        if s.execute(statement, params).rowcount != 1:
            raise _lost(s, job_id, token, verb)
        return _job(s, job_id)


def cancel(reg: Registry, *, job_id: int, running: bool = False) -> bool:
    """Cancel a queued job (and a running one when `running=True`: its worker's token is then
    stale, so it cannot complete it). Returns whether the job changed."""
    statuses = "('queued', 'running')" if running else "('queued')"
    q = _sql(reg)
    statement = text(f"""
        UPDATE eval_jobs
           SET status = 'cancelled', finished_at = {q['now']}, lease_expires_at = NULL,
               fencing_token = fencing_token + 1
         WHERE id = :id AND status IN {statuses}""")
    with reg._session() as s:
        changed = s.execute(statement, {"id": job_id}).rowcount == 1
        if not changed:
            _job(s, job_id)  # NotFound for an unknown id
        return changed


def retry(reg: Registry, *, job_id: int) -> bool:
    """Put a failed or cancelled job back in the queue with its attempts reset."""
    q = _sql(reg)
    statement = text(f"""
        UPDATE eval_jobs
           SET status = 'queued', attempts = 0, worker_id = NULL, lease_expires_at = NULL,
               started_at = NULL, finished_at = NULL, duration_s = NULL, enqueued_at = {q['now']}
         WHERE id = :id AND status IN ('failed', 'cancelled')""")
    with reg._session() as s:
        changed = s.execute(statement, {"id": job_id}).rowcount == 1
        if not changed:
            _job(s, job_id)
        return changed


def reap_expired(reg: Registry) -> dict[str, list[int]]:
    """Running jobs whose lease expired (their worker died): back to the queue, or `failed` when
    they used all their attempts (a job that kills its worker is a poison job).
    `claim` also takes expired jobs directly; reaping keeps the status table truthful."""
    q = _sql(reg)
    expired = f"status = 'running' AND lease_expires_at < {q['now']}"
    requeue = text(f"""
        UPDATE eval_jobs SET status = 'queued', lease_expires_at = NULL,
               last_error = 'lease expired: worker ' || COALESCE(worker_id, '?') || ' stopped heartbeating'
         WHERE {expired} AND attempts < max_attempts RETURNING id""")
    give_up = text(f"""
        UPDATE eval_jobs SET status = 'failed', lease_expires_at = NULL, finished_at = {q['now']},
               last_error = 'lease expired on attempt ' || attempts || ' of ' || max_attempts
                            || ' (worker ' || COALESCE(worker_id, '?') || ' stopped heartbeating)'
         WHERE {expired} AND attempts >= max_attempts RETURNING id""")
    with reg._session() as s:
        failed = sorted(s.execute(give_up).scalars())
        queued = sorted(s.execute(requeue).scalars())
    return {"queued": queued, "failed": failed}


# -- the outbox -------------------------------------------------------------------------------------


def outbox_pending(reg: Registry) -> list[EvalJobEntity]:
    """Done jobs whose result is kept here because MLflow was unreachable when they finished."""
    with reg._session(write=False) as s:
        rows = s.query(M.EvalJob).filter(M.EvalJob.status == "done", M.EvalJob.outbox_state == "pending")
        return [_entity(r) for r in rows.order_by(M.EvalJob.id)]


def claim_outbox(reg: Registry, *, worker_id: str, lease_seconds: float = 60.0) -> EvalJobEntity | None:
    """Take one pending outbox entry to log it (leased and fenced like a job, so two workers
    flushing at once do not both log it)."""
    q = _sql(reg)
    statement = text(f"""
        UPDATE eval_jobs
           SET fencing_token = fencing_token + 1, worker_id = :worker, lease_expires_at = {q['lease']}
         WHERE id = (
             SELECT j.id FROM eval_jobs j
              WHERE j.status = 'done' AND j.outbox_state = 'pending'
                AND (j.lease_expires_at IS NULL OR j.lease_expires_at < {q['now']})
              ORDER BY j.id LIMIT 1 {q['lock']})
        RETURNING id""")
    with reg._session() as s:
        job_id = s.execute(statement, {"worker": worker_id, "lease": _check_lease(lease_seconds)}).scalar()
        return None if job_id is None else _job(s, job_id)


def mark_logged(reg: Registry, *, job_id: int, token: int, mlflow_run_id: str) -> EvalJobEntity:
    """The outbox entry reached MLflow as run `mlflow_run_id`."""
    statement = text("""
        UPDATE eval_jobs SET outbox_state = 'logged', mlflow_run_id = :run, lease_expires_at = NULL
         WHERE id = :id AND fencing_token = :token AND status = 'done' AND outbox_state = 'pending'""")
    with reg._session() as s:
        if s.execute(statement, {"id": job_id, "token": token, "run": mlflow_run_id}).rowcount != 1:
            raise _lost(s, job_id, token, "mark logged")
        return _job(s, job_id)


def live_leases(reg: Registry) -> dict[int, int]:
    """job id -> fencing token of every unexpired lease (running jobs and outbox flushes).
    An MLflow run tagged with another token (or a job missing here) belongs to a dead attempt."""
    q = _sql(reg)
    statement = text(f"""
        SELECT id, fencing_token FROM eval_jobs
         WHERE lease_expires_at IS NOT NULL AND lease_expires_at > {q['now']}
           AND (status = 'running' OR (status = 'done' AND outbox_state = 'pending'))""")
    with reg._session(write=False) as s:
        return {int(i): int(t) for i, t in s.execute(statement)}


def live_workers(reg: Registry) -> list[WorkerEntity]:
    """Workers seen within their lease (a claim attempt or a heartbeat), most recent first: a
    queued job is picked up only if this is not empty."""
    q = _sql(reg)
    statement = text(f"SELECT worker_id FROM workers WHERE expires_at > {q['now']} ORDER BY last_seen DESC")
    with reg._session(write=False) as s:
        ids = list(s.scalars(statement))
        return [_entity(s.get(M.Worker, worker_id)) for worker_id in ids]


def worker_gone(reg: Registry, worker_id: str) -> None:
    """A worker that stops cleanly says so, instead of looking alive until its lease runs out."""
    q = _sql(reg)
    with reg._session() as s:
        s.execute(text(f"UPDATE workers SET expires_at = {q['now']} WHERE worker_id = :worker"),
                  {"worker": worker_id})


def db_now(reg: Registry):
    """The database's current time (UTC), the clock every lease is measured against."""
    from registry.store import _utc

    q = _sql(reg)
    with reg._session(write=False) as s:
        value = s.execute(text(f"SELECT {q['now']}")).scalar()
    if isinstance(value, str):
        from datetime import datetime

        value = datetime.fromisoformat(value)
    return _utc(value)

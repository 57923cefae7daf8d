"""The queue: jobs, with the dedupe rule (`EvalKey.dedupe_key`) and the SQL of the queue's verbs
(claim, heartbeat, complete, fail, release, cancel, retry, reap, the MLflow outbox)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from registry import entities as E
from registry import models as M
from registry.errors import InvalidInput, LeaseLost, NotFound
from registry.eval_key import EvalKey
from registry.job_options import JobOptions
from registry.store._base import _check_choice, _entities, _entity, _get_one, _rowcount, _Store, _utc

_INACTIVE_JOB_STATUSES = ("failed", "cancelled")


def _dedupe_key(checkpoint: M.Checkpoint, evalset: M.EvalSet, options: dict[str, Any]) -> str:
    """One job per checkpoint content and eval-set content; a quick subset and the full
    evaluation are different jobs (`EvalKey.dedupe_key`)."""
    return EvalKey(checkpoint.content_hash or "", evalset.content_hash, options.get("max_examples")).dedupe_key


class Jobs(_Store):
    # -- jobs (the queue verbs live in registry/queue.py) -----------------------------------

    def enqueue_job(
        self,
        *,
        checkpoint_id: int,
        evalset_id: int,
        force: bool = False,
        max_attempts: int = 3,
        options: JobOptions | Mapping[str, Any] | None = None,
        priority: int = 0,
    ) -> tuple[E.EvalJobEntity, bool]:
        """Queue an evaluation; returns (job, created). Without `force`, an existing job for the
        same checkpoint content and eval-set content (not failed or cancelled) is returned.
        ``options`` are parsed by `JobOptions.parse`: an unknown or mistyped one is refused here."""
        if max_attempts < 1:
            raise InvalidInput(f"max_attempts must be at least 1, got {max_attempts}")
        parsed = JobOptions.parse(options)
        with self._session() as s:
            checkpoint = _get_one(s, M.Checkpoint, "checkpoint", id=checkpoint_id)
            evalset = _get_one(s, M.EvalSet, "eval set", id=evalset_id)
            if checkpoint.status != "valid" or not checkpoint.content_hash:
                raise InvalidInput(
                    f"checkpoint {checkpoint.path} cannot be evaluated: it is {checkpoint.status}"
                    + (f" ({checkpoint.reason})" if checkpoint.reason else "")
                )
            if force:
                parsed = replace(parsed, force=True)  # the worker evaluates again even if a result exists
            stored = parsed.to_dict()
            key = _dedupe_key(checkpoint, evalset, stored)
            self._lock_key(s, key)
            if not force:
                existing = s.scalars(
                    select(M.EvalJob)
                    .where(M.EvalJob.dedupe_key == key, M.EvalJob.status.not_in(_INACTIVE_JOB_STATUSES))
                    .order_by(M.EvalJob.id)
                    .limit(1)
                ).first()
                if existing is not None:
                    return _entity(existing), False
            job = M.EvalJob(
                checkpoint_id=checkpoint_id,
                evalset_id=evalset_id,
                dedupe_key=key,
                max_attempts=max_attempts,
                priority=priority,
                options=stored,
            )
            s.add(job)
            s.flush()
            return _entity(job), True

    def find_active_job(
        self, *, checkpoint_id: int, evalset_id: int, options: JobOptions | Mapping[str, Any] | None = None
    ) -> E.EvalJobEntity | None:
        """The job `enqueue_job` would return instead of creating one (same checkpoint content,
        eval-set content and subset; not failed or cancelled), if any."""
        with self._session(write=False) as s:
            checkpoint = _get_one(s, M.Checkpoint, "checkpoint", id=checkpoint_id)
            evalset = _get_one(s, M.EvalSet, "eval set", id=evalset_id)
            if not checkpoint.content_hash:
                return None
            row = s.scalars(
                select(M.EvalJob)
                .where(
                    M.EvalJob.dedupe_key == _dedupe_key(checkpoint, evalset, JobOptions.parse(options).to_dict()),
                    M.EvalJob.status.not_in(_INACTIVE_JOB_STATUSES),
                )
                .order_by(M.EvalJob.id)
                .limit(1)
            ).first()
            return None if row is None else _entity(row)

    def _lock_key(self, s: Session, key: str) -> None:
        """Serialise check-then-insert on `key`. SQLite already holds the write lock
        (BEGIN IMMEDIATE); PostgreSQL takes a transaction-scoped advisory lock on its hash."""
        if self.dialect == "postgresql":
            s.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})

    def list_jobs(self, *, status: str | None = None) -> list[E.EvalJobEntity]:
        query = select(M.EvalJob).order_by(M.EvalJob.id)
        if status is not None:
            _check_choice("job status", status, M.JOB_STATUSES)
            query = query.where(M.EvalJob.status == status)
        with self._session(write=False) as s:
            return _entities(s.scalars(query))

    def get_job(self, *, id: int) -> E.EvalJobEntity:
        with self._session(write=False) as s:
            return _entity(_get_one(s, M.EvalJob, "job", id=id))

    # -- the queue's statements (the verbs, with their rules, are registry/queue.py) ----------
    # Leases are timed by the database's clock, never the caller's; each statement is one atomic
    # UPDATE guarded by the job's fencing token (see registry/queue.py for why).

    def _clock(self) -> dict[str, str]:
        return _PG_CLOCK if self.dialect == "postgresql" else _SQLITE_CLOCK

    def claim_job(
        self, *, worker_id: str, lease_seconds: float, prefer_base_model: str | None = None
    ) -> E.EvalJobEntity | None:
        """Take the best queued job (or a running one whose lease expired with attempts left)
        in one statement, recording the worker as seen; None when there is none."""
        q = self._clock()
        statement = text(f"""
            UPDATE eval_jobs
               SET status = 'running', attempts = attempts + 1, fencing_token = fencing_token + 1,
                   worker_id = :worker, lease_expires_at = {q["lease"]}, started_at = {q["now"]},
                   finished_at = NULL, duration_s = NULL
             WHERE id = (
                 SELECT j.id FROM eval_jobs j JOIN checkpoints c ON c.id = j.checkpoint_id
                  WHERE j.status = 'queued'
                     OR (j.status = 'running' AND j.lease_expires_at < {q["now"]}
                         AND j.attempts < j.max_attempts)
                  ORDER BY CASE WHEN c.base_model = {q["pref"]} THEN 0 ELSE 1 END, j.priority DESC, j.id
                  LIMIT 1 {q["lock"]})
            RETURNING id""")
        lease = float(lease_seconds)
        params = {"worker": worker_id, "lease": lease, "pref": prefer_base_model}
        with self._session() as s:
            _seen(s, q, worker_id, lease)
            job_id = s.execute(statement, params).scalar()
            return None if job_id is None else _job(s, job_id)

    def heartbeat_job(self, *, job_id: int, token: int, lease_seconds: float) -> bool:
        """Extend the lease of a running job (or a claimed outbox entry) held with `token`."""
        q = self._clock()
        statement = text(f"""
            UPDATE eval_jobs SET lease_expires_at = {q["lease"]}
             WHERE id = :id AND fencing_token = :token
               AND (status = 'running' OR (status = 'done' AND outbox_state = 'pending'))""")
        with self._session() as s:
            if _rowcount(s.execute(statement, {"id": job_id, "token": token, "lease": lease_seconds})) != 1:
                return False
            s.execute(
                text(f"""
                UPDATE workers SET last_seen = {q["now"]}, expires_at = {q["lease"]}
                 WHERE worker_id = (SELECT worker_id FROM eval_jobs WHERE id = :id)"""),
                {"id": job_id, "lease": lease_seconds},
            )
            return True

    def complete_job(
        self, *, job_id: int, token: int, mlflow_run_id: str | None, outbox_state: str, result: dict[str, Any] | None
    ) -> E.EvalJobEntity:
        """Mark a running job held with `token` done; `LeaseLost` when the token is stale."""
        _check_choice("outbox state", outbox_state, ("none", "pending", "logged"))
        q = self._clock()
        statement = text(f"""
            UPDATE eval_jobs
               SET status = 'done', finished_at = {q["now"]}, duration_s = {q["elapsed"]},
                   lease_expires_at = NULL, mlflow_run_id = :run, outbox_state = :state,
                   last_error = NULL
             WHERE id = :id AND fencing_token = :token AND status = 'running'""")
        with self._session() as s:
            params = {"id": job_id, "token": token, "run": mlflow_run_id, "state": outbox_state}
            if _rowcount(s.execute(statement, params)) != 1:
                raise _lost(s, job_id, token, "complete")
            row = s.get_one(M.EvalJob, job_id)
            row.result = result
            s.flush()
            return _job(s, job_id)

    def finish_job_attempt(
        self, *, job_id: int, token: int, error: str, give_up: bool, verb: str, uncount: bool = False
    ) -> E.EvalJobEntity:
        """End the attempt of a running job held with `token`: back to the queue while attempts
        remain (and `give_up` is false), else failed; `uncount` gives the attempt back."""
        q = self._clock()
        attempts = "attempts - 1" if uncount else "attempts"
        statement = text(f"""
            UPDATE eval_jobs
               SET attempts = {attempts},
                   status = CASE WHEN :give_up OR {attempts} >= max_attempts THEN 'failed' ELSE 'queued' END,
                   finished_at = CASE WHEN :give_up OR {attempts} >= max_attempts THEN {q["now"]} ELSE NULL END,
                   duration_s = {q["elapsed"]}, lease_expires_at = NULL, last_error = :error
             WHERE id = :id AND fencing_token = :token AND status = 'running'""")
        with self._session() as s:
            params = {"id": job_id, "token": token, "error": error, "give_up": give_up}
            if _rowcount(s.execute(statement, params)) != 1:
                raise _lost(s, job_id, token, verb)
            return _job(s, job_id)

    def cancel_job(self, *, job_id: int, running: bool = False) -> bool:
        """Cancel a queued (or, with `running`, a running) job and bump its fencing token, so the
        worker that held it cannot finish it. Returns whether it changed; NotFound for no job."""
        statuses = "('queued', 'running')" if running else "('queued')"
        q = self._clock()
        statement = text(f"""
            UPDATE eval_jobs
               SET status = 'cancelled', finished_at = {q["now"]}, lease_expires_at = NULL,
                   fencing_token = fencing_token + 1
             WHERE id = :id AND status IN {statuses}""")
        with self._session() as s:
            changed = _rowcount(s.execute(statement, {"id": job_id})) == 1
            if not changed:
                _job(s, job_id)
            return changed

    def retry_job(self, *, job_id: int) -> bool:
        """Queue a failed or cancelled job again with its attempts reset; whether it changed."""
        q = self._clock()
        statement = text(f"""
            UPDATE eval_jobs
               SET status = 'queued', attempts = 0, worker_id = NULL, lease_expires_at = NULL,
                   started_at = NULL, finished_at = NULL, duration_s = NULL, enqueued_at = {q["now"]}
             WHERE id = :id AND status IN ('failed', 'cancelled')""")
        with self._session() as s:
            changed = _rowcount(s.execute(statement, {"id": job_id})) == 1
            if not changed:
                _job(s, job_id)
            return changed

    def reap_expired_jobs(self) -> dict[str, list[int]]:
        """Running jobs whose lease expired: queued again while attempts remain, else failed."""
        q = self._clock()
        expired = f"status = 'running' AND lease_expires_at < {q['now']}"
        requeue = text(f"""
            UPDATE eval_jobs SET status = 'queued', lease_expires_at = NULL,
                   last_error = 'lease expired: worker ' || COALESCE(worker_id, '?') || ' stopped heartbeating'
             WHERE {expired} AND attempts < max_attempts RETURNING id""")
        give_up = text(f"""
            UPDATE eval_jobs SET status = 'failed', lease_expires_at = NULL, finished_at = {q["now"]},
                   last_error = 'lease expired on attempt ' || attempts || ' of ' || max_attempts
                                || ' (worker ' || COALESCE(worker_id, '?') || ' stopped heartbeating)'
             WHERE {expired} AND attempts >= max_attempts RETURNING id""")
        with self._session() as s:
            failed = sorted(s.execute(give_up).scalars())
            queued = sorted(s.execute(requeue).scalars())
        return {"queued": queued, "failed": failed}

    def outbox_jobs(self) -> list[E.EvalJobEntity]:
        """Done jobs whose result waits in the outbox for MLflow."""
        query = (
            select(M.EvalJob)
            .where(M.EvalJob.status == "done", M.EvalJob.outbox_state == "pending")
            .order_by(M.EvalJob.id)
        )
        with self._session(write=False) as s:
            return _entities(s.scalars(query))

    def claim_outbox_job(self, *, worker_id: str, lease_seconds: float) -> E.EvalJobEntity | None:
        """Lease one pending outbox entry (a new fencing token), or None."""
        q = self._clock()
        statement = text(f"""
            UPDATE eval_jobs
               SET fencing_token = fencing_token + 1, worker_id = :worker, lease_expires_at = {q["lease"]}
             WHERE id = (
                 SELECT j.id FROM eval_jobs j
                  WHERE j.status = 'done' AND j.outbox_state = 'pending'
                    AND (j.lease_expires_at IS NULL OR j.lease_expires_at < {q["now"]})
                  ORDER BY j.id LIMIT 1 {q["lock"]})
            RETURNING id""")
        with self._session() as s:
            job_id = s.execute(statement, {"worker": worker_id, "lease": float(lease_seconds)}).scalar()
            return None if job_id is None else _job(s, job_id)

    def mark_job_logged(self, *, job_id: int, token: int, mlflow_run_id: str) -> E.EvalJobEntity:
        """The outbox entry held with `token` reached MLflow; `LeaseLost` when the token is stale."""
        statement = text("""
            UPDATE eval_jobs SET outbox_state = 'logged', mlflow_run_id = :run, lease_expires_at = NULL
             WHERE id = :id AND fencing_token = :token AND status = 'done' AND outbox_state = 'pending'""")
        with self._session() as s:
            if _rowcount(s.execute(statement, {"id": job_id, "token": token, "run": mlflow_run_id})) != 1:
                raise _lost(s, job_id, token, "mark logged")
            return _job(s, job_id)

    def live_leases(self) -> dict[int, int]:
        """job id -> fencing token of every unexpired lease (running jobs and outbox flushes)."""
        q = self._clock()
        statement = text(f"""
            SELECT id, fencing_token FROM eval_jobs
             WHERE lease_expires_at IS NOT NULL AND lease_expires_at > {q["now"]}
               AND (status = 'running' OR (status = 'done' AND outbox_state = 'pending'))""")
        with self._session(write=False) as s:
            return {int(i): int(t) for i, t in s.execute(statement)}

    def live_workers(self) -> list[E.WorkerEntity]:
        """Workers seen within their lease, most recent first."""
        q = self._clock()
        statement = text(f"SELECT worker_id FROM workers WHERE expires_at > {q['now']} ORDER BY last_seen DESC")
        with self._session(write=False) as s:
            ids = list(s.scalars(statement))
            return [_entity(s.get_one(M.Worker, worker_id)) for worker_id in ids]

    def worker_gone(self, *, worker_id: str) -> None:
        """Mark a worker that stopped cleanly as no longer alive."""
        q = self._clock()
        with self._session() as s:
            s.execute(
                text(f"UPDATE workers SET expires_at = {q['now']} WHERE worker_id = :worker"), {"worker": worker_id}
            )

    def db_now(self) -> datetime:
        """The database's current time (UTC), the clock every lease is measured against."""
        q = self._clock()
        with self._session(write=False) as s:
            value = s.execute(text(f"SELECT {q['now']}")).scalar_one()
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return _utc(value)


# -- the queue's SQL: the database's clock per dialect ------------------------------------------
# SQLite stores SQLAlchemy datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff' text and compares text, so the
# SQL clock must produce the same format: strftime gives milliseconds, padded to microseconds.
# PostgreSQL locks the chosen row with FOR UPDATE SKIP LOCKED (SQLAlchemy drops skip_locked on
# SQLite, whose BEGIN IMMEDIATE already makes the UPDATE ... RETURNING run alone).

_SQLITE_CLOCK = {
    "now": "(strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')",
    "lease": "(strftime('%Y-%m-%d %H:%M:%f', 'now', '+' || :lease || ' seconds') || '000')",
    "elapsed": "((julianday('now') - julianday(started_at)) * 86400.0)",
    "lock": "",
    "pref": ":pref",
}
_PG_CLOCK = {
    "now": "now()",
    "lease": "(now() + make_interval(secs => :lease))",
    "elapsed": "EXTRACT(EPOCH FROM (now() - started_at))",
    "lock": "FOR UPDATE OF j SKIP LOCKED",
    "pref": "CAST(:pref AS VARCHAR)",
}


def _job(s: Session, job_id: int) -> E.EvalJobEntity:
    row = s.get(M.EvalJob, job_id)
    if row is None:
        raise NotFound(f"no job with id {job_id} is registered")
    s.refresh(row)
    return _entity(row)


def _lost(s: Session, job_id: int, token: int, verb: str) -> LeaseLost:
    row = s.get(M.EvalJob, job_id)
    if row is None:
        return LeaseLost(f"cannot {verb} job {job_id}: it no longer exists")
    s.refresh(row)
    return LeaseLost(
        f"cannot {verb} job {job_id} with fencing token {token}: the job is {row.status} with token "
        f"{row.fencing_token} (worker {row.worker_id}); its lease was lost, nothing was written"
    )


def _seen(s: Session, q: dict[str, str], worker_id: str, lease: float) -> None:
    """Record that `worker_id` is alive for the next `lease` seconds (database clock)."""
    s.execute(
        text(f"""
        INSERT INTO workers (worker_id, first_seen, last_seen, expires_at)
        VALUES (:worker, {q["now"]}, {q["now"]}, {q["lease"]})
        ON CONFLICT (worker_id) DO UPDATE SET last_seen = excluded.last_seen, expires_at = excluded.expires_at"""),
        {"worker": worker_id, "lease": lease},
    )

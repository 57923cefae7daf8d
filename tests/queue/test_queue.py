"""Queue semantics on SQLite and PostgreSQL: atomic claims, leases on the database clock, fencing,
poison jobs, non-retryable errors, cancel/retry, reaping, base-model preference, the outbox."""

from __future__ import annotations

import multiprocessing
import threading
import time
from datetime import timedelta

import pytest

from registry import queue
from registry.errors import InvalidInput, NotFound, StoreError, UnsafePickle
from registry.store import Registry
from tests.queue._claimers import claim_all


def wait_until(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def expire(reg: Registry, job_id: int) -> None:
    """Wait (on the database's clock) until the job's lease has run out."""
    lease = reg.get_job(id=job_id).lease_expires_at
    wait_until(lambda: queue.db_now(reg) > lease, what=f"job {job_id}'s lease to expire")


def test_enqueue_deduplicates_unless_forced(registry, jobs):
    (job_id,) = jobs(1)
    job = registry.get_job(id=job_id)
    again, created = queue.enqueue(registry, checkpoint_id=job.checkpoint_id, evalset_id=job.evalset_id)
    assert (again.id, created) == (job_id, False)
    forced, created = queue.enqueue(registry, checkpoint_id=job.checkpoint_id, evalset_id=job.evalset_id, force=True)
    assert created and forced.id != job_id


def test_claim_sets_lease_on_the_database_clock(registry, jobs):
    jobs(1)
    before = queue.db_now(registry)
    job = queue.claim(registry, worker_id="w1", lease_seconds=30)
    after = queue.db_now(registry)
    assert job.status == "running" and job.worker_id == "w1" and job.attempts == 1 and job.fencing_token == 1
    assert before - timedelta(seconds=1) <= job.started_at <= after
    assert abs((job.lease_expires_at - job.started_at).total_seconds() - 30) < 0.5
    assert queue.claim(registry, worker_id="w2") is None  # nothing else queued


def test_heartbeat_extends_the_lease(registry, jobs):
    jobs(1)
    job = queue.claim(registry, worker_id="w1", lease_seconds=1)
    assert queue.heartbeat(registry, job_id=job.id, token=job.fencing_token, lease_seconds=60)
    assert registry.get_job(id=job.id).lease_expires_at > job.lease_expires_at + timedelta(seconds=50)
    assert not queue.heartbeat(registry, job_id=job.id, token=job.fencing_token + 1, lease_seconds=60)


def test_concurrent_threads_never_claim_a_job_twice(registry, jobs, db_url):
    ids = jobs(60)
    claimed: dict[str, list[int]] = {}
    start = threading.Barrier(8)

    def claimer(name: str, reg: Registry) -> None:
        start.wait()
        mine = claimed.setdefault(name, [])
        while (job := queue.claim(reg, worker_id=name, lease_seconds=300)) is not None:
            mine.append(job.id)

    # One Registry (engine, connections) per thread, opened here: alembic's migration context is
    # process-global, so registries must not be opened concurrently from threads.
    registries = [Registry(db_url) for _ in range(8)]
    threads = [threading.Thread(target=claimer, args=(f"t{i}", r)) for i, r in enumerate(registries)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for r in registries:
        r.close()
    every = [j for mine in claimed.values() for j in mine]
    assert sorted(every) == sorted(ids)  # each job exactly once
    assert {j.worker_id for j in registry.list_jobs()} <= set(claimed)


@pytest.mark.slow
def test_concurrent_processes_never_claim_a_job_twice(registry, jobs, db_url):
    ids = jobs(80)
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=claim_all, args=(db_url, f"p{i}", start, results)) for i in range(8)]
    for p in procs:
        p.start()
    start.set()
    got = dict(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    every = [j for mine in got.values() for j in mine]
    assert sorted(every) == sorted(ids)


def test_expired_lease_puts_the_job_back_and_fences_the_stale_worker(registry, jobs):
    jobs(1)
    stale = queue.claim(registry, worker_id="stale", lease_seconds=0.5)
    assert queue.claim(registry, worker_id="fresh", lease_seconds=30) is None  # lease still valid
    expire(registry, stale.id)
    fresh = queue.claim(registry, worker_id="fresh", lease_seconds=30)
    assert fresh.id == stale.id and fresh.fencing_token == stale.fencing_token + 1 and fresh.attempts == 2
    assert not queue.heartbeat(registry, job_id=stale.id, token=stale.fencing_token, lease_seconds=30)
    with pytest.raises(queue.LeaseLost, match=r"cannot complete job \d+ with fencing token 1: .*token 2"):
        queue.complete(registry, job_id=stale.id, token=stale.fencing_token, mlflow_run_id="stale-run")
    with pytest.raises(queue.LeaseLost):
        queue.fail(registry, job_id=stale.id, token=stale.fencing_token, error="late")
    done = queue.complete(registry, job_id=fresh.id, token=fresh.fencing_token, mlflow_run_id="run-1")
    assert done.status == "done" and done.mlflow_run_id == "run-1" and done.worker_id == "fresh"
    assert done.outbox_state == "logged" and done.duration_s is not None and done.finished_at is not None


def test_poison_job_fails_after_max_attempts_with_its_last_error(registry, jobs):
    (job_id,) = jobs(1, max_attempts=3)
    for attempt in range(1, 4):
        job = queue.claim(registry, worker_id="w", lease_seconds=30)
        assert job.id == job_id and job.attempts == attempt
        after = queue.fail(
            registry, job_id=job.id, token=job.fencing_token, error=StoreError(f"connection reset on attempt {attempt}")
        )
        assert after.status == ("failed" if attempt == 3 else "queued")
    assert queue.claim(registry, worker_id="w") is None
    job = registry.get_job(id=job_id)
    assert job.attempts == 3 and job.last_error == "StoreError: connection reset on attempt 3"


def test_non_retryable_error_fails_at_once(registry, jobs):
    (job_id,) = jobs(1, max_attempts=5)
    job = queue.claim(registry, worker_id="w")
    after = queue.fail(
        registry,
        job_id=job.id,
        token=job.fencing_token,
        error=UnsafePickle("needs more than weights_only=True", path="/x/trainable_rows.pt"),
    )
    assert after.status == "failed" and after.attempts == 1
    assert after.last_error.startswith("UnsafePickle: /x/trainable_rows.pt: needs more")


def test_expired_jobs_are_reaped_or_failed_when_out_of_attempts(registry, jobs):
    ids = jobs(2, max_attempts=1)
    a = queue.claim(registry, worker_id="dead-1", lease_seconds=0.3)
    b = queue.claim(registry, worker_id="dead-2", lease_seconds=0.3)
    expire(registry, b.id)
    assert queue.reap_expired(registry) == {"queued": [], "failed": sorted([a.id, b.id])}
    job = registry.get_job(id=ids[0])
    assert job.status == "failed" and "lease expired on attempt 1 of 1" in job.last_error


def test_expired_job_with_attempts_left_goes_back_to_queued(registry, jobs):
    jobs(1, max_attempts=3)
    job = queue.claim(registry, worker_id="dead", lease_seconds=0.3)
    expire(registry, job.id)
    assert queue.reap_expired(registry) == {"queued": [job.id], "failed": []}
    back = registry.get_job(id=job.id)
    assert back.status == "queued" and "worker dead stopped heartbeating" in back.last_error


def test_release_on_sigterm_does_not_count_an_attempt(registry, jobs):
    jobs(1, max_attempts=1)
    job = queue.claim(registry, worker_id="w")
    back = queue.release(registry, job_id=job.id, token=job.fencing_token, reason="SIGTERM")
    assert back.status == "queued" and back.attempts == 0
    again = queue.claim(registry, worker_id="w")
    failed = queue.release(
        registry, job_id=again.id, token=again.fencing_token, reason="CUDA error", count_attempt=True
    )
    assert failed.status == "failed" and failed.last_error == "CUDA error"


def test_cancel_and_retry(registry, jobs):
    a, b = jobs(2)
    assert queue.cancel(registry, job_id=a)
    assert not queue.cancel(registry, job_id=a)  # already cancelled
    running = queue.claim(registry, worker_id="w")
    assert running.id == b
    assert not queue.cancel(registry, job_id=b)  # running jobs belong to their worker...
    assert queue.cancel(registry, job_id=b, running=True)  # ...unless asked
    with pytest.raises(queue.LeaseLost):
        queue.complete(registry, job_id=b, token=running.fencing_token)
    assert queue.claim(registry, worker_id="w") is None
    assert queue.retry(registry, job_id=a) and queue.retry(registry, job_id=b)
    assert not queue.retry(registry, job_id=a)  # queued: nothing to retry
    assert {j.status for j in registry.list_jobs()} == {"queued"}
    assert all(j.attempts == 0 for j in registry.list_jobs())
    with pytest.raises(NotFound, match="no job with id 999"):
        queue.cancel(registry, job_id=999)


def test_claim_prefers_jobs_whose_base_model_is_loaded(registry, jobs):
    ids = jobs(4, base_models=("demo/base-a", "demo/base-b"))
    first = queue.claim(registry, worker_id="w", prefer_base_model="demo/base-b")
    assert first.id == ids[1]
    assert queue.claim(registry, worker_id="w", prefer_base_model="demo/base-b").id == ids[3]
    assert queue.claim(registry, worker_id="w", prefer_base_model="demo/base-b").id == ids[0]
    assert queue.claim(registry, worker_id="w").id == ids[2]


def test_outbox_keeps_the_result_until_it_is_logged(registry, jobs):
    (job_id,) = jobs(1)
    job = queue.claim(registry, worker_id="w")
    with pytest.raises(InvalidInput, match="needs the result"):
        queue.complete(registry, job_id=job.id, token=job.fencing_token, outbox=True)
    kept = queue.complete(
        registry, job_id=job.id, token=job.fencing_token, result={"losses": {"all": 1.5}}, outbox=True
    )
    assert kept.status == "done" and kept.outbox_state == "pending" and kept.mlflow_run_id is None
    assert [j.id for j in queue.outbox_pending(registry)] == [job_id]
    flush = queue.claim_outbox(registry, worker_id="flusher", lease_seconds=30)
    assert flush.id == job_id and flush.result == {"losses": {"all": 1.5}}
    assert queue.claim_outbox(registry, worker_id="other") is None  # leased to the flusher
    assert queue.live_leases(registry) == {job_id: flush.fencing_token}
    with pytest.raises(queue.LeaseLost):
        queue.mark_logged(registry, job_id=job_id, token=job.fencing_token, mlflow_run_id="r")
    logged = queue.mark_logged(registry, job_id=job_id, token=flush.fencing_token, mlflow_run_id="run-9")
    assert logged.outbox_state == "logged" and logged.mlflow_run_id == "run-9"
    assert queue.outbox_pending(registry) == [] and queue.claim_outbox(registry, worker_id="x") is None


def test_bad_lease_is_refused(registry, jobs):
    jobs(1)
    with pytest.raises(InvalidInput, match="lease_seconds must be positive"):
        queue.claim(registry, worker_id="w", lease_seconds=0)

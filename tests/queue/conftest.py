"""Queue tests need jobs, and jobs need checkpoints and an eval set: rows are registered directly
(no files, no model), so hundreds of jobs cost milliseconds. Every test runs on SQLite and
PostgreSQL (the `registry` fixture of tests/conftest.py)."""

from __future__ import annotations

import hashlib

import pytest

from registry.store import Registry


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_jobs(reg: Registry, n: int, *, base_models: tuple[str, ...] = ("demo/base-a",), **enqueue_kw) -> list[int]:
    """`n` queued jobs on `n` distinct fake checkpoints of one run, cycling through `base_models`."""
    run = reg.upsert_run(path="/fake/run", name="fake-run", track="B")
    es, _ = reg.register_evalset(
        name="fake-set",
        path="/fake/set",
        content_hash=_hash("set"),
        token_space_hash=_hash("ts"),
        manifest={},
        tasks={"a2t": {"examples": 1}},
        n_examples=1,
        files=[],
    )
    start = len(reg.list_checkpoints())
    ids = []
    for i in range(start, start + n):
        ck, _ = reg.upsert_checkpoint(
            path=f"/fake/run/checkpoint_{i}",
            run_id=run.id,
            step=i,
            track="B",
            status="valid",
            content_hash=_hash(f"ck{i}"),
            base_model=base_models[i % len(base_models)],
        )
        job, created = reg.enqueue_job(checkpoint_id=ck.id, evalset_id=es.id, **enqueue_kw)
        assert created
        ids.append(job.id)
    return ids


@pytest.fixture
def jobs(registry: Registry):
    return lambda n, **kw: make_jobs(registry, n, **kw)

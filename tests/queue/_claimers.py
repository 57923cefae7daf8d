"""A claimer process for the concurrency test and the benchmark (importable by `spawn`)."""

from __future__ import annotations


def claim_all(url: str, worker_id: str, start_event, results) -> None:
    """Claim until the queue is empty; put the claimed job ids on `results`."""
    from registry import queue
    from registry.store import Registry

    with Registry(url) as reg:
        start_event.wait(60)
        mine = []
        while (job := queue.claim(reg, worker_id=worker_id, lease_seconds=300)) is not None:
            mine.append(job.id)
        results.put((worker_id, mine))

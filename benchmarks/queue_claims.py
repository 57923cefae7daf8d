"""Queue throughput: 8 concurrent claimer processes on SQLite and on PostgreSQL.

Each backend gets a fresh registry with JOBS queued jobs (registered rows only: no files, no model);
8 processes, started together, claim until the queue is empty (each claim is the one atomic
UPDATE ... RETURNING of `registry.queue.claim`, committed). Prints progress to stderr and one
JSON object on the last stdout line:
  {"sqlite_claims_per_s", "postgres_claims_per_s", "duplicates", "jobs", "claimers", ...}
`duplicates` counts jobs claimed more than once (must be 0). Target: >= 50 claims/s on PostgreSQL.
PostgreSQL is started from a temporary data folder (tests/_infra/postgres.py), or taken from
EVALBOARD_TEST_PG_URL.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from registry.store import Registry  # noqa: E402
from tests.queue._claimers import claim_all  # noqa: E402
from tests.queue.conftest import make_jobs  # noqa: E402


def measure(url: str, jobs: int, claimers: int) -> dict:
    with Registry(url) as reg:
        make_jobs(reg, jobs)
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=claim_all, args=(url, f"bench-{i}", start, results)) for i in range(claimers)]
    for p in procs:
        p.start()
    time.sleep(3)  # let every process import and open its registry before the clock starts
    t0 = time.perf_counter()
    start.set()
    got = [results.get(timeout=600) for _ in procs]
    seconds = time.perf_counter() - t0
    for p in procs:
        p.join(60)
    counts = Counter(j for _, mine in got for j in mine)
    return {
        "claims": sum(counts.values()),
        "seconds": round(seconds, 3),
        "claims_per_s": round(sum(counts.values()) / seconds, 1),
        "duplicates": sum(c - 1 for c in counts.values() if c > 1),
        "per_claimer": sorted(len(mine) for _, mine in got),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs queued before the claimers start")
    parser.add_argument("--claimers", type=int, default=8, help="concurrent claimer processes")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="evalboard-bench-queue-") as tmp:
        print(f"SQLite: {args.jobs} jobs, {args.claimers} claimers", file=sys.stderr)
        sqlite = measure(f"sqlite:///{tmp}/registry.db", args.jobs, args.claimers)
        print(f"  {sqlite}", file=sys.stderr)

    from tests._infra.postgres import create_database, drop_database, start_postgres

    given = os.environ.get("EVALBOARD_TEST_PG_URL")
    server = None if given else start_postgres()
    base = given or server.url
    from sqlalchemy.engine import make_url

    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = make_url(base).set(database="postgres").render_as_string(hide_password=False)
    create_database(admin, name)
    try:
        print(f"PostgreSQL: {args.jobs} jobs, {args.claimers} claimers", file=sys.stderr)
        pg = measure(make_url(base).set(database=name).render_as_string(hide_password=False), args.jobs, args.claimers)
        print(f"  {pg}", file=sys.stderr)
    finally:
        drop_database(admin, name)
        if server is not None:
            server.stop()

    print(
        json.dumps(
            {
                "sqlite_claims_per_s": sqlite["claims_per_s"],
                "postgres_claims_per_s": pg["claims_per_s"],
                "duplicates": sqlite["duplicates"] + pg["duplicates"],
                "jobs": args.jobs,
                "claimers": args.claimers,
                "sqlite": sqlite,
                "postgres": pg,
                "target_postgres_claims_per_s": 50,
                "machine_cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()

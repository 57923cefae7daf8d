"""Read-only views: the dashboard's tables (selected columns, one query each, typed rows) and
whole-registry counts and snapshots."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import aliased

from registry import entities as E
from registry import models as M
from registry.store._base import _decoded, _plain, _Store


class Tables(_Store):
    # -- tables for the dashboard: selected columns as plain tuples, no entity per row, because
    # the Compare page may read tens of thousands of results -------------------------------

    def data_fingerprint(self) -> tuple:
        """Counts and latest ids/timestamps of results, checkpoints, runs, eval sets, row stats and
        token spaces: it changes whenever one of them is added or updated."""
        parts = [
            select(func.count(), func.max(M.EvalResult.id)).select_from(M.EvalResult),
            select(func.count(), func.max(M.Checkpoint.updated_at)).select_from(M.Checkpoint),
            select(func.count(), func.max(M.Run.updated_at)).select_from(M.Run),
            select(func.count(), func.max(M.EvalSet.id)).select_from(M.EvalSet),
            select(func.count(), func.max(M.RowStats.created_at)).select_from(M.RowStats),
            select(func.count(), func.max(M.TokenSpace.id)).select_from(M.TokenSpace),
        ]
        with self._session(write=False) as s:
            return tuple(tuple(str(v) for v in s.execute(q).one()) for q in parts)

    def checkpoint_table(self, *, run_ids: Iterable[int] | None = None) -> list[E.CheckpointRow]:
        """One `CheckpointRow` per checkpoint, by run and step."""
        q = select(
            M.Checkpoint.id,
            M.Checkpoint.run_id,
            M.Checkpoint.step,
            M.Checkpoint.track,
            M.Checkpoint.status,
            M.Checkpoint.reason,
            M.Checkpoint.path,
            M.Checkpoint.content_hash,
            M.Checkpoint.base_model,
            M.Checkpoint.token_space_id,
            M.Checkpoint.row_start,
            M.Checkpoint.row_end,
            M.Checkpoint.registered_at,
            M.Checkpoint.files,
        ).order_by(M.Checkpoint.run_id, M.Checkpoint.step)
        if run_ids is not None:
            q = q.where(M.Checkpoint.run_id.in_(list(run_ids)))
        with self._session(write=False) as s:
            return [
                E.CheckpointRow._make(
                    (*r[:-2], _plain(r[-2]), sum(int(f.get("size") or 0) for f in _decoded(r[-1]) or []))
                )
                for r in s.execute(q)
            ]

    def result_table(self, *, run_ids: Iterable[int] | None = None, same_content: bool = False) -> list[E.ResultRow]:
        """One `ResultRow` per eval result, oldest first.

        With ``same_content``, a result also appears on every other valid checkpoint with the
        content it was computed on (a run copied to a new folder, the same bytes saved twice): that
        row carries the viewing checkpoint's run, id and step, the result's own id, and in ``extra``
        ``computed_for = {"checkpoint_id", "run_id", "step"}``, the checkpoint it was computed for."""
        r = M.EvalResult
        columns = (r.id, r.run_id, r.checkpoint_id, r.step, r.evalset_id, r.source, r.metrics, r.extra)
        q = select(*columns, r.mlflow_run_id, r.created_at).order_by(r.id)
        ids = None if run_ids is None else list(run_ids)
        if ids is not None:
            q = q.where(r.run_id.in_(ids))
        with self._session(write=False) as s:
            rows = [
                E.ResultRow._make((*row[:6], _decoded(row[6]), _decoded(row[7]), row[8], _plain(row[9])))
                for row in s.execute(q)
            ]
            if not same_content:
                return rows
            viewer = aliased(M.Checkpoint)
            shared = (
                select(r.id, viewer.run_id, viewer.id, viewer.step, *columns[4:], r.mlflow_run_id, r.created_at)
                .add_columns(r.checkpoint_id, r.run_id, r.step)
                .join(viewer, and_(viewer.content_hash == r.checkpoint_hash, viewer.id != r.checkpoint_id))
                .where(viewer.status == "valid")
                .order_by(r.id, viewer.id)
            )
            if ids is not None:
                shared = shared.where(viewer.run_id.in_(ids))
            for row in s.execute(shared):
                extra = {
                    **(_decoded(row[7]) or {}),
                    "computed_for": {"checkpoint_id": row[10], "run_id": row[11], "step": row[12]},
                }
                rows.append(E.ResultRow._make((*row[:6], _decoded(row[6]), extra, row[8], _plain(row[9]))))
        return sorted(rows, key=lambda t: t.result_id)

    def job_table(self) -> list[E.JobRow]:
        """One `JobRow` per job (with its run's and eval set's names), newest first."""
        q = (
            select(
                M.EvalJob.id,
                M.EvalJob.status,
                M.Run.name,
                M.Checkpoint.step,
                M.EvalSet.name,
                M.EvalJob.worker_id,
                M.EvalJob.attempts,
                M.EvalJob.max_attempts,
                M.EvalJob.enqueued_at,
                M.EvalJob.started_at,
                M.EvalJob.finished_at,
                M.EvalJob.duration_s,
                M.EvalJob.last_error,
                M.EvalJob.mlflow_run_id,
                M.EvalJob.checkpoint_id,
                M.EvalJob.evalset_id,
            )
            .join(M.Checkpoint, M.Checkpoint.id == M.EvalJob.checkpoint_id, isouter=True)
            .join(M.Run, M.Run.id == M.Checkpoint.run_id, isouter=True)
            .join(M.EvalSet, M.EvalSet.id == M.EvalJob.evalset_id, isouter=True)
            .order_by(M.EvalJob.id.desc())
        )
        with self._session(write=False) as s:
            return [E.JobRow._make(_plain(v) for v in r) for r in s.execute(q)]

    def row_stats_of(self, *, checkpoint_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """{checkpoint_id: stats} for those of `checkpoint_ids` that have row statistics."""
        ids = [int(i) for i in checkpoint_ids]
        if not ids:
            return {}
        q = select(M.RowStats.checkpoint_id, M.RowStats.stats).where(M.RowStats.checkpoint_id.in_(ids))
        with self._session(write=False) as s:
            return {ck: _decoded(stats) for ck, stats in s.execute(q)}

    def checkpoint_meta(self, *, checkpoint_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """{checkpoint_id: meta} for `checkpoint_ids`."""
        ids = [int(i) for i in checkpoint_ids]
        if not ids:
            return {}
        q = select(M.Checkpoint.id, M.Checkpoint.meta).where(M.Checkpoint.id.in_(ids))
        with self._session(write=False) as s:
            return {ck: _decoded(meta) for ck, meta in s.execute(q)}

    def result_extra(self, *, id: int) -> dict[str, Any]:
        """The `extra` of one eval result ({} when there is no such result)."""
        with self._session(write=False) as s:
            return _decoded(s.execute(select(M.EvalResult.extra).where(M.EvalResult.id == id)).scalar())

    def _not_yet_evaluated(self, evalset_id: int) -> Any:
        done = select(M.EvalResult.checkpoint_id).where(
            M.EvalResult.evalset_id == evalset_id, M.EvalResult.checkpoint_id.is_not(None)
        )
        pending = select(M.EvalJob.checkpoint_id).where(
            M.EvalJob.evalset_id == evalset_id, M.EvalJob.status.in_(("queued", "running", "done"))
        )
        return (M.Checkpoint.status == "valid", M.Checkpoint.id.not_in(done), M.Checkpoint.id.not_in(pending))

    def unevaluated_checkpoint_ids(self, *, run_id: int, evalset_id: int) -> list[int]:
        """Valid checkpoints of the run with no result and no live job on this eval set, by step."""
        q = (
            select(M.Checkpoint.id)
            .where(M.Checkpoint.run_id == run_id, *self._not_yet_evaluated(evalset_id))
            .order_by(M.Checkpoint.step)
        )
        with self._session(write=False) as s:
            return [r for (r,) in s.execute(q)]

    def unevaluated_counts(self, *, evalset_id: int) -> dict[int, int]:
        """run id -> how many of its valid checkpoints have no result and no live job on this eval set."""
        q = (
            select(M.Checkpoint.run_id, func.count())
            .where(*self._not_yet_evaluated(evalset_id))
            .group_by(M.Checkpoint.run_id)
        )
        with self._session(write=False) as s:
            return {int(r): int(n) for r, n in s.execute(q)}

    # -- whole-registry views --------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Rows per table, e.g. to check that a refused input added nothing."""
        with self._session(write=False) as s:
            return {
                t.name: s.execute(select(func.count()).select_from(t)).scalar_one()
                for t in M.Base.metadata.sorted_tables
            }

    def snapshot(self) -> dict[str, list[tuple]]:
        """Every row of every table as tuples ordered by id: equal snapshots mean equal data."""
        with self._session(write=False) as s:
            return {
                t.name: [tuple(_plain(v) for v in row) for row in s.execute(select(t).order_by(*t.primary_key))]
                for t in M.Base.metadata.sorted_tables
            }


# -- helpers (module level: they need a session, not the registry) ---------------------------

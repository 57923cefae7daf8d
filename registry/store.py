"""The registry's SQL store: one `Registry` class over SQLite (default) or PostgreSQL.

Every public method runs in `with self._session() as s:`, one transaction that commits on
success, rolls back on any error and turns `SQLAlchemyError` into `StoreError` — so a bad input
leaves the registry exactly as it was. Methods take keyword arguments and return the frozen
dataclasses of `registry/entities.py`; ORM rows never leave this module.

Getters `get_*` raise `NotFound`; `find_*` and `get_row_stats` return None when there is nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Engine,
    Integer,
    Result,
    Select,
    String,
    Text,
    and_,
    func,
    inspect,
    or_,
    select,
    text,
)
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, aliased

from registry import entities as E
from registry import models as M
from registry.engine import SQLITE_WRITE_OPTION, make_engine, mask_url, normalize_url, refuse_network_filesystem
from registry.errors import InvalidInput, LeaseLost, NotFound, StoreError
from registry.eval_key import EvalKey
from registry.job_options import JobOptions
from registry.migrations import upgrade_to_head
from registry.safeio import DB_INT_MAX, MAX_NAME_CHARS
from registry.settings import Settings

__all__ = ["Registry"]

T = TypeVar("T")

_ENTITY_OF = {
    M.TokenSpace: E.TokenSpaceEntity,
    M.Run: E.RunEntity,
    M.Checkpoint: E.CheckpointEntity,
    M.EvalSet: E.EvalSetEntity,
    M.EvalResult: E.EvalResultEntity,
    M.RowStats: E.RowStatsEntity,
    M.EvalJob: E.EvalJobEntity,
    M.Worker: E.WorkerEntity,
}
_AUTOMATIC = {"id", "created_at", "updated_at", "registered_at", "enqueued_at"}
# Length caps of unbounded text columns (the format readers refuse longer values where they enter;
# this is the store's own guard, so no caller can grow the registry by megabytes per row).
_MAX_CHARS = {
    "name": MAX_NAME_CHARS,
    "base_model": MAX_NAME_CHARS,
    "tokenizer_version": MAX_NAME_CHARS,
    "mlflow_run_id": MAX_NAME_CHARS,
}
_MAX_PATH_CHARS = 4096
_INACTIVE_JOB_STATUSES = ("failed", "cancelled")


class Registry:
    """The catalogue of token spaces, runs, checkpoints, eval sets, results, row stats and jobs.

    `url` defaults to `settings.db_url` (itself `EVALBOARD_DB` or `sqlite:///.evalboard/registry.db`).
    Construction migrates the database to the latest schema; several processes may do so at once.
    """

    @classmethod
    def existing(cls, settings: Settings, *, hint: str) -> Registry:
        """The registry at ``settings.db_url``, refused (``NotFound``, with ``hint``) when that
        database does not exist or holds no evalboard registry: for a process that must never
        create one (a worker polling an empty registry would wait for ever)."""
        url = normalize_url(settings.db_url)
        if url.get_backend_name() == "sqlite":
            path = Path(url.database or "")
            if url.database and url.database != ":memory:":
                refuse_network_filesystem(path.absolute())
            if not url.database or url.database == ":memory:" or not path.is_file() or path.stat().st_size == 0:
                raise NotFound(f"registry database {path} does not exist; {hint}")
        engine = make_engine(url)
        try:
            with engine.connect() as conn:
                has_registry = inspect(conn).has_table("alembic_version")
        except SQLAlchemyError as e:
            first = str(getattr(e, "orig", None) or e).strip().splitlines()
            raise StoreError(
                f"registry {mask_url(url)}: cannot connect: {first[0] if first else type(e).__name__}"
            ) from None
        finally:
            engine.dispose()
        if not has_registry:
            raise NotFound(f"registry {mask_url(url)} holds no evalboard registry; {hint}")
        return cls(settings=settings)

    def __init__(self, url: str | None = None, settings: Settings | None = None):
        if url is None:
            url = (settings or Settings.from_env()).db_url
        self._url = normalize_url(url)
        self._engine = make_engine(self._url)
        self._reader = self._engine.execution_options(**{SQLITE_WRITE_OPTION: False})
        try:
            upgrade_to_head(self._engine)
        except SQLAlchemyError as e:
            self._engine.dispose()
            raise self._store_error(e) from e

    # -- plumbing --------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def url(self) -> str:
        """The database URL with any password masked."""
        return mask_url(self._url)

    @property
    def dialect(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self._engine.dialect.name

    def __repr__(self) -> str:
        return f"Registry({self.url!r})"

    def close(self) -> None:
        """Release pooled connections (PostgreSQL cannot drop a database that has some)."""
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _session(self, write: bool = True) -> Iterator[Session]:
        """One transaction; on SQLite a write transaction holds the write lock from its start."""
        session = Session(self._engine if write else self._reader, expire_on_commit=False)
        try:
            yield session
            session.commit()
        except SQLAlchemyError as e:
            session.rollback()
            raise self._store_error(e) from e
        except OverflowError:  # the driver met an integer no column holds (the callers check ranges first)
            session.rollback()
            raise InvalidInput(f"a number is too large for the registry (integers hold at most {DB_INT_MAX})") from None
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def _store_error(self, e: SQLAlchemyError) -> StoreError:
        detail = str(getattr(e, "orig", None) or e).strip().splitlines()
        first = detail[0] if detail else type(e).__name__
        return StoreError(f"registry {self.url}: {type(e).__name__}: {first}")

    # -- token spaces ----------------------------------------------------------------------

    def upsert_token_space(
        self,
        *,
        abi_hash: str,
        text_vocab_size: int,
        vocab_size_total: int,
        spec: dict[str, Any],
        codec_versions: dict[str, Any] | None = None,
        tokenizer_version: str | None = None,
        path: str,
    ) -> E.TokenSpaceEntity:
        """Register a token-space ABI once; later files with the same hash return the first row."""
        _check_values(
            M.TokenSpace,
            dict(
                abi_hash=abi_hash,
                text_vocab_size=text_vocab_size,
                vocab_size_total=vocab_size_total,
                tokenizer_version=tokenizer_version,
                first_path=str(path),
            ),
            path,
        )
        lookup = select(M.TokenSpace).where(M.TokenSpace.abi_hash == abi_hash)
        with self._session() as s:
            row = _insert_or_get(
                s,
                lookup,
                lambda: M.TokenSpace(
                    abi_hash=abi_hash,
                    text_vocab_size=text_vocab_size,
                    vocab_size_total=vocab_size_total,
                    spec=spec,
                    codec_versions=codec_versions or {},
                    tokenizer_version=tokenizer_version,
                    first_path=str(path),
                ),
            )
            return _entity(row)

    def get_token_space(self, *, id: int | None = None, abi_hash: str | None = None) -> E.TokenSpaceEntity:
        with self._session(write=False) as s:
            return _entity(_get_one(s, M.TokenSpace, "token space", id=id, abi_hash=abi_hash))

    def list_token_spaces(self) -> list[E.TokenSpaceEntity]:
        with self._session(write=False) as s:
            return _entities(s.scalars(select(M.TokenSpace).order_by(M.TokenSpace.id)))

    # -- runs ------------------------------------------------------------------------------

    def upsert_run(
        self,
        *,
        path: str,
        name: str,
        track: str | None = None,
        base_model: str | None = None,
        token_space_id: int | None = None,
        token_space_path: str | None = None,
    ) -> E.RunEntity:
        """Register the run at `path`, or update its name and whichever other fields are given."""
        if track is not None:
            _check_choice("run track", track, M.RUN_TRACKS)
        given = {
            "track": track,
            "base_model": base_model,
            "token_space_id": token_space_id,
            "token_space_path": token_space_path,
        }
        given = {k: v for k, v in given.items() if v is not None}
        _check_values(M.Run, dict(path=str(path), name=name, **given), path)
        lookup = select(M.Run).where(M.Run.path == str(path))
        with self._session() as s:
            row = _insert_or_get(s, lookup, lambda: M.Run(path=str(path), name=name, **given))
            _assign(row, name=name, **given)
            s.flush()
            return _entity(row)

    def get_run(self, *, id: int | None = None, name: str | None = None, path: str | None = None) -> E.RunEntity:
        with self._session(write=False) as s:
            return _entity(_get_one(s, M.Run, "run", id=id, name=name, path=path))

    def link_training_run(
        self, run_id: int, *, mlflow_run_id: str, mlflow_experiment_id: str | None = None
    ) -> E.RunEntity:
        """Record the MLflow run of the training that writes this run's checkpoints."""
        with self._session() as s:
            row = _get_one(s, M.Run, "run", id=run_id)
            _assign(
                row,
                training_mlflow_run_id=str(mlflow_run_id),
                training_mlflow_experiment_id=None if mlflow_experiment_id is None else str(mlflow_experiment_id),
            )
            s.flush()
            return _entity(row)

    def list_runs(self) -> list[E.RunEntity]:
        with self._session(write=False) as s:
            return _entities(s.scalars(select(M.Run).order_by(M.Run.name, M.Run.id)))

    # -- checkpoints -----------------------------------------------------------------------

    def upsert_checkpoint(self, *, path: str, run_id: int, **fields: Any) -> tuple[E.CheckpointEntity, str]:
        """Register or refresh the checkpoint at `path`; returns it and 'new'|'updated'|'unchanged'.

        'unchanged' means content_hash, status and reason equal the stored ones; other given
        fields (e.g. file mtimes after a `touch`) are still refreshed so the scanner's quick
        size+mtime check keeps working.
        """
        _check_fields(M.Checkpoint, fields, exclude={"path", "run_id"})
        _check_values(M.Checkpoint, dict(path=str(path), **fields), path)
        if "status" in fields:
            _check_choice("checkpoint status", fields["status"], M.CHECKPOINT_STATUSES)
        if "track" in fields:
            _check_choice("checkpoint track", fields["track"], M.CHECKPOINT_TRACKS)
        with self._session() as s:
            row = s.scalars(select(M.Checkpoint).where(M.Checkpoint.path == str(path))).one_or_none()
            if row is None:
                _require(fields, ("track", "status"), "a new checkpoint", path)
                row = M.Checkpoint(path=str(path), run_id=run_id, **{"files": [], "meta": {}, **fields})
                s.add(row)
                s.flush()
                return _entity(row), "new"
            changed = any(
                key in fields and fields[key] != getattr(row, key) for key in ("content_hash", "status", "reason")
            )
            _assign(row, run_id=run_id, **fields)
            s.flush()
            return _entity(row), "updated" if changed else "unchanged"

    def get_checkpoint(
        self, *, id: int | None = None, path: str | None = None, content_hash: str | None = None
    ) -> E.CheckpointEntity:
        with self._session(write=False) as s:
            return _entity(_get_one(s, M.Checkpoint, "checkpoint", id=id, path=path, content_hash=content_hash))

    def list_checkpoints(
        self, *, run_id: int | None = None, status: str | None = None, track: str | None = None
    ) -> list[E.CheckpointEntity]:
        query = select(M.Checkpoint).order_by(M.Checkpoint.run_id, M.Checkpoint.step, M.Checkpoint.id)
        if run_id is not None:
            query = query.where(M.Checkpoint.run_id == run_id)
        if track is not None:
            query = query.filter_by(track=track)
        if status is not None:
            _check_choice("checkpoint status", status, M.CHECKPOINT_STATUSES)
            query = query.where(M.Checkpoint.status == status)
        with self._session(write=False) as s:
            return _entities(s.scalars(query))

    def checkpoint_files_index(
        self, *, paths_under: str | None = None
    ) -> dict[str, tuple[list[dict[str, Any]], str | None, str]]:
        """path -> (files, content_hash, status) in one query, so the scanner can skip folders
        whose file sizes and mtimes did not change without reading any tensor."""
        query = select(M.Checkpoint.path, M.Checkpoint.files, M.Checkpoint.content_hash, M.Checkpoint.status)
        if paths_under is not None:
            root = str(paths_under).rstrip("/") or "/"
            prefix = root if root == "/" else root + "/"
            query = query.where(or_(M.Checkpoint.path == root, M.Checkpoint.path.startswith(prefix, autoescape=True)))
        with self._session(write=False) as s:
            return {path: (files, content_hash, status) for path, files, content_hash, status in s.execute(query)}

    # -- eval sets -------------------------------------------------------------------------

    def register_evalset(
        self,
        *,
        name: str,
        path: str,
        content_hash: str,
        token_space_hash: str | None,
        manifest: dict[str, Any],
        tasks: dict[str, dict[str, int]],
        n_examples: int,
        files: list[dict[str, Any]],
        replace: bool = False,
    ) -> tuple[E.EvalSetEntity, str]:
        """Register an eval set under `name`; returns it and 'new'|'replaced'|'unchanged'.

        A name stands for one content: registering different content under a taken name is
        refused unless `replace=True`, because results would silently mix two eval sets. A
        replaced eval set is not overwritten: its row (and every result and job pointing at it)
        is kept under `<name>@<first 12 hex of its content hash>`, and `name` gets a new row, so
        results on the old and the new contents never form one series.
        """
        values = dict(
            path=str(path),
            content_hash=content_hash,
            token_space_hash=token_space_hash,
            manifest=manifest,
            tasks=tasks,
            n_examples=n_examples,
            files=files,
        )
        _check_values(M.EvalSet, dict(name=name, **values), path)
        with self._session() as s:
            by_name = s.scalars(select(M.EvalSet).where(M.EvalSet.name == name)).one_or_none()
            same_content = s.scalars(select(M.EvalSet).where(M.EvalSet.content_hash == content_hash)).one_or_none()
            restoring = (
                replace
                and same_content is not None
                and by_name is not None
                and same_content.name == _version_name(name, content_hash)
            )
            if same_content is not None and same_content is not by_name and not restoring:
                raise InvalidInput(
                    f"eval set {path} has the same content (hash {content_hash[:12]}) as eval set "
                    f"{same_content.name!r} registered from {same_content.path}; use that name"
                )
            if by_name is None:
                row = M.EvalSet(name=name, **values)
                s.add(row)
                s.flush()
                return _entity(row), "new"
            if by_name.content_hash == content_hash:
                return _entity(by_name), "unchanged"
            if not replace:
                raise InvalidInput(
                    f"eval set name {name!r} is already registered from {by_name.path} "
                    f"(hash {by_name.content_hash[:12]}); {path} has different content "
                    f"(hash {content_hash[:12]}). Pick another name, or replace it (replace=True)"
                )
            by_name.name = _version_name(name, by_name.content_hash)
            s.flush()
            if restoring:  # back to a content registered before: that version takes the name again
                assert same_content is not None  # restoring implies it
                _assign(same_content, name=name, **values)
                s.flush()
                return _entity(same_content), "replaced"
            row = M.EvalSet(name=name, **values)
            s.add(row)
            s.flush()
            return _entity(row), "replaced"

    def get_evalset(
        self, *, id: int | None = None, name: str | None = None, content_hash: str | None = None
    ) -> E.EvalSetEntity:
        with self._session(write=False) as s:
            return _entity(_get_one(s, M.EvalSet, "eval set", id=id, name=name, content_hash=content_hash))

    def list_evalsets(self) -> list[E.EvalSetEntity]:
        with self._session(write=False) as s:
            return _entities(s.scalars(select(M.EvalSet).order_by(M.EvalSet.name)))

    # -- results ---------------------------------------------------------------------------

    def add_eval_result(
        self,
        *,
        source: str,
        metrics: dict[str, Any],
        checkpoint_id: int | None = None,
        run_id: int | None = None,
        evalset_id: int | None = None,
        checkpoint_hash: str | None = None,
        evalset_hash: str | None = None,
        step: int | None = None,
        loss_all: float | None = None,
        mlflow_run_id: str | None = None,
        path: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> E.EvalResultEntity:
        """Record one evaluation; `loss_all` defaults to `metrics["all"]["loss"]`."""
        fields: dict[str, Any] = {
            "source": source,
            "metrics": metrics,
            "checkpoint_id": checkpoint_id,
            "run_id": run_id,
            "evalset_id": evalset_id,
            "checkpoint_hash": checkpoint_hash,
            "evalset_hash": evalset_hash,
            "step": step,
            "loss_all": loss_all if loss_all is not None else ((metrics or {}).get("all") or {}).get("loss"),
            "mlflow_run_id": mlflow_run_id,
            "path": path,
            "extra": dict(extra or {}),
        }
        _check_values(M.EvalResult, fields, path)
        _check_choice("eval result source", source, M.RESULT_SOURCES)
        with self._session() as s:
            row = M.EvalResult(**fields)
            s.add(row)
            s.flush()
            return _entity(row)

    def update_eval_result(
        self, *, id: int, mlflow_run_id: str | None = None, extra: dict[str, Any] | None = None
    ) -> E.EvalResultEntity:
        """Attach the MLflow run (and merge extra keys) once a result has been logged."""
        with self._session() as s:
            row = _get_one(s, M.EvalResult, "eval result", id=id)
            if mlflow_run_id is not None:
                row.mlflow_run_id = mlflow_run_id
            if extra:
                row.extra = {**(row.extra or {}), **extra}
            s.flush()
            return _entity(row)

    def list_eval_results(
        self,
        *,
        run_ids: Iterable[int] | None = None,
        evalset_id: int | None = None,
        checkpoint_id: int | None = None,
        same_content: bool = False,
    ) -> list[E.EvalResultEntity]:
        """Results, by run and step. With ``same_content``, ``run_ids`` also selects the results
        computed for other checkpoints with the same content as one of these runs' (a result
        belongs to content: `result_table` shows it on every such checkpoint)."""
        query = select(M.EvalResult).order_by(M.EvalResult.run_id, M.EvalResult.step, M.EvalResult.id)
        if run_ids is not None:
            ids = list(run_ids)
            mine: ColumnElement[bool] = M.EvalResult.run_id.in_(ids)
            if same_content:
                hashes = select(M.Checkpoint.content_hash).where(
                    M.Checkpoint.run_id.in_(ids), M.Checkpoint.status == "valid"
                )
                mine = or_(mine, M.EvalResult.checkpoint_hash.in_(hashes))
            query = query.where(mine)
        if evalset_id is not None:
            query = query.where(M.EvalResult.evalset_id == evalset_id)
        if checkpoint_id is not None:
            query = query.where(M.EvalResult.checkpoint_id == checkpoint_id)
        with self._session(write=False) as s:
            return _entities(s.scalars(query))

    def latest_result(
        self, key: EvalKey, *, source: str | None = None, logged_only: bool = False, any_subset: bool = False
    ) -> E.EvalResultEntity | None:
        """The newest result for ``key`` (this checkpoint content on this eval-set content and
        subset), whichever checkpoint it was computed for: a result belongs to content.
        ``logged_only``: only one that reached MLflow; ``any_subset``: on any subset of the eval set."""
        query = select(M.EvalResult).where(
            M.EvalResult.checkpoint_hash == key.checkpoint_hash, M.EvalResult.evalset_hash == key.evalset_hash
        )
        if source is not None:
            query = query.where(M.EvalResult.source == source)
        if logged_only:
            query = query.where(M.EvalResult.mlflow_run_id.is_not(None), M.EvalResult.mlflow_run_id != "")
        with self._session(write=False) as s:
            for row in s.scalars(query.order_by(M.EvalResult.id.desc())):
                result = _entity(row)
                if any_subset or EvalKey.of_result(result) == key:
                    return result
        return None

    # -- row stats -------------------------------------------------------------------------

    def put_row_stats(self, *, checkpoint_id: int, stats: dict[str, Any]) -> E.RowStatsEntity:
        """Store (or replace) the row statistics of a checkpoint."""
        with self._session() as s:
            _get_one(s, M.Checkpoint, "checkpoint", id=checkpoint_id)
            row = s.scalars(select(M.RowStats).where(M.RowStats.checkpoint_id == checkpoint_id)).one_or_none()
            if row is None:
                row = M.RowStats(checkpoint_id=checkpoint_id, stats=stats)
                s.add(row)
            else:
                row.stats = stats
                row.created_at = M.utcnow()
            s.flush()
            return _entity(row)

    def get_row_stats(self, *, checkpoint_id: int) -> E.RowStatsEntity | None:
        with self._session(write=False) as s:
            row = s.scalars(select(M.RowStats).where(M.RowStats.checkpoint_id == checkpoint_id)).one_or_none()
            return None if row is None else _entity(row)

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


def _rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE matched: `Session.execute` is typed as returning a `Result`, and for a DML
    statement it is a `CursorResult`, which has the count."""
    assert isinstance(result, CursorResult)
    return result.rowcount


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes (it dropped the offset of the UTC value we stored)."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _plain(value: Any) -> Any:
    return _utc(value) if isinstance(value, datetime) else value


def _decoded(value: Any) -> Any:
    """JSON columns come back decoded from SQLAlchemy, but raw text through some drivers."""
    return json.loads(value) if isinstance(value, str) else (value or {})


def _entity(row: M.Base) -> Any:
    cls = _ENTITY_OF[type(row)]
    return cls(**{f.name: _plain(getattr(row, f.name)) for f in fields(cls)})


def _entities(rows: Iterable[M.Base]) -> list[Any]:
    return [_entity(row) for row in rows]


def _get_one(s: Session, model: type[T], what: str, **selectors: Any) -> T:
    """The single row matching exactly one given selector, or NotFound naming what was asked."""
    given = {k: v for k, v in selectors.items() if v is not None}
    if len(given) != 1:
        raise InvalidInput(f"look up a {what} by exactly one of {', '.join(selectors)}; got {given or 'none'}")
    ((key, value),) = given.items()
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= DB_INT_MAX:
        raise NotFound(
            f"no {what} with {key} {value if value.bit_length() <= 64 else 'of that size'} "
            f"is registered (ids are between 1 and {DB_INT_MAX})"
        )
    rows = s.scalars(select(model).where(getattr(model, key) == value).limit(2)).all()
    if not rows:
        raise NotFound(f"no {what} with {key} {value!r} is registered")
    if len(rows) > 1:
        raise InvalidInput(f"more than one {what} has {key} {value!r}; look it up by id or path")
    return rows[0]


def _insert_or_get(s: Session, lookup: Select, make: Callable[[], T]) -> T:
    """The row `lookup` finds, else a new one from `make()`; a concurrent insert of the same
    unique key (possible on PostgreSQL) is resolved by reading the winner's row."""
    row = s.scalars(lookup).one_or_none()
    if row is not None:
        return row
    try:
        with s.begin_nested():
            row = make()
            s.add(row)
    except SAIntegrityError:
        row = s.scalars(lookup).one_or_none()
        if row is None:
            raise
    return row


def _assign(row: M.Base, **values: Any) -> None:
    for key, value in values.items():
        setattr(row, key, value)


def _check_fields(model: type[M.Base], given: dict[str, Any], exclude: Iterable[str] = ()) -> None:
    allowed = set(model.__table__.columns.keys()) - _AUTOMATIC - set(exclude)
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise InvalidInput(
            f"unknown {model.__tablename__} field(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}"
        )


def _check_values(model: type[M.Base], values: dict[str, Any], where: Any) -> None:
    """Integers a column can hold on every backend, strings within their column's length."""
    columns = model.__table__.columns
    for key, value in values.items():
        if value is None or key not in columns:
            continue
        kind = columns[key].type
        label = f"{model.__tablename__}.{key}"
        if isinstance(kind, Integer) and isinstance(value, int) and not isinstance(value, bool):
            if not -DB_INT_MAX - 1 <= value <= DB_INT_MAX:
                shown = value if value.bit_length() <= 64 else f"of {value.bit_length()} bits"
                raise InvalidInput(f"{label} {shown} does not fit the registry (at most {DB_INT_MAX})", path=where)
        elif isinstance(kind, String) and not isinstance(kind, Text) and isinstance(value, str):
            limit = kind.length or _MAX_CHARS.get(key, _MAX_PATH_CHARS)
            if len(value) > limit:
                raise InvalidInput(f"{label} is {len(value)} characters long; at most {limit} are accepted", path=where)


def _dedupe_key(checkpoint: M.Checkpoint, evalset: M.EvalSet, options: dict[str, Any]) -> str:
    """One job per checkpoint content and eval-set content; a quick subset and the full
    evaluation are different jobs (`EvalKey.dedupe_key`)."""
    return EvalKey(checkpoint.content_hash or "", evalset.content_hash, options.get("max_examples")).dedupe_key


def _version_name(name: str, content_hash: str) -> str:
    """The name a replaced eval set keeps: its own, with the content it had."""
    return f"{name}@{content_hash[:12]}"


def _check_choice(what: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidInput(f"{what} {value!r} is not one of {', '.join(allowed)}")


def _require(given: dict[str, Any], keys: tuple[str, ...], what: str, path: Any) -> None:
    missing = [k for k in keys if given.get(k) is None]
    if missing:
        raise InvalidInput(f"{what} needs {', '.join(missing)}", path=path)


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

"""The catalogue: token spaces, runs, checkpoints, eval sets, eval results and row statistics."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, or_, select

from registry import entities as E
from registry import models as M
from registry.errors import InvalidInput
from registry.eval_key import EvalKey
from registry.store._base import (
    _assign,
    _check_choice,
    _check_fields,
    _check_values,
    _entities,
    _entity,
    _get_one,
    _insert_or_get,
    _require,
    _Store,
    _version_name,
)


class Catalogue(_Store):
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

"""The store's plumbing: the engine, one transaction per call, and the helpers every part of the
store uses. Nothing here is public: callers use `registry.store.Registry`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy import CursorResult, Engine, Integer, Result, Select, String, Text, select
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from registry import entities as E
from registry import models as M
from registry.engine import SQLITE_WRITE_OPTION, make_engine, mask_url, normalize_url
from registry.errors import InvalidInput, NotFound, StoreError
from registry.migrations import upgrade_to_head
from registry.safeio import DB_INT_MAX, MAX_NAME_CHARS
from registry.settings import Settings

T = TypeVar("T")
_S = TypeVar("_S", bound="_Store")

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


class _Store:
    """Engine and sessions: what the catalogue, the queue and the tables share."""

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

    def __enter__(self: _S) -> _S:
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

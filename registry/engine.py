"""Turning a registry URL into a SQLAlchemy engine that behaves the same on SQLite and PostgreSQL.

SQLite is the embedded default; it is safe for several processes on one machine only with WAL,
a busy timeout and write transactions that take the write lock up front (`BEGIN IMMEDIATE`),
so that two writers queue instead of one failing with "database is locked" half-way through.
It is never safe on a network filesystem, so such a path is refused with the way out.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from registry.errors import InvalidInput

__all__ = [
    "NETWORK_FILESYSTEMS",
    "make_engine",
    "normalize_url",
    "mask_url",
    "network_filesystem",
    "SQLITE_WRITE_OPTION",
]

NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smbfs",
        "smb3",
        "fuse.sshfs",
        "9p",
        "lustre",
        "gpfs",
        "beegfs",
        "ceph",
        "fuse.ceph",
        "fuse.beegfs",
    }
)

SQLITE_PRAGMAS = (
    # busy_timeout first: switching to WAL itself may have to wait for another process.
    "PRAGMA busy_timeout=30000",
    "PRAGMA journal_mode=WAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA synchronous=NORMAL",
)

SQLITE_WRITE_OPTION = "evalboard_sqlite_write"
"""Execution option: False makes a SQLite transaction a plain (deferred) read transaction."""


def normalize_url(url: str) -> URL:
    """Parse `url`, steering every PostgreSQL spelling to the psycopg 3 driver."""
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise InvalidInput(
            f"registry URL {url!r} is not a database URL "
            "(expected sqlite:///path/registry.db or postgresql://user@host/db)"
        ) from e
    if parsed.drivername in ("postgres", "postgresql", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise InvalidInput(
            f"registry URL {mask_url(parsed)!r}: unsupported database "
            f"{parsed.get_backend_name()!r}; use sqlite:///... or postgresql://..."
        )
    return parsed


def mask_url(url: URL | str) -> str:
    """The URL with its password replaced by ***, for messages and reprs."""
    url = make_url(url) if isinstance(url, str) else url
    return url.render_as_string(hide_password=True)


def make_engine(url: URL) -> Engine:
    """An engine for a URL from `normalize_url`; for SQLite, checks the path and sets pragmas."""
    if url.get_backend_name() == "postgresql":
        # Fail in seconds, with a StoreError, rather than hang on an unreachable host.
        connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": 10}
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        raise InvalidInput(
            f"registry URL {url!s}: an in-memory SQLite database cannot be shared between "
            "the processes evalboard starts; give a file path, e.g. sqlite:///.evalboard/registry.db"
        )
    _check_sqlite_path(Path(database))
    engine = create_engine(url)
    event.listen(engine, "connect", _on_sqlite_connect)
    event.listen(engine, "begin", _on_sqlite_begin)
    return engine


def _check_sqlite_path(path: Path) -> None:
    refuse_network_filesystem(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidInput(
            f"cannot create the folder of SQLite registry {path}: {e.strerror}; "
            "set EVALBOARD_HOME or EVALBOARD_DB to a writable place"
        ) from e


def refuse_network_filesystem(path: Path) -> None:
    """A SQLite registry on NFS/CIFS/Lustre/... is refused (its locking is unreliable there)."""
    fs_type = network_filesystem(path, _read_mounts())
    if fs_type:
        raise InvalidInput(
            f"SQLite registry {path} is on a {fs_type} network filesystem, where SQLite locking "
            "is unreliable and the registry would corrupt; put it on a local disk or use "
            "PostgreSQL: EVALBOARD_DB=postgresql://user@host/evalboard"
        )


def _read_mounts() -> str:
    try:
        return Path("/proc/mounts").read_text()
    except OSError:  # not Linux: nothing to check against
        return ""


def network_filesystem(path: Path | str, mounts_text: str) -> str | None:
    """The filesystem type of `path`'s mount if it is a network one, else None.

    `mounts_text` is /proc/mounts; the mount point that is the longest prefix of the resolved
    path wins, as the kernel's does.
    """
    resolved = os.path.realpath(path)
    best_point, best_type = "", None
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape_mount(fields[1])
        if _is_under(resolved, point) and len(point) >= len(best_point):
            best_point, best_type = point, fields[2]
    return best_type if best_type in NETWORK_FILESYSTEMS else None


def _unescape_mount(field: str) -> str:
    """/proc/mounts writes spaces, tabs, newlines and backslashes as octal escapes."""
    for escaped, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, char)
    return field


def _is_under(path: str, mount_point: str) -> bool:
    return mount_point == "/" or path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def _on_sqlite_connect(dbapi_connection, _record) -> None:
    # Let SQLAlchemy's "begin" event (below) issue BEGIN, instead of pysqlite's implicit one,
    # which starts transactions late (only before DML) and never for DDL.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


def _on_sqlite_begin(connection) -> None:
    write = connection.get_execution_options().get(SQLITE_WRITE_OPTION, True)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

"""Start a throwaway PostgreSQL server for the test session: real engine, no docker.

`start_postgres()` runs initdb into a fresh temp folder and `pg_ctl -w start` (which returns
once the server accepts connections, so no sleeping), listening on 127.0.0.1 at a free port and
tuned for speed over durability (fsync off). As root, the server runs as the `postgres` user,
because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PgServer", "PostgresUnavailable", "start_postgres", "create_database", "drop_database"]

DATABASE = "evalboard_test"
SERVER_OPTIONS = (
    "-c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off "
    "-c synchronous_commit=off -c max_connections=200"
)


class PostgresUnavailable(RuntimeError):
    """PostgreSQL could not be started here; the message says why."""


@dataclass
class PgServer:
    base_dir: Path
    port: int
    bin_dir: Path
    run_as: str | None

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def url(self) -> str:
        return self.url_for(DATABASE)

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        _run(self, "pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.base_dir, ignore_errors=True)


def start_postgres(base_dir: str | Path | None = None) -> PgServer:
    """Start a server in a new folder under `base_dir` (default /tmp) and create `evalboard_test`."""
    bin_dir = _find_bin_dir() or _install_postgres()
    root = os.geteuid() == 0
    folder = Path(tempfile.mkdtemp(prefix="evalboard-pg-", dir=base_dir))
    server = PgServer(base_dir=folder, port=_free_port(), bin_dir=bin_dir, run_as="postgres" if root else None)
    try:
        _prepare_folder(server)
        _run(server, "initdb", "-D", str(server.data_dir), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        options = f"-p {server.port} -k {server.data_dir} {SERVER_OPTIONS}"
        _run(
            server,
            "pg_ctl",
            "-D",
            str(server.data_dir),
            "-l",
            str(folder / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        create_database(server.url_for("postgres"), DATABASE)
    except BaseException as e:
        log = _tail(folder / "server.log")
        server.stop()
        if isinstance(e, PostgresUnavailable):
            raise PostgresUnavailable(f"{e}{log}") from None
        raise
    return server


def create_database(admin_url: str, name: str) -> None:
    _admin_execute(admin_url, f'CREATE DATABASE "{name}"')


def drop_database(admin_url: str, name: str) -> None:
    # FORCE ends sessions a test left open, so one leak does not break the next test.
    _admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _admin_execute(admin_url: str, statement: str) -> None:
    import psycopg

    conninfo = admin_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(statement)


def _find_bin_dir() -> Path | None:
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(os.path.realpath(on_path)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _install_postgres() -> Path:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise PostgresUnavailable(
            "PostgreSQL binaries (pg_ctl, initdb) not found; install postgresql-15 "
            "or set EVALBOARD_TEST_PG_URL to an existing server"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "postgresql-15"]):
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise PostgresUnavailable(f"{' '.join(command)} failed: {done.stderr.strip()[-500:]}")
    bin_dir = _find_bin_dir()
    if bin_dir is None:
        raise PostgresUnavailable("installed postgresql-15 but pg_ctl is still not found")
    return bin_dir


def _prepare_folder(server: PgServer) -> None:
    """The data folder must belong to the server's user, who must be able to reach it."""
    server.data_dir.mkdir()
    if server.run_as is None:
        return
    shutil.chown(server.base_dir, user=server.run_as)
    shutil.chown(server.data_dir, user=server.run_as)
    for folder in [server.base_dir, *server.base_dir.parents]:
        mode = folder.stat().st_mode
        if not mode & 0o001:
            folder.chmod(mode | 0o755)


def _run(server: PgServer, tool: str, *args: str, check: bool = True) -> None:
    command = [str(server.bin_dir / tool), *args]
    if server.run_as:
        command = ["runuser", "-u", server.run_as, "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, cwd=server.base_dir)
    if check and done.returncode != 0:
        raise PostgresUnavailable(
            f"{tool} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-800:]}"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(log: Path) -> str:
    try:
        return "; server log: " + " | ".join(log.read_text().strip().splitlines()[-5:])
    except OSError:
        return ""

"""`evalboard dashboard` and `evalboard export`: the Streamlit app and its reports from the shell.
Registered into the main CLI by `evalboard.cli._register_extensions`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

APP = Path(__file__).resolve().parent.parent / "dashboard" / "streamlit_app.py"


def dashboard(
    port: int = typer.Option(8501, help="Port to serve on."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; 0.0.0.0 exposes it to the network."),
    verbose_flag: bool = typer.Option(False, "--verbose", "-v", help="Say which workspace and stores are used."),
) -> None:
    """Serve the dashboard (runs, compare, checkpoint, compatibility, row statistics, queue, export)
    on http://HOST:PORT, reading the workspace's registry (or EVALBOARD_DB). Ctrl-C or SIGTERM
    stops the server with everything it started."""
    from evalboard.cli import settings as current_settings, verbose
    from evalboard.procs import run_child

    verbose(verbose_flag)
    settings = current_settings()
    # The server resolves the same settings: name them, so it does not depend on its folder.
    env = {**os.environ, "EVALBOARD_DB": settings.db_url, "EVALBOARD_HOME": str(settings.home.resolve()),
           "MLFLOW_TRACKING_URI": settings.mlflow_uri,
           **({"EVALBOARD_WORKSPACE": str(settings.workspace.root)} if settings.workspace else {}),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(APP.parent.parent), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port), "--server.address", host,
           "--server.headless", "true", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
           "--global.developmentMode", "false", "--client.toolbarMode", "minimal"]
    sys.stderr.write(f"evalboard dashboard on http://{host}:{port} (registry {settings.db_url})\n")
    raise typer.Exit(run_child(cmd, env))


def export(
    runs: list[str] = typer.Option(..., "--runs", help="Run names to include: repeat the option, or comma-separate."),
    fmt: str = typer.Option("html", "--format", help="html (self-contained, interactive charts), md or csv."),
    out: Path = typer.Option(..., "--out", help="File to write."),
    evalset: str = typer.Option(None, "--evalset", help="Only results on this eval set (default: all)."),
) -> None:
    """Write a report of the given runs: losses per task and step, best checkpoints, audit findings."""
    from dashboard import report
    from registry.errors import InvalidInput
    from registry.settings import Settings
    from registry.store import Registry

    if fmt not in report.FORMATS:
        raise InvalidInput(f"--format must be one of {', '.join(report.FORMATS)}, got {fmt!r}")
    names = [n.strip() for item in runs for n in item.split(",") if n.strip()]
    with Registry(settings=Settings.from_env()) as reg:
        text = report.render(report.collect(reg, names, evalset), fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    sys.stderr.write(f"wrote {out} ({len(text.encode()) / 1024:.0f} KiB, {len(names)} runs)\n")


def register(app: typer.Typer) -> None:
    app.command()(dashboard)
    app.command()(export)

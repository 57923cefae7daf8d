"""`evalboard dashboard` and `evalboard export`: the Streamlit app and its reports from the shell.
Registered into the main CLI by `evalboard.cli._register_commands`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

APP = Path(__file__).resolve().parent.parent / "dashboard" / "streamlit_app.py"


def dashboard(
    port: int = typer.Option(
        8501, help="Port to serve on (1-65535; 0 picks a free one, and the printed URL names it)."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind; 0.0.0.0 exposes it to the network."),
    verbose_flag: bool = typer.Option(False, "--verbose", "-v", help="Say which workspace and stores are used."),
) -> None:
    """Serve the dashboard (runs, compare, checkpoint, compatibility, row statistics, queue, export)
    on http://HOST:PORT, reading the workspace's registry (or EVALBOARD_DB). Ctrl-C or SIGTERM
    stops the server with everything it started."""
    from evalboard.cli_common import settings as current_settings
    from evalboard.cli_common import verbose
    from evalboard.procs import run_child
    from registry.processes import child_env, python_module_command

    verbose(verbose_flag)
    port = _serving_port(host, port)
    settings = current_settings()
    # The server resolves the same settings: name them, so it does not depend on its folder.
    env = {
        **os.environ,
        "EVALBOARD_DB": settings.db_url,
        "EVALBOARD_HOME": str(settings.home.resolve()),
        "MLFLOW_TRACKING_URI": settings.mlflow_uri,
        **({"EVALBOARD_WORKSPACE": str(settings.workspace.root)} if settings.workspace else {}),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(APP.parent.parent), os.environ.get("PYTHONPATH")])),
    }
    cmd = [
        *python_module_command("streamlit", "run"),
        str(APP),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",
        "minimal",
    ]
    sys.stderr.write(f"evalboard dashboard on http://{host}:{port} (registry {settings.db_url})\n")
    raise typer.Exit(run_child(cmd, child_env(env)))


def _serving_port(host: str, port: int) -> int:
    """The port the server will bind: checked to be free on ``host`` before Streamlit starts (0: one
    the system picks), so a taken port or an impossible address is one line, not a server log."""
    import socket

    if not 0 <= port <= 65535:
        raise typer.BadParameter(f"must be between 0 and 65535, got {port}", param_hint="'--port'")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise typer.BadParameter(f"cannot serve on {host!r}: {e}", param_hint="'--host'") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind(address)
        except OSError as e:
            what = f"port {port} on {host}" if port else f"{host}"
            raise typer.BadParameter(f"cannot serve on {what}: {e.strerror or e}", param_hint="'--port'") from None
        return int(probe.getsockname()[1])


def export(
    runs: list[str] | None = typer.Option(None, "--runs", help="Run names, comma-separated (repeatable)."),
    run: list[str] | None = typer.Option(
        None, "--run", help="One run name, taken as written (commas included), or a registry run id; repeat the option."
    ),
    fmt: str = typer.Option(
        "html",
        "--format",
        help="html (self-contained, interactive charts), md, csv, or pdf (printed by headless Chromium).",
    ),
    out: Path = typer.Option(..., "--out", help="File to write."),
    evalset: str = typer.Option(None, "--evalset", help="Only results on this eval set (default: all)."),
    force: bool = typer.Option(
        False, "--force", help="Replace --out even when it is a read-only file (an existing writable file is replaced)."
    ),
) -> None:
    """Write a report of the given runs: losses per task and step, best checkpoints, audit findings.
    PDF: the HTML report printed by headless Chromium (chromium, chromium-browser or google-chrome
    on PATH, or EVALBOARD_CHROMIUM)."""
    from dashboard import pdf, report
    from registry.comparison import example_cache
    from registry.errors import InvalidInput
    from registry.settings import Settings
    from registry.store import Registry

    if fmt not in report.FORMATS:
        raise InvalidInput(f"--format must be one of {', '.join(report.FORMATS)}, got {fmt!r}")
    names = [n.strip() for item in runs or [] for n in item.split(",") if n.strip()]
    if not names and not run:
        raise InvalidInput("name the runs to export: --run NAME (repeatable) or --runs A,B")
    _check_out(out, force)
    chromium = _pdf_step(pdf.find_chromium) if fmt == "pdf" else None
    settings = Settings.from_env()
    with Registry(settings=settings) as reg:
        names += [_run_name(reg, r) for r in run or []]
        examples = example_cache(settings.home, settings.mlflow_uri)
        rep = report.collect(reg, names, evalset, examples=examples, mlflow_ui=settings.mlflow_ui)
    payload = _pdf_step(lambda: report.to_pdf(rep, chromium=chromium).data) if fmt == "pdf" else report.render(rep, fmt)
    data = payload.encode() if isinstance(payload, str) else payload
    _write(out, data, force)
    sys.stderr.write(f"wrote {out} ({len(data) / 1024:.0f} KiB, {len(names)} runs)\n")


def _pdf_step(step):
    """`step()`, with a Chromium problem said as `evalboard export: ...` (one line, exit 2)."""
    from dashboard import pdf

    try:
        return step()
    except (pdf.ChromiumMissing, pdf.PrintFailed) as e:
        raise type(e)(f"evalboard export: {e}") from None


def _run_name(reg, ref: str) -> str:
    """`--run` as written when such a run is registered, else a registry run id."""
    from registry.errors import NotFound

    if any(r.name == ref for r in reg.list_runs()) or not ref.isdigit():
        return ref
    try:
        return reg.get_run(id=int(ref)).name
    except NotFound:
        return ref  # reported with the other unknown names


def _check_out(out: Path, force: bool) -> None:
    """Refuse an --out that cannot become the report file before anything is computed."""
    from registry.atomic import check_target
    from registry.errors import InvalidInput

    if any(len(part.encode()) > 255 for part in out.parts):
        raise InvalidInput("--out has a file or folder name longer than 255 bytes", path=out)
    try:
        if out.is_dir() and not out.is_symlink():
            raise InvalidInput("--out names a folder; give the path of the report file to write", path=out)
        if out.exists() and not out.is_file():
            raise InvalidInput("--out is not a regular file; give the path of the report file to write", path=out)
        parent = out.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise InvalidInput(f"--out cannot be created: {parent} is not a folder", path=out)
    except OSError as e:
        raise InvalidInput(f"--out cannot be used: {e.strerror or type(e).__name__}", path=out) from None
    check_target(out, force=force)  # a read-only report is kept unless --force; a link is replaced


def _write(out: Path, data: bytes, force: bool) -> None:
    """Write the whole report or nothing (`registry.atomic.write_file`: a fresh temporary beside it,
    renamed into place; a link at --out is replaced, never followed)."""
    from registry.atomic import write_file
    from registry.errors import InvalidInput

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidInput(f"--out cannot be written: {e.strerror or type(e).__name__}", path=out) from None
    write_file(out, data, force=force)


def register(app: typer.Typer) -> None:
    app.command()(dashboard)
    app.command()(export)

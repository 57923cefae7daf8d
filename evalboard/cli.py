"""The `evalboard` command line: one typed function per command; its docstring is its --help.

Any `EvalboardError` becomes one line on stderr and exit code 2; a traceback means a bug.
Machine-readable output (`--json`) goes to stdout; progress bars and logs go to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.markup import escape

from evalboard.cli_common import err, out, print_json, progress, say_registry, settings, verbose
from evalboard.cli_common import open_registry as _registry
from registry.errors import EvalboardError

_print_json, _progress = print_json, progress

app = typer.Typer(
    name="evalboard",
    help="Catalogue, audit and evaluate trainable-rows and connector checkpoints of frozen base LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    add_completion=False,
)
evalset_app = typer.Typer(help="Register and list eval sets.", no_args_is_help=True)
app.add_typer(evalset_app, name="evalset")


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: bool = typer.Option(
        False,
        "--verbose",
        "-v",
        help="Say which workspace, registry and MLflow store a command uses, and show library logs and progress bars.",
    ),
) -> None:
    """Catalogue, audit and evaluate trainable-rows and connector checkpoints of frozen base LLMs.

    Commands run inside a workspace (a folder with `.evalboard/config.toml`, found upwards from
    the current folder like git) use its registry, MLflow store and models; `evalboard info`
    shows which."""
    from evalboard import logs

    ctx.obj = {"verbose": verbose}  # subcommands inherit it (`worker` re-configures its logging)
    logs.configure(verbose)


@app.command()
def scan(
    paths: list[Path] = typer.Argument(..., help="Folders (or single checkpoints) to scan; runs are found inside."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary {found, new, unchanged, invalid, ...}."),
    watch: bool = typer.Option(
        False,
        "--watch",
        help="After scanning, keep watching PATHS: register each new "
        "checkpoint once complete and queue it on --evalset.",
    ),
    evalset: str | None = typer.Option(
        None, "--evalset", help="With --watch: the eval set to queue new checkpoints on."
    ),
    interval: float = typer.Option(10.0, "--interval", help="With --watch: seconds between polls."),
    settle_seconds: float = typer.Option(
        30.0, "--settle-seconds", help="With --watch: files unchanged this long count as complete."
    ),
) -> None:
    """Find runs, checkpoints, token spaces, eval_step*.json files and eval sets under PATHS and
    register them. Unchanged checkpoints (same size and mtime) are skipped without reading them;
    broken ones are registered as invalid with their reason and the scan goes on.
    With --watch --evalset NAME it then keeps running, like `evalboard watch`."""
    from registry.scanner import scan as do_scan

    if watch and not evalset:
        raise typer.BadParameter("--watch needs --evalset NAME (the eval set new checkpoints are queued on)")

    reg, _ = _registry()
    with _progress("scan") as bar:
        task = bar.add_task("scanning", total=None)
        summary = do_scan(
            reg, paths, on_total=lambda n: bar.update(task, total=n), progress=lambda _p: bar.advance(task)
        )
    if json_out:
        _print_json(summary.to_dict())
    else:
        err.print(
            f"found {summary.found} checkpoints in {summary.runs} runs: {summary.new} new, "
            f"{summary.updated} updated, {summary.unchanged} unchanged, {summary.invalid} invalid; "
            f"{summary.evalsets} new eval sets, {summary.results_imported} eval results imported"
        )
        for item in summary.invalid_items:
            err.print(f"[red]invalid[/red] {escape(item['reason'])}", markup=True, highlight=False)
    if watch:
        from evalboard.cli_queue import run_watch

        run_watch(paths, evalset, interval=interval, settle_seconds=settle_seconds)


@app.command()
def inspect(
    path: Path = typer.Argument(
        ...,
        help="A checkpoint folder or .pt file, a token_space.json, an eval set folder/manifest, or an eval_step*.json.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Validate one file or folder and say what it is (track, step, base model, ranges, hashes,
    shapes), or why it is invalid (exit 2). Registers nothing."""
    from evalboard.inspecting import inspect_path

    summary = inspect_path(path)
    if json_out:
        _print_json(summary)
        return
    for key, value in summary.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, default=str)
        out.print(f"{key:>18}: {value}", highlight=False, markup=False)


@app.command()
def audit(
    json_out: bool = typer.Option(False, "--json", help="Print findings as a JSON list."),
    fail_on_mismatch: bool = typer.Option(
        False, "--fail-on-mismatch", help="Exit 1 when any error-level finding exists (for CI gates)."
    ),
    severity: str = typer.Option("info", help="Lowest severity to show: error, warning or info."),
) -> None:
    """Report token-space compatibility across everything registered: checkpoint vs run-level vs
    eval-set token spaces, row ranges vs modality ranges, base-model padding rows, base models
    mixed within a run, codec/tokenizer versions, checkpoints shipped without token_space.json."""
    from registry.audit import SEVERITIES, summarize
    from registry.audit import audit as do_audit

    if severity not in SEVERITIES:
        raise typer.BadParameter(f"--severity must be one of {', '.join(SEVERITIES)}")
    reg, s = _registry()
    findings = do_audit(reg, models=s.models)
    shown = [f for f in findings if SEVERITIES.index(f.severity) <= SEVERITIES.index(severity)]
    if not findings:
        say_registry(s, "findings", 0)
    if json_out:
        _print_json([f.to_dict() for f in shown])
    else:
        _print_findings(shown, summarize(findings))
    if fail_on_mismatch and any(f.severity == "error" for f in findings):
        raise typer.Exit(1)


def _print_findings(findings, counts) -> None:
    colours = {"error": "red", "warning": "yellow", "info": "cyan"}
    for f in findings:
        out.print(f"[{colours[f.severity]}]{f.severity:>7}[/] {f.code}: ", end="", markup=True, highlight=False)
        out.print(f.message, markup=False, highlight=False)
    out.print(f"{counts['error']} errors, {counts['warning']} warnings, {counts['info']} info", highlight=False)


@evalset_app.command("add")
def evalset_add(
    path: Path = typer.Argument(..., help="Eval-set folder with manifest.json and *.parquet."),
    name: str | None = typer.Option(None, help="Register under this name instead of the manifest's."),
    replace: bool = typer.Option(False, help="Replace an eval set already registered under the same name."),
    json_out: bool = typer.Option(False, "--json", help="Print the registered eval set as JSON."),
) -> None:
    """Validate and register an eval set (nothing is written if it is invalid)."""
    from registry.scanner import register_evalset

    reg, _ = _registry()
    es, state = register_evalset(reg, path, name=name, replace=replace)
    if json_out:
        _print_json(
            {
                "name": es.name,
                "content_hash": es.content_hash,
                "token_space_hash": es.token_space_hash,
                "n_examples": es.n_examples,
                "tasks": es.tasks,
                "state": state,
            }
        )
    else:
        err.print(
            f"{state}: eval set {es.name!r} ({es.n_examples} examples, hash {es.content_hash[:12]})",
            markup=False,
            highlight=False,
        )


@evalset_app.command("list")
def evalset_list(json_out: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List registered eval sets."""
    reg, _ = _registry()
    rows = [
        {
            "name": e.name,
            "n_examples": e.n_examples,
            "tasks": sorted(e.tasks),
            "content_hash": e.content_hash,
            "token_space_hash": e.token_space_hash,
            "path": e.path,
        }
        for e in reg.list_evalsets()
    ]
    if json_out:
        _print_json(rows)
        return
    for r in rows:
        out.print(
            f"{r['name']}  {r['n_examples']} examples  tasks={','.join(r['tasks'])}  "
            f"ts={(r['token_space_hash'] or '?')[:12]}  {r['path']}",
            markup=False,
            highlight=False,
        )


@app.command()
def runs(
    json_out: bool = typer.Option(False, "--json", help="Print as JSON."),
    verbose_flag: bool = typer.Option(False, "--verbose", "-v", help="Say which workspace and stores are used."),
) -> None:
    """List registered runs with their checkpoint counts (and, on stderr, which registry was read)."""
    verbose(verbose_flag)
    reg, s = _registry()
    cks = reg.list_checkpoints()
    rows = []
    for r in reg.list_runs():
        mine = [c for c in cks if c.run_id == r.id]
        rows.append(
            {
                "name": r.name,
                "track": r.track,
                "base_model": r.base_model,
                "checkpoints": len(mine),
                "invalid": sum(c.status != "valid" for c in mine),
                "steps": sorted(c.step for c in mine if c.step is not None),
                "path": r.path,
            }
        )
    say_registry(s, "runs", len(rows))
    if json_out:
        _print_json(rows)
        return
    for r in rows:
        out.print(
            f"{r['name']}  track {r['track']}  {r['checkpoints']} checkpoints ({r['invalid']} invalid)  "
            f"base {r['base_model']}  {r['path']}",
            markup=False,
            highlight=False,
        )


@app.command()
def info(json_out: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """Which workspace, registry, MLflow store, artifact location and base models commands run
    here use, and where each setting comes from (environment, workspace config or default)."""
    import os

    from registry.settings import ENV_VARS

    s = settings()
    d = {
        **s.describe(),
        "mlflow_ui": s.mlflow_ui_command(),
        "environment": {v: os.environ[v] for v in ENV_VARS if os.environ.get(v)},
    }
    if json_out:
        _print_json(d)
        return
    origins = d["origins"]
    rows = [
        ("workspace", d["workspace"] or "none here or above (`evalboard init` makes one)", origins["workspace"]),
        ("home", d["home"], origins["home"]),
        ("registry", d["registry"], origins["registry"]),
        ("MLflow", d["mlflow_tracking_uri"], origins["mlflow"]),
        ("artifacts", d["artifact_location"] or "chosen by the MLflow server", origins["artifacts"]),
        ("models", ", ".join(f"{k} -> {v}" for k, v in d["models"].items()) or "none", origins["models"]),
        ("MLflow UI", d["mlflow_ui"], None),
        ("env", ", ".join(d["environment"]) or "none of " + ", ".join(ENV_VARS) + " is set", None),
    ]
    for name, value, origin in rows:
        out.print(f"{name:>10}: {value}" + (f"  ({origin})" if origin else ""), markup=False, highlight=False)


@app.command()
def init(
    path: Path = typer.Argument(Path("."), help="The workspace folder (created if missing)."),
    models: list[str] = typer.Option([], "--model", help="ID=DIR: a base model's local folder (repeatable)."),
) -> None:
    """Make PATH a workspace: write `PATH/.evalboard/config.toml` with a SQLite registry, a local
    MLflow store and its artifact folder inside PATH, and the base models given. Every command
    run in PATH or below then uses them."""
    from registry.errors import InvalidInput
    from registry.settings import Workspace, parse_models, write_workspace_config

    ws = Workspace(path.resolve())
    if ws.config_path.exists():
        raise InvalidInput("already exists; edit it instead", path=ws.config_path)
    mapping = parse_models(",".join(models)) if models else {}
    written = write_workspace_config(ws.root, models=mapping)
    err.print(f"wrote {written}", markup=False, highlight=False)


@app.command()
def demo(
    workdir: Path = typer.Option(Path("demo-workspace"), help="Where the demo builds its models, runs and stores."),
    port: int = typer.Option(8501, help="Port for the dashboard."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Do everything but start the dashboard; exit 0."),
    quick: bool = typer.Option(False, "--quick", help="Fewer training steps and examples (for tests)."),
) -> None:
    """Build a tiny Qwen3 base, train three Track B runs (only new rows), one run in a mismatched
    token space and one Track A connector run, scan them, evaluate every checkpoint into MLflow,
    print the audit and start the dashboard. Everything happens on this machine, offline."""
    from evalboard.demo import DemoPlan, run_demo

    run_demo(workdir, port=port, serve=not no_serve, console=err, plan=DemoPlan.quick() if quick else None)


def _register_commands() -> None:
    """Commands that live next to the package they drive (evaluator, queue, dashboard). A module
    that fails to import is an error, never a silently missing command."""
    from evalboard import cli_compare, cli_dashboard, cli_eval, cli_queue

    for module in (cli_eval, cli_compare, cli_queue, cli_dashboard):
        module.register(app)


_register_commands()


def _click_exceptions():
    try:  # typer >= 0.24 vendors its own click
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - older typer uses click itself
        from click import exceptions
    return exceptions


def main() -> None:
    click = _click_exceptions()

    try:
        status = app(standalone_mode=False)
    except click.NoArgsIsHelpError as e:  # `evalboard` or `evalboard jobs` alone: the help
        text = e.format_message()  # typer's rich help was printed when the error was made; plain help was not
        if text:
            sys.stdout.write(text + "\n")
        sys.exit(2)
    except click.UsageError as e:
        # `--help` stays rich; a usage error is one line that names the option, like any bad input.
        err.print(f"error: {usage_line(e)}", markup=False, highlight=False)
        sys.exit(2)
    except click.ClickException as e:  # e.g. a file option that cannot be opened
        err.print(f"error: {' '.join(e.format_message().split())}", markup=False, highlight=False)
        sys.exit(2)
    except typer.Abort:
        err.print("aborted", markup=False, highlight=False)
        sys.exit(130)
    except EvalboardError as e:
        err.print(f"error: {e}", markup=False, highlight=False)
        sys.exit(2)
    sys.exit(status if isinstance(status, int) else 0)


def usage_line(e) -> str:
    """`evalboard eval: Missing option '--evalset'. (see evalboard eval --help)` on one line."""
    message = " ".join(e.format_message().split())
    names, ctx = [], e.ctx
    while ctx is not None and ctx.parent is not None:
        names.insert(0, ctx.info_name)
        ctx = ctx.parent
    command = " ".join(["evalboard", *names])
    return f"{command}: {message} (see {command} --help)"


if __name__ == "__main__":
    main()

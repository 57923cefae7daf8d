"""`evalboard demo`: a workspace built from a tiny local Qwen3, scanned and audited.

Later stages (training, evaluation, the dashboard) extend this; every stage shows progress.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console

from evalboard.fixtures import build_workspace
from registry.audit import audit, summarize
from registry.scanner import scan
from registry.settings import Settings
from registry.store import Registry


def run_demo(workdir: Path, *, port: int = 8501, serve: bool = True, console: Console | None = None) -> int:
    console = console or Console(stderr=True)
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / ".evalboard"
    os.environ.setdefault("EVALBOARD_HOME", str(home))
    settings = Settings.from_env()
    settings.ensure_home()
    with console.status("building the tiny Qwen3 base, checkpoints and eval set"):
        ws = build_workspace(workdir)
    console.print(f"workspace: {workdir}", markup=False, highlight=False)
    reg = Registry(settings=settings)
    with console.status("scanning"):
        summary = scan(reg, [ws.root / "outputs", ws.root / "evalsets"])
    console.print(f"scan: {summary.found} checkpoints in {summary.runs} runs, {summary.new} new, "
                  f"{summary.invalid} invalid", highlight=False)
    findings = audit(reg, models={**settings.models, ws.base_model: str(ws.base_dir)})
    for f in findings:
        console.print(f"{f.severity:>7} {f.code}: {f.message}", markup=False, highlight=False)
    counts = summarize(findings)
    console.print(f"audit: {counts['error']} errors, {counts['warning']} warnings, {counts['info']} info",
                  highlight=False)
    if serve:
        console.print("the dashboard is not part of this build yet; run with --no-serve", highlight=False)
    return 0

"""HTML printed to PDF by headless Chromium, as a subprocess (no browser library, no server).

Chromium is found once per call: the `EVALBOARD_CHROMIUM` environment variable (a path, or a
name looked up on PATH) when set, else the first of `chromium`, `chromium-browser`,
`google-chrome` on PATH. Each print gets a fresh temporary profile (`--user-data-dir`) and
folder, removed afterwards; Chromium runs in its own process group, killed as a whole when it
takes longer than the timeout. The PDF is returned as bytes: the caller decides where it goes
(`evalboard export` writes it atomically).

When the page is printed: Chromium's `--print-to-pdf` prints once the page has loaded, i.e.
after every inline script ran; `--virtual-time-budget` also lets timers the page set up run
before the print (virtual time runs ahead while the page is idle, so this costs next to no wall
time). Pages meant for print should still draw without waiting:
`dashboard.report.to_html(for_print=True)` draws its charts as SVG while the page parses.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from registry.errors import EvalboardError, NotFound

__all__ = ["ChromiumMissing", "PrintFailed", "PrintedPdf", "find_chromium", "print_html", "CANDIDATES", "ENV_VAR"]

ENV_VAR = "EVALBOARD_CHROMIUM"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
DEFAULT_TIMEOUT_S = 120.0
VIRTUAL_TIME_BUDGET_MS = 5000
_HOW_TO_GET = f"apt-get install chromium, or set {ENV_VAR}"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-pdf-header-footer",
    "--print-to-pdf-no-header",  # the same, for Chromium before 111
    f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
)


class ChromiumMissing(NotFound):
    """No Chromium to print with: none on PATH, or EVALBOARD_CHROMIUM names no executable."""


class PrintFailed(EvalboardError):
    """Chromium ran but gave no PDF: it failed, timed out, or wrote something else."""


@dataclass(frozen=True)
class PrintedPdf:
    data: bytes
    """The whole PDF file."""
    chromium: str
    """The executable that printed it."""
    seconds: float
    """Wall time of the Chromium run."""


def find_chromium(env: Mapping[str, str] | None = None) -> str:
    """The Chromium executable to print with, or `ChromiumMissing` saying what to install."""
    env = os.environ if env is None else env
    path = env.get("PATH", os.defpath)
    named = env.get(ENV_VAR, "").strip()
    if named:
        found = shutil.which(named, path=path) if os.sep not in named else named
        if found and os.path.isfile(found) and os.access(found, os.X_OK):
            return found
        raise ChromiumMissing(
            f"PDF export needs Chromium: {ENV_VAR}={named} is not an executable file"
            f" (apt-get install chromium, or point {ENV_VAR} at a Chromium or Chrome executable)"
        )
    for name in CANDIDATES:
        found = shutil.which(name, path=path)
        if found:
            return found
    names = ", ".join(CANDIDATES[:-1]) + f" or {CANDIDATES[-1]}"
    raise ChromiumMissing(f"PDF export needs Chromium: no {names} on PATH ({_HOW_TO_GET})")


def print_html(html: str, *, chromium: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> PrintedPdf:
    """`html` (a self-contained page: no network is used) printed to PDF by headless Chromium."""
    exe = chromium or find_chromium()
    with tempfile.TemporaryDirectory(prefix="evalboard-pdf-", ignore_cleanup_errors=True) as tmp:
        folder = Path(tmp)
        page, out, log = folder / "report.html", folder / "report.pdf", folder / "chromium.log"
        page.write_text(html, encoding="utf-8")
        cmd = [exe, *FLAGS, f"--user-data-dir={folder / 'profile'}", f"--print-to-pdf={out}", page.as_uri()]
        started = time.monotonic()
        status = _run(cmd, exe, log, timeout_s)
        seconds = time.monotonic() - started
        data = out.read_bytes() if out.is_file() else b""
        said = _last_line(log)
    if status != 0:
        raise PrintFailed(f"Chromium ({exe}) failed with exit status {status}{said}")
    if not data.startswith(b"%PDF-"):
        what = "wrote no PDF" if not data else "wrote something that is not a PDF"
        raise PrintFailed(f"Chromium ({exe}) {what}{said}")
    return PrintedPdf(data=data, chromium=exe, seconds=seconds)


def _run(cmd: list[str], exe: str, log: Path, timeout_s: float) -> int:
    """Run Chromium in its own process group, its output going to `log` (a file, not a pipe: a
    helper process that outlives the browser cannot keep us waiting); its exit status."""
    try:
        with log.open("wb") as sink:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the wrapper script, the browser and its helpers: one group
            )
    except OSError as e:
        raise PrintFailed(f"Chromium ({exe}) cannot be started: {e.strerror or type(e).__name__}") from None
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise PrintFailed(f"Chromium ({exe}) did not finish printing within {timeout_s:g} s") from None
    except BaseException:  # e.g. KeyboardInterrupt: leave no browser behind
        _kill_group(proc)
        raise


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL to the whole group while its leader is not yet reaped (so the group id is still
    ours), then reap the leader."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _last_line(log: Path) -> str:
    """`: <Chromium's last line of output>`, or nothing."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f": {lines[-1][:300]}" if lines else ""

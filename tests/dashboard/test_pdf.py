"""PDF reports: `evalboard export --format pdf` through the real CLI and Debian's headless
Chromium, read back with poppler-utils (pdfinfo, pdftotext, pdftoppm); the Export page's PDF; and
the one-line refusals when Chromium is missing or fails, which leave no file behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dashboard import pdf, report
from tests._infra.debian import chromium, poppler
from tests.dashboard._helpers import assert_ok, registry_from_env, run_page

RUNS = ["stage3_token_lm_iter5", "stage3_token_lm_wide_image"]
# plotly's default colours of the first two traces: the two runs' loss curves
TRACE_RGB = [(0x63, 0x6E, 0xFA), (0xEF, 0x55, 0x3B)]
PLOT_BG_RGB = (0xE5, 0xEC, 0xF6)  # plotly's default plot-area background
DPI = 150  # lines 1.5 CSS px wide are 3 pixels here, so most of a line's pixels have its colour


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    return {"chromium": chromium(), **poppler()}


def _export(out: Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "evalboard.cli", "export", "--runs", ",".join(RUNS), "--format", "pdf"]
    return subprocess.run(
        [*cmd, "--out", str(out)],
        cwd=cwd,
        env=env if env is not None else os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _pdf_pages(tools: dict[str, str], path: Path) -> int:
    info = subprocess.run([tools["pdfinfo"], str(path)], capture_output=True, text=True, timeout=60, check=True)
    return int(re.search(r"^Pages:\s+(\d+)$", info.stdout, re.M).group(1))


def _pdf_text(tools: dict[str, str], path: Path) -> str:
    return subprocess.run(
        [tools["pdftotext"], str(path), "-"], capture_output=True, text=True, timeout=60, check=True
    ).stdout


def _line_pixels(tools: dict[str, str], path: Path, page: int, tmp: Path) -> list[int]:
    """How many pixels inside the charts' plot areas of page `page` (rendered at DPI) have each
    of TRACE_RGB, give or take anti-aliasing. Plot areas are the rows crossed by plotly's grey-blue
    plot background, so the legends (on white, below) do not count."""
    from PIL import Image

    prefix = tmp / f"page{page}"
    pages = ["-f", str(page), "-l", str(page), "-singlefile"]
    subprocess.run([tools["pdftoppm"], "-r", str(DPI), "-png", *pages, str(path), str(prefix)], check=True, timeout=60)
    rgb = np.asarray(Image.open(prefix.with_suffix(".png")).convert("RGB"), dtype=int)

    def near(colour, tolerance: int) -> np.ndarray:
        return np.abs(rgb - np.array(colour)).max(axis=-1) <= tolerance

    plot_rows = near(PLOT_BG_RGB, 3).sum(axis=1) > 100
    return [int(near(c, 40)[plot_rows].sum()) for c in TRACE_RGB]


@pytest.mark.browser
@pytest.mark.slow
def test_cli_pdf_export_has_tables_and_drawn_charts(populated, tmp_path, tools):
    out = tmp_path / "reports" / "report.pdf"
    before = _printing_chromiums()
    proc = _export(out, tmp_path)
    assert proc.returncode == 0, proc.stderr
    _assert_no_chromium_left(before)
    assert re.search(r"wrote .*report\.pdf \(\d+ KiB, 2 runs\)", proc.stderr)
    assert out.read_bytes().startswith(b"%PDF-")
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.pdf"]  # no temporary file left

    pages = _pdf_pages(tools, out)
    text = _pdf_text(tools, out)
    page_texts = text.split("\f")[:-1]  # pdftotext ends every page with a form feed
    assert pages >= 1 and len(page_texts) == pages
    assert all(p.strip() for p in page_texts), "a blank page"

    # the tables: run names and every loss on `all`, formatted as the report's tables show them
    with registry_from_env() as reg:
        rep = report.collect(reg, RUNS)
    assert rep.tasks == ["all", "a2t", "i2t"]
    for run in RUNS:
        assert run in text
    losses = rep.results.loc[rep.results["task"] == "all", "loss"]
    assert len(losses) >= 6
    for loss in losses:
        assert f"{loss:.4f}" in text

    # the charts: plotly drew them as SVG, so their titles, axis titles, tick labels and legend are
    # text in the PDF, between the "Loss vs step" heading and the "Runs" table heading
    start = text.index("Loss vs step")
    charts = text[start : re.compile(r"^\f?Runs$", re.M).search(text, start).start()]
    for task in rep.tasks:
        assert f"loss ({task})" in charts
    assert len(re.findall(r"^step$", charts, re.M)) == len(rep.tasks)  # each x-axis title
    assert all(run in charts for run in RUNS) and "best checkpoint" in charts  # the legends
    steps = sorted({int(s) for s in rep.results["step"]})
    assert str(steps[-1]) in charts  # the x-axis ticks reach the last step
    assert "WebGL" not in text  # no "WebGL is not supported" in place of a chart
    # ... and the lines are drawn: both runs' colours cover pixels in the plot area of the first
    # chart's page (a line across a chart is some 1000 pixels at DPI)
    first_chart_page = next(i for i, p in enumerate(page_texts, 1) if "loss (all)" in p)
    pixels = _line_pixels(tools, out, first_chart_page, tmp_path)
    assert min(pixels) > 500, pixels


@pytest.mark.browser
@pytest.mark.slow
def test_export_page_builds_pdf_download(populated, tools):
    at = run_page("export", timeout=180)
    assert_ok(at, "Export")
    assert "PDF (print)" in at.radio(key="export_format").options
    at.radio(key="export_format").set_value("pdf")
    at.button(key="export_build").click().run()
    assert_ok(at, "Export")
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["export_payload"].startswith(b"%PDF-")
    assert [b.label for b in at.download_button] == ["Download evalboard_report.pdf"]


def test_export_page_without_chromium_says_so(populated, tmp_path, monkeypatch):
    at = run_page("export")
    at.radio(key="export_format").set_value("md")
    at.button(key="export_build").click().run()
    assert [b.label for b in at.download_button] == ["Download evalboard_report.md"]
    monkeypatch.setenv("EVALBOARD_CHROMIUM", str(tmp_path / "no-such-chromium"))
    at.radio(key="export_format").set_value("pdf")
    at.button(key="export_build").click().run()
    assert_ok(at, "Export")
    assert len(at.error) == 1 and "PDF export needs Chromium" in at.error[0].value
    assert not at.download_button  # the Markdown file is not offered in place of the PDF


@pytest.mark.parametrize("how", ["env", "path"])
def test_cli_pdf_without_chromium_is_one_line_and_writes_nothing(populated, tmp_path, how):
    out = tmp_path / "out" / "report.pdf"
    env = {k: v for k, v in os.environ.items() if k != "EVALBOARD_CHROMIUM"}
    if how == "env":
        env["EVALBOARD_CHROMIUM"] = str(tmp_path / "no-such-chromium")
    else:
        (tmp_path / "bin").mkdir()
        env["PATH"] = str(tmp_path / "bin")  # the CLI runs as sys.executable: no PATH needed
    proc = _export(out, tmp_path, env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: evalboard export: PDF export needs Chromium: ")
    if how == "env":
        assert f"EVALBOARD_CHROMIUM={tmp_path / 'no-such-chromium'} is not an executable file" in lines[0]
    else:
        assert "no chromium, chromium-browser or google-chrome on PATH" in lines[0]
        assert "apt-get install chromium, or set EVALBOARD_CHROMIUM" in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_pdf_when_chromium_fails_keeps_the_old_file(populated, tmp_path):
    """A 'Chromium' that runs and fails (here /bin/false): one line, exit 2, --out untouched."""
    false = "/bin/false" if Path("/bin/false").exists() else "/usr/bin/false"
    out = tmp_path / "report.pdf"
    out.write_bytes(b"the previous report")
    proc = _export(out, tmp_path, {**os.environ, "EVALBOARD_CHROMIUM": false})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: evalboard export: Chromium ({false}) failed with exit status 1"
    ), proc.stderr
    assert out.read_bytes() == b"the previous report"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".report")) == []


def _printing_chromiums() -> set[int]:
    """Pids of live Chromium processes started by `dashboard.pdf` (their profile is ours)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"evalboard-pdf-" in cmdline and b"--print-to-pdf=" in cmdline:
                pids.add(int(entry.name))
    return pids


def _assert_no_chromium_left(before: set[int]) -> None:
    deadline = time.monotonic() + 30
    while _printing_chromiums() - before and time.monotonic() < deadline:
        time.sleep(0.1)  # polling interval: a killed group's processes are reaped asynchronously
    assert not _printing_chromiums() - before, "a Chromium outlived its print"


@pytest.mark.browser
@pytest.mark.slow
def test_print_timeout_kills_chromium(tools):
    before = _printing_chromiums()
    started = time.monotonic()
    with pytest.raises(pdf.PrintFailed, match=r"did not finish printing within 0\.05 s"):
        pdf.print_html("<!DOCTYPE html><p>x</p>", chromium=tools["chromium"], timeout_s=0.05)
    assert time.monotonic() - started < 30
    _assert_no_chromium_left(before)


def test_find_chromium_order_and_override(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("google-chrome", "chromium-browser"):
        exe = bin_dir / name
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    assert pdf.find_chromium({"PATH": str(bin_dir)}) == str(bin_dir / "chromium-browser")
    assert pdf.find_chromium({"PATH": str(bin_dir), "EVALBOARD_CHROMIUM": "google-chrome"}) == str(
        bin_dir / "google-chrome"
    )
    (bin_dir / "chromium").write_text("not executable")
    assert pdf.find_chromium({"PATH": str(bin_dir)}) == str(bin_dir / "chromium-browser")
    with pytest.raises(pdf.ChromiumMissing, match="EVALBOARD_CHROMIUM=.*chromium is not an executable file"):
        pdf.find_chromium({"PATH": str(bin_dir), "EVALBOARD_CHROMIUM": str(bin_dir / "chromium")})
    with pytest.raises(pdf.ChromiumMissing, match=r"no chromium, chromium-browser or google-chrome on PATH"):
        pdf.find_chromium({"PATH": str(tmp_path / "empty")})

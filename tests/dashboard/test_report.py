"""Reports (HTML/Markdown/CSV) and `evalboard export`; escaping of user-controlled names."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import pytest

from dashboard import report
from tests.dashboard._helpers import TITLES, assert_ok, registry_from_env, run_page

EVIL = "<script>alert('x')</script>"


def test_neutralise_cell():
    assert report.neutralise_cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
    for s in ("+1", "-cmd", "@SUM(A1)", "\tx"):
        assert report.neutralise_cell(s).startswith("'")
    assert report.neutralise_cell(-0.5) == -0.5
    assert report.neutralise_cell("run-1") == "run-1"


def test_safe_csv_keeps_numbers():
    import pandas as pd

    text = report.safe_csv(pd.DataFrame({"run": ["=1+1", "ok"], "loss": [-0.25, 1.0]}))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[1] == ["'=1+1", "-0.25"] and rows[2] == ["ok", "1.0"]


def test_report_formats(populated):
    with registry_from_env() as reg:
        rep = report.collect(reg, ["stage3_token_lm_iter5", "stage3_token_lm_wide_image"], "synthetic-a2t-i2t")
        with pytest.raises(Exception, match="unknown runs: nope"):
            report.collect(reg, ["nope"])
    assert rep.tasks == ["all", "a2t", "i2t"]
    html = report.to_html(rep)
    assert html.count('class="plotly-graph-div"') == 3 and "plotly.js" in html.lower()
    assert "stage3_token_lm_wide_image" in html and "token-space-mismatch" in html
    md = report.to_markdown(rep)
    assert "| stage3\\_token\\_lm\\_iter5 |" in md
    rows = list(csv.DictReader(io.StringIO(report.to_csv(rep))))
    assert len(rows) == 6 * 3 and {r["task"] for r in rows} == {"all", "a2t", "i2t"}


def _rename_run(url: str, name: str) -> None:
    from sqlalchemy import update

    from registry import models as M
    from registry.store import Registry

    with Registry(url) as reg, reg.engine.begin() as conn:
        conn.execute(update(M.Run).where(M.Run.name == "stage3_token_lm_iter5").values(name=name))


def test_script_in_run_name_is_escaped_everywhere(populated, tmp_path):
    evil = f"=cmd|{EVIL}"
    _rename_run(populated, evil)
    with registry_from_env() as reg:
        rep = report.collect(reg, [evil, "stage3_token_lm_wide_image"])
    html = report.to_html(rep)
    assert EVIL not in html and "<script>alert" not in html
    assert "&lt;script&gt;alert(" in html
    md = report.to_markdown(rep)
    assert "<script>" not in md and "&lt;script&gt;" in md
    for row in csv.reader(io.StringIO(report.to_csv(rep))):
        assert not row[0].startswith(("=", "+", "-", "@"))
    assert any(row[0] == "'" + evil for row in csv.reader(io.StringIO(report.to_csv(rep))))
    # the pages show it as plain data, never as markup
    for page in ("runs", "compare", "checkpoint", "compatibility", "row_stats", "queue", "export"):
        at = run_page(page)
        assert_ok(at, TITLES[page])
        for md_el in [*at.markdown, *at.caption, *at.info, *at.error, *at.warning, *at.success]:
            assert "<script>" not in md_el.value
        assert not any(getattr(el.proto, "unsafe_allow_html", False) for el in at.markdown)
    at = run_page("runs")
    assert evil in set(at.dataframe[0].value["run"])


def test_cli_export_writes_checked_files(populated, tmp_path):
    for fmt in ("html", "md", "csv"):
        out = tmp_path / f"report.{fmt}"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "evalboard.cli",
                "export",
                "--runs",
                "stage3_token_lm_iter5,stage3_token_lm_wide_image",
                "--format",
                fmt,
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        text = out.read_text()
        assert "stage3" in text
    assert out.read_text().startswith("run,step")
    bad = subprocess.run(
        [sys.executable, "-m", "evalboard.cli", "export", "--runs", "missing", "--out", str(tmp_path / "x.html")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "unknown runs: missing" in bad.stderr and "Traceback" not in bad.stderr

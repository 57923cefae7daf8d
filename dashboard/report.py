"""Reports of selected runs as self-contained HTML (interactive Plotly charts, plotly.js inlined),
Markdown, CSV and PDF (the HTML printed by headless Chromium, `dashboard.pdf`).
`collect(reg, runs, evalset, examples=...)` gathers a `Report`, the `to_*` functions render it;
the Export page and `evalboard export` share them.

Every loss carries its 95% bootstrap interval (`low`, `high`) when its result has per-example
losses (read through `registry.comparison` from the result's MLflow run, via the `examples`
cache), and a "vs best" table gives each run's best checkpoint against the overall best with the
paired interval of the difference and p. Results without per-example losses (imported) keep
their point values and say why there is no interval.

Run names, eval-set names and task labels are user strings: HTML escapes them (tables with
`escape=True`, text with `html.escape`, and figure strings are escaped by `dashboard.charts`);
Markdown escapes `<`, `>`, `|` and backslashes; CSV prefixes a quote to any string cell that a
spreadsheet would read as a formula.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from dashboard import analysis, charts, data, pdf
from registry import bootstrap
from registry.comparison import ResultExamples
from registry.errors import InvalidInput, NotFound
from registry.per_example import ExampleCache
from registry.settings import DEFAULT_MLFLOW_UI
from registry.store import Registry

__all__ = ["Report", "collect", "to_html", "to_markdown", "to_csv", "to_pdf", "neutralise_cell", "render", "FORMATS"]

FORMATS = ("html", "md", "csv", "pdf")
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


@dataclass
class Report:
    runs: list[str]
    evalset: str | None
    results: pd.DataFrame
    runs_table: pd.DataFrame
    best: pd.DataFrame
    findings: pd.DataFrame
    vs_best: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=analysis.DELTA_COLUMNS))
    """Each run's best checkpoint against the overall best, with the paired 95% interval."""
    no_interval: dict[str, int] = field(default_factory=dict)
    """Why some results have no interval: reason -> how many."""
    iters: int = bootstrap.DEFAULT_ITERS
    seed: int = bootstrap.DEFAULT_SEED
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def tasks(self) -> list[str]:
        return data.task_order(self.results["task"]) if not self.results.empty else []


def collect(
    reg: Registry,
    run_names: list[str],
    evalset: str | None = None,
    *,
    examples: ExampleCache | None = None,
    iters: int = bootstrap.DEFAULT_ITERS,
    seed: int = bootstrap.DEFAULT_SEED,
    mlflow_ui: str = DEFAULT_MLFLOW_UI,
) -> Report:
    """Gather the report of `run_names` (on one eval set label, or all when None). Per-example
    losses come from each result's MLflow run through `examples` (`registry.comparison.example_cache`),
    else from the local files the results name."""
    from registry.audit import audit

    runs = data.load_runs(reg, mlflow_ui)
    unknown = sorted(set(run_names) - set(runs["run"]))
    if unknown:
        known = ", ".join(sorted(runs["run"])) or "none registered; run `evalboard scan PATH`"
        raise NotFound(f"unknown runs: {', '.join(unknown)}; known: {known}")
    chosen = runs[runs["run"].isin(run_names)]
    ids = chosen["run_id"].tolist()
    results = data.latest_per_checkpoint(data.load_results(reg, run_ids=ids))
    if evalset is not None:
        labels = sorted(results["evalset"].unique())
        if evalset not in labels:
            raise InvalidInput(
                f"eval set {evalset!r} has no results for these runs; with results: {', '.join(labels) or 'none'}"
            )
        results = results[results["evalset"] == evalset]
    checkpoints = data.load_checkpoints(reg, run_ids=ids)
    table = data.runs_overview(chosen, checkpoints, results)
    findings = pd.DataFrame(
        [f.to_dict() for f in audit(reg) if f.run in set(run_names)],
        columns=["severity", "code", "message", "run", "checkpoint", "evalset", "detail"],
    )
    results, vs_best, no_interval = _with_intervals(reg, results, ids, examples, iters, seed)
    return Report(
        runs=list(run_names),
        evalset=evalset,
        results=results,
        runs_table=table,
        best=analysis.best_checkpoints(results),
        findings=findings.drop(columns="detail"),
        vs_best=vs_best,
        no_interval=no_interval,
        iters=iters,
        seed=seed,
    )


def _with_intervals(
    reg: Registry, results: pd.DataFrame, run_ids: list, examples: ExampleCache | None, iters: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """(results with each loss's low/high, the vs-best table, why some results have none)."""
    entities = data.result_entities(reg, run_ids)
    sides: dict[int, ResultExamples] = {}

    def side(result_id: int) -> ResultExamples:
        if result_id not in sides:  # each result's per-example losses are read once
            sides[result_id] = data.result_examples(entities[result_id], examples)
        return sides[result_id]

    def paired(a: int, b: int) -> data.PairedDelta | None:
        if a not in entities or b not in entities:
            return None
        return data.paired_delta(side(a), side(b), iters=iters, seed=seed)

    found = [
        data.result_intervals(side(rid), iters=iters, seed=seed)
        for rid in results["result_id"].astype(int).unique().tolist()
        if rid in entities
    ]
    results = analysis.with_intervals(results, data.intervals_frame(found))
    return results, analysis.deltas_vs_best(results, paired), data.missing_intervals(found)


# -- CSV ---------------------------------------------------------------------------------------


def neutralise_cell(value: Any) -> Any:
    """A string a spreadsheet would evaluate (=, +, -, @, tab, CR first) gets a leading quote.
    Numbers are left alone: -0.5 is a number, not a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


def safe_csv(df: pd.DataFrame) -> str:
    """`df` as CSV with every string cell (and header) neutralised."""
    clean = df.copy()
    for c in clean.columns:
        if clean[c].dtype == object or pd.api.types.is_string_dtype(clean[c]):
            clean[c] = clean[c].map(neutralise_cell)
    clean.columns = [neutralise_cell(str(c)) for c in clean.columns]
    buf = io.StringIO()
    clean.to_csv(buf, index=False)
    return buf.getvalue()


def to_csv(report: Report) -> str:
    """Long format: one line per (run, checkpoint, eval set, task); `low` and `high` are the 95%
    interval of the loss (empty where the result has no per-example losses)."""
    cols = [
        "run",
        "step",
        "tokens_seen",
        "evalset",
        "task",
        "loss",
        "low",
        "high",
        "tokens",
        "examples",
        "source",
        "subset",
        "computed_for",
        "mlflow_run_id",
        "created_at",
    ]
    return safe_csv(report.results[[c for c in cols if c in report.results.columns]])


# -- Markdown ----------------------------------------------------------------------------------


def md_escape(value: Any) -> str:
    s = "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)
    for a, b in (
        ("\\", "\\\\"),
        ("|", "\\|"),
        ("<", "&lt;"),
        (">", "&gt;"),
        ("\n", " "),
        ("`", "\\`"),
        ("[", "\\["),
        ("]", "\\]"),
        ("*", "\\*"),
        ("_", "\\_"),
    ):
        s = s.replace(a, b)
    return s


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if pd.isna(value) else f"{value:.4f}"
    if value is None or value is pd.NA or value is pd.NaT:
        return ""
    return md_escape(value)


def md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_none_\n"
    head = "| " + " | ".join(md_escape(c) for c in df.columns) + " |"
    sep = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body]) + "\n"


def _overview_columns(report: Report) -> pd.DataFrame:
    keep = ["run", "track", "base_model", "token_space", "checkpoints", "evaluated"]
    keep += [c for c in report.runs_table.columns if c.startswith(("latest ", "best "))]
    return report.runs_table[[c for c in keep if c in report.runs_table.columns]]


def to_markdown(report: Report) -> str:
    parts = [
        f"# evalboard report: {len(report.runs)} runs\n",
        f"Eval set: {md_escape(report.evalset or 'all')}  \nGenerated {report.created_at:%Y-%m-%d %H:%M} UTC\n",
        md_escape(interval_note(report) + computed_once_note(report)) + "\n",
        "## Runs\n",
        md_table(_overview_columns(report)),
        "## Best checkpoint per run (by loss on all)\n",
        md_table(report.best),
        "## Each run's best vs the overall best\n",
        md_escape(VS_BEST_NOTE) + "\n",
        md_table(_vs_best_columns(report)),
        "## Losses\n",
        md_table(_loss_wide(report)),
        "## Audit findings\n",
        md_table(report.findings[["severity", "code", "run", "message"]]),
    ]
    return "\n".join(parts)


VS_BEST_NOTE = (
    "Δ = the run's best loss minus the overall best checkpoint's (the baseline), per task; low / high: "
    "the paired 95% interval of Δ (both scored on the same bootstrap draws of examples); p: the share "
    "of draws whose sign flips; significant: the interval excludes zero."
)


def interval_note(report: Report) -> str:
    """One sentence on how the intervals were made, and why some results have none."""
    text = (
        f"Intervals: low / high bound the 95% bootstrap interval of each loss (examples resampled "
        f"with replacement, B={report.iters}, seed {report.seed})."
    )
    for reason, n in sorted(report.no_interval.items()):
        text += f" {n} result{'s' if n > 1 else ''} without one: {reason}."
    return text


def computed_once_note(report: Report) -> str:
    """A sentence on results shown for a checkpoint but computed for another with the same content."""
    if "computed_for" not in report.results.columns:
        return ""
    shared = report.results.dropna(subset=["computed_for"])
    if shared.empty:
        return ""
    n = shared["result_id"].nunique()
    where = ", ".join(sorted(shared["computed_for"].unique())[:3])
    return (
        f" {n} result{'s' if n > 1 else ''} shown here {'were' if n > 1 else 'was'} computed once, for a checkpoint "
        f"with the same content ({where}{', ...' if shared['computed_for'].nunique() > 3 else ''})."
    )


def _vs_best_columns(report: Report) -> pd.DataFrame:
    table = report.vs_best
    if "interval" in table.columns and table["interval"].isna().all():
        table = table.drop(columns="interval")
    return table


def _loss_wide(report: Report) -> pd.DataFrame:
    """One row per (run, step, eval set): `loss TASK` with its `low TASK` / `high TASK`."""
    r = report.results
    if r.empty:
        return pd.DataFrame(columns=["run", "step", "evalset"])
    values = [v for v in ("loss", "low", "high") if v in r.columns]
    wide = r.pivot_table(index=["run", "step", "evalset"], columns="task", values=values, aggfunc="last", dropna=False)
    ordered = [(v, t) for t in data.task_order(r["task"]) for v in values if (v, t) in wide.columns]
    wide = wide[ordered]
    wide.columns = [f"{v} {t}" for v, t in ordered]
    return wide.reset_index()


# -- HTML --------------------------------------------------------------------------------------

_CSS = """body{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px}
table{border-collapse:collapse;font-size:13px;margin:.5rem 0 1.5rem}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f4f4f4}
.error{color:#b00020}.warning{color:#a15c00}.info{color:#0b5394}"""


def _table_html(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p><em>none</em></p>"
    return df.to_html(index=False, escape=True, na_rep="", float_format=lambda v: f"{v:.4f}", border=0)


def to_html(report: Report, *, for_print: bool = False) -> str:
    """One self-contained page: plotly.js is inlined once, every chart stays interactive.
    `for_print`: the charts are static SVG of a fixed width instead (`_printable`)."""
    import plotly.io as pio

    e = html.escape
    figures = []
    for i, task in enumerate(report.tasks):
        fig = charts.loss_curves(report.results, task)
        fig = _printable(fig) if for_print else fig
        figures.append(pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0), validate=False, div_id=f"loss-{i}"))
    run_list = ", ".join(e(r) for r in report.runs)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>evalboard report</title><style>{_CSS}{_PRINT_CSS}</style></head><body>
<h1>evalboard report</h1>
<p>Runs: {run_list}<br>Eval set: {e(report.evalset or "all")}<br>
Generated {report.created_at:%Y-%m-%d %H:%M} UTC</p>
<p>{e(interval_note(report) + computed_once_note(report))}</p>
<h2>Loss vs step</h2>
{"".join(figures) or "<p><em>no eval results for these runs</em></p>"}
<h2>Runs</h2>
{_table_html(_overview_columns(report))}
<h2>Best checkpoint per run (by loss on all)</h2>
{_table_html(report.best)}
<h2>Each run's best vs the overall best</h2>
<p>{e(VS_BEST_NOTE)}</p>
{_table_html(_vs_best_columns(report))}
<h2>Losses</h2>
{_table_html(_loss_wide(report))}
<h2>Audit findings</h2>
{_table_html(report.findings[["severity", "code", "run", "message"]])}
</body></html>
"""


def render(report: Report, fmt: str) -> str | bytes:
    """The report as text (html, md, csv) or bytes (pdf)."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown report format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "pdf":
        return to_pdf(report).data
    return {"html": to_html, "md": to_markdown, "csv": to_csv}[fmt](report)


# -- PDF ---------------------------------------------------------------------------------------

# Chromium prints on Letter by default with 1 cm margins (A4 is narrower: 718 CSS px inside them);
# a chart keeps the width it was drawn at, so it is drawn to fit either.
_PRINT_WIDTH_PX = 700
_PRINT_CSS = """@media print{body{margin:0;max-width:none}h1,h2{break-after:avoid}
.plotly-graph-div,tr{break-inside:avoid}.modebar-container{display:none}table{font-size:11px}}"""


def _printable(fig: Any) -> dict:
    """`fig` for paper: SVG traces instead of WebGL ones and a fixed width. Plotly then draws it
    while the page parses (nothing left for a timer), and it prints as vectors and text; a WebGL
    canvas needs a GPU or a software fallback that headless Chromium may not have (the chart then
    says "WebGL is not supported")."""
    d = fig.to_dict()
    for trace in d["data"]:
        if trace.get("type") == "scattergl":
            trace["type"] = "scatter"
    d["layout"]["width"] = _PRINT_WIDTH_PX
    return d


def to_pdf(report: Report, *, chromium: str | None = None, timeout_s: float = pdf.DEFAULT_TIMEOUT_S) -> pdf.PrintedPdf:
    """The HTML report laid out for paper (`to_html(for_print=True)`), printed by headless
    Chromium; `pdf.ChromiumMissing` / `pdf.PrintFailed` when it cannot be."""
    exe = chromium or pdf.find_chromium()  # before any rendering: a missing browser is said first
    return pdf.print_html(to_html(report, for_print=True), chromium=exe, timeout_s=timeout_s)

"""Compatibility: the audit (token spaces; connector widths, towers and preprocessing) as a matrix (runs or one run's checkpoints × eval sets and
the run-level token_space.json; green/amber/red), its findings with reasons, a side-by-side diff
of any two token spaces, and a CSV download."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard.app_pages import _common as c

st.title("Compatibility")
url, version = c.registry_url(), c.version()
runs = c.runs(url, version)
evalsets = c.evalsets(url, version)

if runs.empty and evalsets.empty:
    c.empty_state("Nothing registered yet. Register runs and eval sets with", "evalboard scan PATH")
    st.stop()

findings = c.findings(url, version)
RUN_TS = "run token_space.json"
CHECKPOINTS = "checkpoints"  # invalid files, uncovered ranges, mixed base models
_RUN_TS_CODES = ("run-token-space", "token-space-not-shipped", "no-run-token-space")
_COLOURS = {"ok": "#c8e6c9", "warning": "#ffe0b2", "error": "#ffcdd2", "n/a": "#eeeeee"}
_RANK = {"n/a": -1, "ok": 0, "info": 0, "warning": 1, "error": 2}


def _worst(severities: pd.Series) -> str:
    worst = max(severities, key=lambda s: _RANK.get(s, 0), default="ok")
    return "ok" if worst == "info" else worst


def _applies(letters: set[str], es) -> bool:
    """Whether any of these checkpoint tracks evaluates eval sets of ``es``'s kind (registry/tracks)."""
    from registry import tracks

    return any(tracks.get(t).accepts_evalset(es) for t in letters if t in tracks.letters())


def run_matrix(runs: pd.DataFrame, evalsets: pd.DataFrame, findings: pd.DataFrame) -> pd.DataFrame:
    """Worst severity per (run, eval set), per run against its own run-level token space, and of
    the run's checkpoints themselves; "n/a" where none of the run's tracks evaluates that kind of set."""
    sets = {e.name: e for e in c.registry().list_evalsets()}
    cks = c.checkpoints(url, version)
    letters = cks.groupby("run_id")["track"].apply(set).to_dict() if not cks.empty else {}
    rows = []
    for r in runs.sort_values("run").itertuples():
        mine = findings[findings["run"] == r.run]
        row = {"run": r.run, "track": r.track}
        for es in evalsets["evalset"]:
            applies = es in sets and _applies(letters.get(r.run_id, set()), sets[es])
            row[es] = _worst(mine.loc[mine["evalset"] == es, "severity"]) if applies else "n/a"
        own = mine[mine["evalset"].isna()]
        row[RUN_TS] = (
            "n/a"
            if r.token_space_id is None or pd.isna(r.token_space_id)
            else _worst(own.loc[own["code"].str.startswith(_RUN_TS_CODES), "severity"])
        )
        row[CHECKPOINTS] = _worst(own.loc[~own["code"].str.startswith(_RUN_TS_CODES), "severity"])
        rows.append(row)
    return pd.DataFrame(rows)


def checkpoint_matrix(run_id: int) -> pd.DataFrame:
    """One run's checkpoints × eval sets, each cell from `pair_findings` (what Evaluate refuses with)."""
    from registry.audit import pair_findings

    reg = c.registry()
    rows = []
    sets = reg.list_evalsets()
    for ck in reg.list_checkpoints(run_id=run_id):
        row = {"step": ck.step, "status": ck.status}
        for es in sets:
            row[es.name] = (
                _worst(pd.Series([f.severity for f in pair_findings(reg, ck, es)], dtype=object))
                if _applies({ck.track}, es)
                else "n/a"
            )
        rows.append(row)
    return pd.DataFrame(rows)


def styled(matrix: pd.DataFrame, cells: list[str]):
    return matrix.style.map(lambda v: f"background-color: {_COLOURS.get(v, 'white')}", subset=cells)


st.subheader("Matrix")
granularity = st.radio("Rows", ["runs", "checkpoints of one run"], horizontal=True, key="compat_rows")
if evalsets.empty:
    st.info(
        "No eval sets registered, so only the run-level token spaces are checked. Add one with "
        "`evalboard evalset add PATH`."
    )
if granularity == "runs":
    matrix = run_matrix(runs, evalsets, findings)
    cells = [col for col in matrix.columns if col not in ("run", "track")]
else:
    names = dict(zip(runs["run_id"], runs["run"]))
    run_id = st.selectbox("Run", sorted(names, key=names.get), format_func=names.get, key="compat_run")
    matrix = checkpoint_matrix(run_id)
    cells = [col for col in matrix.columns if col not in ("step", "status")]
if matrix.empty:
    st.info("No rows to show.")
else:
    st.dataframe(styled(matrix, cells), hide_index=True, width="stretch")
    st.caption(
        "green: compatible · amber: warnings (versions differ, token space not shipped) · "
        "red: numbers would be wrong, evaluation is refused · grey: not applicable"
    )

st.subheader("Findings")
if findings.empty:
    st.success("The audit found nothing to report.")
else:
    severities = st.multiselect(
        "Severity", ["error", "warning", "info"], default=["error", "warning"], key="compat_severity"
    )
    shown = findings[findings["severity"].isin(severities)]
    if len(shown) <= 100:  # a static table wraps each message: nothing of a finding is cut off
        # st.table renders its cells as Markdown: the run names, paths and reasons are escaped
        st.table(shown.set_index("severity").map(lambda v: c.md(v) if isinstance(v, str) else v))
    else:
        st.dataframe(
            shown,
            hide_index=True,
            width="stretch",
            column_config={"message": st.column_config.TextColumn(width="large")},
        )
        st.caption("Long messages are cut in this table: hover a cell, or download the CSV, to read them whole.")
    c.csv_download(findings, "audit_findings.csv", key="compat_csv")

st.subheader("Token-space diff")
spaces = c.registry().list_token_spaces()
if len(spaces) < 2:
    st.info("Fewer than two token spaces are registered: nothing to diff.")
else:
    from registry.token_space import TokenSpace

    users = runs.groupby("token_space_id")["run"].apply(lambda s: ", ".join(sorted(s))).to_dict()
    label = {t.id: f"{t.abi_hash[:12]} · {users.get(t.id, t.first_path)}" for t in spaces}
    by_id = {t.id: t for t in spaces}
    left, right = st.columns(2)
    a = left.selectbox("Token space A", list(label), format_func=label.get, key="compat_ts_a")
    b = right.selectbox("Token space B", list(label), index=1, format_func=label.get, key="compat_ts_b")
    space_a = TokenSpace.from_dict(by_id[a].spec)
    space_b = TokenSpace.from_dict(by_id[b].spec)
    changes = space_a.diff(space_b, "A", "B")
    if not changes:
        st.success("Identical ABI and versions.")
    else:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "field": ch.field,
                        "severity": ch.severity,
                        "A": str(ch.this),
                        "B": str(ch.other),
                        "message": ch.message,
                    }
                    for ch in changes
                ]
            ),
            hide_index=True,
            width="stretch",
        )
    side = pd.DataFrame({"A": pd.Series(space_a.to_dict()).map(str), "B": pd.Series(space_b.to_dict()).map(str)})
    with st.expander("Side by side"):
        st.dataframe(side, width="stretch")

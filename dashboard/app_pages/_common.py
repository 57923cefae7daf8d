"""Streamlit glue shared by the pages: the registry connection, cached loaders keyed by the
registry's data version (so new results appear on the next rerun), per-example losses and their
intervals cached by result id (a result never changes once recorded), and safe text helpers.

Names users control are shown through `st.dataframe`, `st.text`, `st.code` or markdown escaped
with `md` (also the cells of an `st.table`, which renders Markdown) — never through
`unsafe_allow_html` or `st.html`. URL query parameters are read only through `query_int`.
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterable

import pandas as pd
import streamlit as st

from dashboard import data
from registry import bootstrap
from registry.comparison import ResultExamples, example_cache
from registry.entities import EvalResultEntity
from registry.per_example import ExampleCache
from registry.settings import Settings
from registry.store import Registry

TTL = 300  # seconds; the data version invalidates sooner when anything changes
ITERS, SEED = bootstrap.DEFAULT_ITERS, bootstrap.DEFAULT_SEED
"""The pages' bootstrap: the same draws as `evalboard compare` and the reports by default."""


@st.cache_resource(show_spinner=False)
def _registry(url: str) -> Registry:
    """One registry connection per URL (`registry_url()`), shared by the pages."""
    return Registry(url)


def settings() -> Settings:
    return Settings.from_env()


def registry_url() -> str:
    return Settings.from_env().db_url


def registry() -> Registry:
    return _registry(registry_url())


@st.cache_resource(show_spinner=False)
def _example_cache(home: str, tracking_uri: str) -> ExampleCache:
    """One cache (and MLflow client) per evalboard home and tracking URI."""
    return example_cache(home, tracking_uri)


def examples_cache() -> ExampleCache:
    """Per-example files of MLflow runs under `<home>/cache/per_example` (`registry.comparison`)."""
    s = settings()
    return _example_cache(str(s.home), s.mlflow_uri)


@st.cache_resource(ttl=TTL, show_spinner=False, max_entries=32)
def result_entities(url: str, version: tuple, run_ids: tuple[int, ...]) -> dict[int, EvalResultEntity]:
    return data.result_entities(_registry(url), run_ids)


@st.cache_resource(ttl=TTL, show_spinner=False, max_entries=1024)
def _examples(url: str, result_id: int, _result: EvalResultEntity, _cache: ExampleCache) -> ResultExamples:
    return data.result_examples(_result, _cache)


def examples(url: str, result: EvalResultEntity) -> ResultExamples:
    """A result's per-example losses (its MLflow artifact, else its local file), kept in memory
    by result id; a failure to reach MLflow is kept only until the TTL."""
    return _examples(url, result.id, result, examples_cache())


@st.cache_data(ttl=3600, show_spinner=False, max_entries=20000)
def _intervals(
    url: str, result_id: int, iters: int, seed: int, missing: str | None, _side: ResultExamples
) -> data.ResultIntervals:
    # keyed by result id and the draws; `missing` is in the key so that a result whose losses
    # were unreachable gets its interval once they are back
    return data.result_intervals(_side, iters=iters, seed=seed)


def intervals(
    url: str, results: Iterable[EvalResultEntity], iters: int = ITERS, seed: int = SEED
) -> list[data.ResultIntervals]:
    """The loss intervals of `results`, each computed once per result id (and iters/seed)."""
    out = []
    cache = examples_cache()
    for r in results:
        side = _examples(url, r.id, r, cache)
        out.append(_intervals(url, r.id, iters, seed, side.missing, side))
    return out


@st.cache_data(ttl=3600, show_spinner=False, max_entries=4096)
def _paired(
    url: str,
    a_id: int,
    b_id: int,
    iters: int,
    seed: int,
    missing: tuple[str | None, str | None],
    _a: ResultExamples,
    _b: ResultExamples,
) -> data.PairedDelta:
    return data.paired_delta(_a, _b, iters=iters, seed=seed)


def paired(
    url: str, a: EvalResultEntity, b: EvalResultEntity, iters: int = ITERS, seed: int = SEED
) -> data.PairedDelta:
    """The paired interval of loss(b) − loss(a), computed once per pair of result ids."""
    sa, sb = examples(url, a), examples(url, b)
    return _paired(url, a.id, b.id, iters, seed, (sa.missing, sb.missing), sa, sb)


def show_paired(p: data.PairedDelta, label_a: str, label_b: str) -> None:
    """The interval of the whole delta B − A per task, or why there is none (a warning)."""
    if not p.tasks:
        st.warning(f"{md(label_b)} − {md(label_a)}: {md(p.missing or 'no interval')}")
        return
    st.caption(
        f"{md(label_b)} − {md(label_a)}: paired bootstrap over the eval set's examples "
        f"(B={p.iters}, seed {p.seed}); 95% interval of the loss difference, p = share of draws "
        "whose sign flips; significant when the interval excludes zero"
    )
    table = data.paired_frame(p)
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            **{col: st.column_config.NumberColumn(format="%.4f") for col in ("loss A", "loss B", "Δ (B − A)")},
            "low": st.column_config.NumberColumn("95% low", format="%.4f"),
            "high": st.column_config.NumberColumn("95% high", format="%.4f"),
            "p": st.column_config.NumberColumn(format="%.4f"),
        },
    )


def version() -> tuple:
    return data.data_version(registry())


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=4)
def runs(url: str, version: tuple) -> pd.DataFrame:
    return data.load_runs(_registry(url), settings().mlflow_ui)


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=4)
def checkpoints(url: str, version: tuple) -> pd.DataFrame:
    return data.load_checkpoints(_registry(url))


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=4)
def evalsets(url: str, version: tuple) -> pd.DataFrame:
    return data.load_evalsets(_registry(url))


@st.cache_data(ttl=TTL, show_spinner="loading eval results", max_entries=4)
def results(url: str, version: tuple) -> pd.DataFrame:
    """Newest result per (checkpoint, eval set, task), all runs."""
    return data.latest_per_checkpoint(data.load_results(_registry(url)))


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=4)
def runs_overview(url: str, version: tuple) -> pd.DataFrame:
    return data.runs_overview(runs(url, version), checkpoints(url, version), results(url, version))


@st.cache_data(ttl=TTL, show_spinner="running the audit", max_entries=4)
def findings(url: str, version: tuple) -> pd.DataFrame:
    from registry.audit import audit

    rows = [f.to_dict() for f in audit(_registry(url), models=Settings.from_env().models)]
    df = pd.DataFrame(rows, columns=["severity", "code", "message", "run", "checkpoint", "evalset", "detail"])
    df["detail"] = df["detail"].map(lambda d: ", ".join(f"{k}={v}" for k, v in (d or {}).items()))
    return df


_MD_SPECIAL = frozenset("\\`*_{}[]()#+-.!|<>~$:&=")


def md(value: object) -> str:
    """A user string (run, checkpoint and eval-set names, paths, base models, reasons and errors
    read from files) escaped for any Markdown-rendering Streamlit call: `st.markdown`, `st.caption`,
    `st.info` / `st.warning` / `st.error` / `st.success`, headers, widget labels, `st.table` cells.

    Every character Streamlit's renderer (react-markdown with GFM, math, directives) gives a meaning
    to is backslash-escaped, so no link, image, emphasis, code, heading, list, table, HTML, LaTeX
    (`$`), entity (`&`), coloured-text directive or `:material/...:` icon (`:`) survives. Two text
    transforms run after the escapes are resolved and so cannot be escaped: a bare URL or e-mail
    address is still made a link, showing its own target, and `:smile:`-style shortcodes still
    become emoji."""
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in str(value))


_ID_RE = re.compile(r"[0-9]{1,18}")  # ASCII digits only (str.isdigit also accepts "²" and "٣")
_ID_MAX = 2**63 - 1  # a signed 64-bit database id


def query_int(name: str, *, label: str | None = None, known: Container[int] | None = None) -> int | None:
    """The URL query parameter `name` as a database id, or None when it is absent (or empty).

    Only 1–18 ASCII digits with a value in 1..2**63-1 (and, given `known`, one of those ids) are
    accepted; anything else shows a short warning naming the parameter, with its value escaped
    and cut short, and returns None so that the page falls back to its normal picker."""
    raw = st.query_params.get(name)
    if not raw:
        return None
    value = int(raw) if _ID_RE.fullmatch(raw) else None
    if value is not None and 1 <= value <= _ID_MAX and (known is None or value in known):
        return value
    shown = raw if len(raw) <= 40 else f"{raw[:40]}… ({len(raw)} characters)"
    why = "none is registered with it" if value is not None and 1 <= value <= _ID_MAX else f"1 to {_ID_MAX}"
    st.warning(
        f"The URL's `{name}` parameter “{md(shown)}” is not a valid {label or name + ' id'} ({why}): "
        "choose one below instead.",
        icon=":material/link_off:",
    )
    return None


def empty_state(message: str, command: str | None = None) -> None:
    st.info(message + (f"\n\n`{command}`" if command else ""), icon=":material/info:")


def csv_download(df: pd.DataFrame, filename: str, label: str = "Download CSV", key: str | None = None) -> None:
    from dashboard.report import safe_csv

    st.download_button(label, safe_csv(df), file_name=filename, mime="text/csv", key=key, icon=":material/download:")

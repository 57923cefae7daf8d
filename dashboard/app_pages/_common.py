"""Streamlit glue shared by the pages: the registry connection, cached loaders keyed by the
registry's data version (so new results appear on the next rerun), and safe text helpers.

Names users control are shown through `st.dataframe`, `st.text`, `st.code` or markdown escaped
with `md` — never through `unsafe_allow_html` or `st.html`.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import data
from registry.settings import Settings
from registry.store import Registry

TTL = 300  # seconds; the data version invalidates sooner when anything changes


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


def version() -> tuple:
    return data.data_version(registry())


@st.cache_data(ttl=TTL, show_spinner=False, max_entries=4)
def runs(url: str, version: tuple) -> pd.DataFrame:
    return data.load_runs(_registry(url))


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


_MD_SPECIAL = "\\`*_{}[]()#+-.!|<>~$:"


def md(value: object) -> str:
    """A user string escaped for Streamlit markdown (no links, emphasis or HTML survive)."""
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in str(value))


def empty_state(message: str, command: str | None = None) -> None:
    st.info(message + (f"\n\n`{command}`" if command else ""), icon=":material/info:")


def csv_download(df: pd.DataFrame, filename: str, label: str = "Download CSV", key: str | None = None) -> None:
    from dashboard.report import safe_csv

    st.download_button(label, safe_csv(df), file_name=filename, mime="text/csv", key=key, icon=":material/download:")

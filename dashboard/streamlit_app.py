"""The evalboard dashboard: routes only. Start it with `evalboard dashboard`; each page lives in
`dashboard/app_pages/` and reads the registry named by `EVALBOARD_DB` / `EVALBOARD_HOME`."""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

# `streamlit run dashboard/streamlit_app.py` puts dashboard/ on sys.path, not the project root.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

st.set_page_config(page_title="evalboard", page_icon=":material/monitoring:", layout="wide")

_PAGES = Path(__file__).parent / "app_pages"
pages = {
    "Results": [
        st.Page(_PAGES / "runs.py", title="Runs", icon=":material/list:", default=True),
        st.Page(_PAGES / "compare.py", title="Compare", icon=":material/compare_arrows:"),
        st.Page(_PAGES / "checkpoint.py", title="Checkpoint", icon=":material/save:"),
    ],
    "Inspect": [
        st.Page(_PAGES / "compatibility.py", title="Compatibility", icon=":material/rule:"),
        st.Page(_PAGES / "row_stats.py", title="Weight statistics", icon=":material/bar_chart:"),
    ],
    "Act": [
        st.Page(_PAGES / "queue.py", title="Queue", icon=":material/queue:"),
        st.Page(_PAGES / "export.py", title="Export", icon=":material/download:"),
    ],
}
st.navigation(pages).run()

"""What other people write reaches the dashboard only as text. A malformed,
huge, negative or unknown `?checkpoint=` never crashes the Checkpoint page (a warning, then the
usual pickers), and a base model, run name or reason holding Markdown, HTML or LaTeX shows
literally wherever Streamlit renders Markdown (captions, alerts, `st.table` cells), while the
plain-text widgets (`st.dataframe`) keep it unescaped."""

from __future__ import annotations

import json
import re

import pytest

from dashboard.app_pages._common import md
from tests._infra.workspace import write_rows
from tests.dashboard._helpers import assert_ok, page_path

EVIL = "[click](https://evil.example) **bold** <img src=x onerror=alert(1)> $x$ :red[red]"
RUN = EVIL.replace("//", "")  # a run folder named in Markdown (no slash in a folder name)


@pytest.fixture(scope="module")
def untrusted(tmp_path_factory):
    """Runs `alpha`, `beta` and RUN whose checkpoints name EVIL as their base model, but RUN's
    step 300 another one and its step 400 is invalid (its reason holds its path, so RUN).
    Yields {"alpha": id of alpha's step 100, "invalid": id of RUN's step 400}; EVALBOARD_DB points
    at the registry for the whole module."""
    from registry.scanner import scan
    from registry.store import Registry

    root = tmp_path_factory.mktemp("untrusted")
    out = root / "outputs"
    for run, steps in {"alpha": (100, 200), "beta": (100, 200), RUN: (100, 200, 300, 400)}.items():
        for step in steps:
            base = "other/model" if (run, step) == (RUN, 300) else EVIL
            write_rows(out / run / f"checkpoint_{step}", step=step, base_model=base)
    rows = out / RUN / "checkpoint_400" / "trainable_rows.json"
    rows.write_text(json.dumps({**json.loads(rows.read_text()), "base_model": [EVIL]}))
    url = f"sqlite:///{root / 'registry.db'}"
    with Registry(url) as reg:
        scan(reg, [out])
        ids = {c.path: c.id for c in reg.list_checkpoints()}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVALBOARD_DB", url)
        mp.setenv("EVALBOARD_HOME", str(root / "home"))
        yield {
            "alpha": ids[str(out / "alpha" / "checkpoint_100")],
            "invalid": ids[str(out / RUN / "checkpoint_400")],
        }


def _run(page: str, **query: str):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(page_path(page), default_timeout=60)
    at.query_params.update(query)
    return at.run()


def _markdown_texts(at) -> list[str]:
    """The source of every element Streamlit renders as Markdown, and the cells of its tables."""
    texts = [
        e.value
        for kind in ("title", "header", "subheader", "markdown", "caption", "info", "warning", "error", "success")
        for e in getattr(at, kind)
    ]
    for table in at.table:
        df = table.value
        texts += [str(v) for v in df.to_numpy().ravel()] + [str(v) for v in df.index]
    return texts


def _assert_escaped(texts: list[str], value: str) -> None:
    """`value` appears escaped, and none of its Markdown, HTML or LaTeX appears unescaped."""
    assert any(md(value) in t for t in texts), texts
    for t in texts:
        assert "[click](" not in t and "**bold**" not in t and ":red[" not in t, t
        assert not re.search(r"(?<!\\)<img", t) and not re.search(r"(?<!\\)\$x", t), t


BAD_IDS = {
    "superscript": "²",  # str.isdigit() accepts it, int() does not
    "arabic-indic": "٣",  # int() accepts it, but it is not ASCII
    "5000 digits": "9" * 5000,  # past int()'s 4300-digit limit
    "19 digits": "9223372036854775807",
    "negative": "-1",
    "zero": "0",
    "letters": "abc",
    "exponent": "1e3",
    "spaces": " 1 ",
    "newline": "1\n",
    "markdown": "[x](https://evil.example)",
    "unknown": "999999",
}


@pytest.mark.parametrize("value", BAD_IDS.values(), ids=BAD_IDS.keys())
def test_a_bad_checkpoint_query_parameter_warns_and_falls_back(untrusted, value):
    at = _run("checkpoint", checkpoint=value)
    assert_ok(at, "Checkpoint")
    warnings = [w.value for w in at.warning]
    assert len(warnings) == 1 and "not a valid checkpoint id" in warnings[0], warnings
    assert "`checkpoint` parameter" in warnings[0] and len(warnings[0]) < 300, warnings
    assert "[x](" not in warnings[0]
    # the usual pickers, on a registered checkpoint, which the URL now names
    chosen = at.selectbox(key="checkpoint_id").value
    assert isinstance(chosen, int) and at.query_params["checkpoint"] == str(chosen)
    at.run()  # the URL now holds a valid id: no warning any more
    assert not at.exception and not at.warning


def test_a_valid_checkpoint_query_parameter_opens_it(untrusted):
    at = _run("checkpoint", checkpoint=str(untrusted["alpha"]))
    assert_ok(at, "Checkpoint")
    assert not at.warning
    assert at.selectbox(key="checkpoint_id").value == untrusted["alpha"]
    # plain-text widgets show the base model as written; no Markdown element renders it
    meta = at.dataframe[0].value.set_index("field")["value"]
    assert meta["base model"] == EVIL
    for t in _markdown_texts(at):
        assert "[click](" not in t, t


def test_an_invalid_checkpoints_reason_is_escaped(untrusted):
    at = _run("checkpoint", checkpoint=str(untrusted["invalid"]))
    assert_ok(at, "Checkpoint")
    errors = [e.value for e in at.error]
    assert any(e.startswith("This checkpoint is invalid: ") for e in errors), errors
    _assert_escaped(errors, RUN)


def test_the_runs_caption_shows_a_shared_base_model_literally(untrusted):
    at = _run("runs")
    assert_ok(at, "Runs")
    captions = [c.value for c in at.caption]
    assert any(f"base model: {md(EVIL)}" in c for c in captions), captions
    _assert_escaped(_markdown_texts(at), EVIL)
    table = at.dataframe[0].value
    assert set(table["run"]) == {"alpha", "beta", RUN}  # plain text: as written


def test_the_compatibility_findings_table_escapes_its_cells(untrusted):
    at = _run("compatibility")
    assert_ok(at, "Compatibility")
    assert at.table, "the findings are few enough for st.table"
    cells = _markdown_texts(at)
    _assert_escaped(cells, EVIL)
    assert any(md(f"run {RUN!r} mixes base models: {EVIL} at steps 100, 200") in t for t in cells), cells


def test_md_escapes_everything_streamlit_markdown_interprets():
    special = "\\`*_{}[]()#+-.!|<>~$:&="
    assert md(special) == "".join("\\" + ch for ch in special)
    assert md("plain text 123") == "plain text 123"
    assert md(None) == "None" and md(7) == "7"

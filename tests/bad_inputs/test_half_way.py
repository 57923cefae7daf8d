"""A command that fails must fail before it writes. `eval` and `import-eval` check the
MLflow store before computing or registering anything, validate every file before the first
write, and register a run only once MLflow took its result: after a refusal there is no
`eval_step*.json`, no statistics row, no registry row and no MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests._infra.workspace import unprivileged
from tests.bad_inputs._helpers import cli, refusal, registry_snapshot, scanned_workspace, state

EVALSET = "synthetic-a2t-i2t"


@pytest.fixture
def scanned(workspace, tmp_path):
    home = tmp_path / "home"
    env = scanned_workspace(workspace, home, EVALSET)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the MLflow store's folder should be\n")
    broken = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{blocker}/mlflow.db"}
    return workspace, home, env, broken


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_eval_against_an_unusable_mlflow_store_writes_nothing(scanned) -> None:
    ws, home, _, broken = scanned
    ck = ws.checkpoints["stage3_token_lm_iter5"][0]
    before, files = state(home), _files(ws.root) | _files(home)
    proc = cli(["eval", ck, "--evalset", EVALSET], home=home, env=broken)
    refusal(proc, broken["MLFLOW_TRACKING_URI"], "cannot be used")
    assert state(home) == before  # no statistics row, no result, no MLflow run
    assert _files(ws.root) | _files(home) == files  # no eval_step100.json, no result folder
    assert not (ck.parent / "eval_step100.json").exists()


def test_import_eval_against_an_unusable_mlflow_store_registers_no_run(scanned, tmp_path) -> None:
    _, home, _, broken = scanned
    fresh = tmp_path / "unregistered_run"
    fresh.mkdir()
    (fresh / "eval_step50.json").write_text(json.dumps({"step": 50, "loss": {"all": 2.5}}))
    before = state(home)
    refusal(
        cli(["import-eval", fresh / "eval_step50.json"], home=home, env=broken),
        broken["MLFLOW_TRACKING_URI"],
        "cannot be used",
    )
    assert state(home) == before


def test_import_eval_validates_every_file_before_writing_any(scanned, tmp_path) -> None:
    ws, home, env, _ = scanned
    run = tmp_path / "another_run"
    run.mkdir()
    good = run / "eval_step10.json"
    good.write_text(json.dumps({"step": 10, "loss": {"all": 2.5}}))
    bad = run / "eval_step20.json"
    bad.write_text(json.dumps({"step": 20, "loss": {"all": -1.0}}))
    before = state(home)
    refusal(cli(["import-eval", good, bad], home=home, env=env), bad, "never negative")
    assert state(home) == before
    ok = cli(["import-eval", good], home=home, env=env)  # the same good file alone goes in
    assert ok.returncode == 0, ok.stderr
    assert state(home) != before


def test_eval_whose_mlflow_server_fails_after_computing_records_nothing(scanned) -> None:
    """The up-front check cannot tell that a tracking server will be down: the numbers are computed,
    MLflow refuses them, and still no statistics row, no result row and no eval_step json exist."""
    import socket

    ws, home, env, _ = scanned
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = {
        **env,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }
    ck = ws.checkpoints["stage3_token_lm_iter5"][0]
    before = registry_snapshot(home)
    proc = cli(["eval", ck, "--evalset", EVALSET], home=home, env=down)
    refusal(proc, f"http://127.0.0.1:{port}", "could not log the result", "nothing was recorded")
    assert registry_snapshot(home) == before  # no statistics row, no result
    assert not (ck.parent / "eval_step100.json").exists() and not list(ck.parent.glob("eval_step100.*.json"))


@pytest.mark.slow
def test_eval_into_a_read_only_mlflow_store_is_one_line_without_mlflow_tracebacks(scanned) -> None:
    """MLflow logs the failed insert (with its traceback) before raising it: without --verbose the
    user sees only evalboard's line, and nothing is recorded."""
    ws, home, env, _ = scanned
    prefix = unprivileged()
    if prefix is None:
        pytest.skip("root without user namespaces: a read-only file cannot be tested here")
    from mlflow.tracking import MlflowClient

    ck = ws.checkpoints["stage3_token_lm_iter5"][0]
    store = home / "mlflow.db"
    MlflowClient(
        f"sqlite:///{store}"
    ).search_experiments()  # the store exists (MLflow's schema), then is made read-only
    store.chmod(0o444)
    try:
        before = state(home)
        proc = cli(["eval", ck, "--evalset", EVALSET, "--device", "cpu"], home=home, env=env, prefix=prefix)
        refusal(proc, store, "readonly database", "nothing was recorded")
        assert state(home) == before
    finally:
        store.chmod(0o644)

"""A workspace (`.evalboard/config.toml`) is found upwards from the current folder like git's
`.git`; its paths are relative to it; environment variables override it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.errors import InvalidInput
from registry.settings import Settings, Workspace, find_workspace, write_workspace_config
from tests._infra.workspace import run_cli


def _ws(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    write_workspace_config(root, models={"org/base": "models/base"})
    return root


def test_found_from_a_subfolder_with_paths_relative_to_it(tmp_path: Path) -> None:
    root = _ws(tmp_path)
    deep = root / "outputs" / "run1"
    deep.mkdir(parents=True)
    s = Settings.from_env({}, cwd=deep)
    assert s.workspace == Workspace(root)
    assert s.db_url == f"sqlite:///{root}/.evalboard/registry.db"
    assert s.mlflow_uri == f"sqlite:///{root}/.evalboard/mlflow.db"
    assert s.artifact_location == (root / ".evalboard" / "mlartifacts").as_uri()
    assert s.models == {"org/base": str(root / "models" / "base")}
    assert s.origins["registry"].startswith("workspace config")


def test_environment_overrides_the_workspace(tmp_path: Path) -> None:
    root = _ws(tmp_path)
    s = Settings.from_env(
        {
            "EVALBOARD_DB": "postgresql://u@db/x",
            "MLFLOW_TRACKING_URI": "http://mlflow:5000",
            "EVALBOARD_MODELS": "a=/m/a",
        },
        cwd=root,
    )
    assert (s.db_url, s.mlflow_uri, s.models) == ("postgresql://u@db/x", "http://mlflow:5000", {"a": "/m/a"})
    assert s.artifact_location == (root / ".evalboard" / "mlartifacts").as_uri()  # still the workspace's
    assert s.origins["registry"] == "env EVALBOARD_DB"


def test_no_workspace_keeps_the_defaults_and_artifacts_never_go_to_mlruns(tmp_path: Path) -> None:
    s = Settings.from_env({}, cwd=tmp_path)
    assert s.workspace is None and s.db_url == "sqlite:///.evalboard/registry.db"
    assert "mlruns" not in s.artifact_location and s.artifact_location.endswith("/.evalboard/mlartifacts")
    assert Settings.from_env({"MLFLOW_TRACKING_URI": "http://h:5000"}, cwd=tmp_path).artifact_location is None
    assert find_workspace(tmp_path) is None


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[registry]\nurl = 3\n", r"\[registry\] url must be a non-empty string"),
        ("[mlflow]\ntracking = 'x'\n", r"unknown key 'tracking' in \[mlflow\]; known: artifact_location, tracking_uri"),
        ("[nope]\n", r"unknown section \[nope\]"),
        ("[registry\n", "is not valid TOML"),
    ],
)
def test_a_bad_config_names_the_file_and_the_problem(tmp_path: Path, text: str, match: str) -> None:
    ws = Workspace(tmp_path)
    ws.home.mkdir()
    ws.config_path.write_text(text)
    with pytest.raises(InvalidInput, match=match) as e:
        Settings.from_env({}, cwd=tmp_path / ".")
    assert str(ws.config_path) in str(e.value)


def test_info_and_runs_say_which_workspace_and_registry(tmp_path: Path) -> None:
    root = _ws(tmp_path)
    env = {"EVALBOARD_WORKSPACE": ""}  # no named workspace: found from the folder the command runs in
    info = run_cli(["info", "--json"], home=tmp_path / "unused", cwd=root / "outputs", env=env)
    assert info.returncode == 0, info.stderr
    d = json.loads(info.stdout)
    assert d["workspace"] == str(root) and d["registry"] == f"sqlite:///{root}/.evalboard/registry.db"
    assert d["models"] == {"org/base": str(root / "models" / "base")}
    assert "mlflow ui --backend-store-uri" in d["mlflow_ui"]

    runs = run_cli(["runs"], home=tmp_path / "unused", cwd=root, env={**env, "EVALBOARD_HOME": ""})
    assert runs.returncode == 0 and f"0 runs in registry sqlite:///{root}/.evalboard/registry.db" in runs.stderr
    verbose = run_cli(["--verbose", "runs"], home=tmp_path / "unused", cwd=root, env={**env, "EVALBOARD_HOME": ""})
    assert f"evalboard: workspace {root}; registry sqlite:///{root}" in verbose.stderr

    elsewhere = tmp_path / "elsewhere"
    outside = run_cli(["runs", "--json"], home=tmp_path / "unused", cwd=elsewhere, env={**env, "EVALBOARD_HOME": ""})
    assert outside.returncode == 0 and json.loads(outside.stdout) == []
    assert "0 runs in registry sqlite:///.evalboard/registry.db (no workspace found" in outside.stderr


def test_init_writes_a_config_that_commands_find(tmp_path: Path) -> None:
    proc = run_cli(
        ["init", str(tmp_path / "new"), "--model", "org/base=/models/base"],
        home=tmp_path / "unused",
        cwd=tmp_path,
        env={"EVALBOARD_WORKSPACE": ""},
    )
    assert proc.returncode == 0, proc.stderr
    assert Settings.from_env({}, cwd=tmp_path / "new").models == {"org/base": "/models/base"}
    again = run_cli(["init", str(tmp_path / "new")], home=tmp_path / "unused", cwd=tmp_path)
    assert again.returncode == 2 and "config.toml: already exists" in again.stderr

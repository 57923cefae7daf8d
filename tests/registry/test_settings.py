"""Settings come from the environment in one place, with defaults derived from `home`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from registry.errors import InvalidInput
from registry.settings import Settings, parse_models


def test_defaults_live_under_home() -> None:
    settings = Settings.from_env({})
    assert settings.home == Path(".evalboard")
    assert settings.db_url == "sqlite:///.evalboard/registry.db"
    assert settings.mlflow_uri == "sqlite:///.evalboard/mlflow.db"
    assert settings.models == {}


def test_environment_overrides(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "EVALBOARD_HOME": str(tmp_path / "h"),
            "EVALBOARD_DB": "postgresql://u@db/evalboard",
            "MLFLOW_TRACKING_URI": "http://mlflow:5000",
            "EVALBOARD_MODELS": "Qwen/Qwen3-8B-Base=/models/qwen3, tiny = /models/tiny",
        }
    )
    assert settings.db_url == "postgresql://u@db/evalboard"
    assert settings.mlflow_uri == "http://mlflow:5000"
    assert settings.models == {"Qwen/Qwen3-8B-Base": "/models/qwen3", "tiny": "/models/tiny"}
    assert not settings.home.exists()  # reading settings creates nothing


def test_models_from_json_file(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"Qwen/Qwen3-8B-Base": "/models/qwen3"}))
    assert parse_models(str(path)) == {"Qwen/Qwen3-8B-Base": "/models/qwen3"}


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("a=/x,broken", "entry 'broken' is not of the form id=dir"),
        ("/nonexistent/models.json", "EVALBOARD_MODELS file does not exist"),
    ],
)
def test_bad_models_value_says_what_is_expected(value: str, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        parse_models(value)


def test_models_json_must_map_strings(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text("[1, 2]")
    with pytest.raises(InvalidInput, match=f"{path}: EVALBOARD_MODELS must be a JSON object"):
        parse_models(str(path))


def test_the_mlflow_ui_and_progress_switch_are_settings(tmp_path: Path) -> None:
    from registry.settings import DEFAULT_MLFLOW_UI

    plain = Settings.from_env({}, cwd=tmp_path)
    assert (plain.mlflow_ui, plain.progress) == (DEFAULT_MLFLOW_UI, False)
    chosen = Settings.from_env(
        {"EVALBOARD_MLFLOW_UI": "https://mlflow.example/ui/", "EVALBOARD_PROGRESS": "1"}, cwd=tmp_path
    )
    assert (chosen.mlflow_ui, chosen.progress) == ("https://mlflow.example/ui", True)
    assert {"mlflow_ui": chosen.mlflow_ui, "progress": True}.items() <= chosen.describe().items()
    for env, says in (
        ({"EVALBOARD_MLFLOW_UI": "javascript:alert(1)"}, "EVALBOARD_MLFLOW_UI must be an http"),
        ({"EVALBOARD_PROGRESS": "yes"}, "EVALBOARD_PROGRESS must be 1"),
    ):
        with pytest.raises(InvalidInput, match=says):
            Settings.from_env(env, cwd=tmp_path)

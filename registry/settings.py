"""Where evalboard keeps its state, read from the environment in one place and passed down.

Everything has an embedded default (a folder of SQLite files under `./.evalboard`) so a single
machine needs no configuration; `EVALBOARD_DB=postgresql://...` and an MLflow server URI are
the two switches for running many workers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from registry.errors import InvalidInput

__all__ = ["Settings", "parse_models"]


@dataclass(frozen=True)
class Settings:
    home: Path = Path(".evalboard")
    """Folder for local state (SQLite registry, local MLflow store). Env `EVALBOARD_HOME`."""

    db_url: str = ""
    """SQLAlchemy URL of the registry. Env `EVALBOARD_DB`; default `sqlite:///<home>/registry.db`."""

    mlflow_uri: str = ""
    """MLflow tracking URI. Env `MLFLOW_TRACKING_URI`; default `sqlite:///<home>/mlflow.db`."""

    models: dict[str, str] = field(default_factory=dict)
    """Base-model id -> local directory, so workers never download. Env `EVALBOARD_MODELS`:
    a path to a JSON object file, or inline `id=dir,id2=dir2`."""

    def __post_init__(self) -> None:
        # Defaults derive from `home`, so fill them here rather than in the field defaults.
        home = Path(self.home)
        object.__setattr__(self, "home", home)
        if not self.db_url:
            object.__setattr__(self, "db_url", f"sqlite:///{home / 'registry.db'}")
        if not self.mlflow_uri:
            object.__setattr__(self, "mlflow_uri", f"sqlite:///{home / 'mlflow.db'}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from `env` (default `os.environ`); unset variables take the defaults."""
        env = os.environ if env is None else env
        return cls(
            home=Path(env.get("EVALBOARD_HOME") or ".evalboard"),
            db_url=env.get("EVALBOARD_DB", ""),
            mlflow_uri=env.get("MLFLOW_TRACKING_URI", ""),
            models=parse_models(env.get("EVALBOARD_MODELS", "")),
        )

    def ensure_home(self) -> Path:
        """Create `home` on first use rather than at import, so reading settings has no effects."""
        self.home.mkdir(parents=True, exist_ok=True)
        return self.home


def parse_models(value: str) -> dict[str, str]:
    """`EVALBOARD_MODELS`: a JSON file path or `id=dir,id2=dir2` -> {base-model id: local dir}."""
    value = value.strip()
    if not value:
        return {}
    if "=" not in value:
        return _models_from_json(Path(value))
    models: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        model_id, sep, directory = item.partition("=")
        if not sep or not model_id.strip() or not directory.strip():
            raise InvalidInput(
                f"EVALBOARD_MODELS entry {item!r} is not of the form id=dir "
                "(or give a path to a JSON file mapping id -> dir)"
            )
        models[model_id.strip()] = directory.strip()
    return models


def _models_from_json(path: Path) -> dict[str, str]:
    from registry.safeio import read_json

    if not path.exists():
        raise InvalidInput(
            "EVALBOARD_MODELS file does not exist (expected a JSON file or id=dir,id2=dir2)",
            path=path,
        )
    try:  # the strict reader: a folder, a FIFO, non-UTF-8 bytes or bad JSON are one-line refusals
        data = read_json(path, expect=object)
    except InvalidInput as e:
        raise InvalidInput(f"EVALBOARD_MODELS: {e}") from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise InvalidInput(
            "EVALBOARD_MODELS must be a JSON object mapping base-model id to a directory",
            path=path,
        )
    return dict(data)

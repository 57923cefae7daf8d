"""Where evalboard keeps its state, read from the environment in one place and passed down.

Everything has an embedded default (a folder of SQLite files under `./.evalboard`) so a single
machine needs no configuration; `EVALBOARD_DB=postgresql://...` and an MLflow server URI are
the two switches for running many workers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from registry.errors import InvalidInput

__all__ = ["Settings", "parse_models", "parse_connector_builders", "DEFAULT_VISION_CACHE_BYTES"]

DEFAULT_VISION_CACHE_BYTES = 2 << 30


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

    connector_builders: dict[str, str] = field(default_factory=dict)
    """Connector builder (``package.module:function``) per run name, ``"*"`` for every run; used for
    connector checkpoints whose metadata names none. Env `EVALBOARD_CONNECTOR_BUILDER`: one
    builder for every run, `run=pkg.mod:fn,run2=...`, or a JSON file mapping run (or "*") -> builder."""

    vision_cache_bytes: int = DEFAULT_VISION_CACHE_BYTES
    """Bound of the on-disk cache of vision-tower features (`<home>/cache/vision`), least recently
    used first out. Env `EVALBOARD_VISION_CACHE_BYTES`; 0 disables the disk cache."""

    def connector_builder_for(self, run_name: str | None) -> str | None:
        """The configured builder for ``run_name``'s connector checkpoints (the run's, else "*")."""
        return self.connector_builders.get(run_name or "") or self.connector_builders.get("*")

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
            connector_builders=parse_connector_builders(env.get("EVALBOARD_CONNECTOR_BUILDER", "")),
            vision_cache_bytes=_non_negative_int(env.get("EVALBOARD_VISION_CACHE_BYTES", ""),
                                                 "EVALBOARD_VISION_CACHE_BYTES", DEFAULT_VISION_CACHE_BYTES),
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
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInput(
            "EVALBOARD_MODELS file does not exist (expected a JSON file or id=dir,id2=dir2)",
            path=path,
        ) from None
    except json.JSONDecodeError as e:
        raise InvalidInput(f"EVALBOARD_MODELS is not valid JSON: {e}", path=path) from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise InvalidInput(
            "EVALBOARD_MODELS must be a JSON object mapping base-model id to a directory",
            path=path,
        )
    return dict(data)


def _non_negative_int(value: str, name: str, default: int) -> int:
    value = value.strip()
    if not value:
        return default
    if not value.isdigit() or len(value) > 18:
        raise InvalidInput(f"{name} must be a non-negative integer (bytes), got {value!r}")
    return int(value)


def _check_builder(spec: str, where: str) -> str:
    module, sep, fn = spec.partition(":")
    if not sep or not module.strip() or not fn.strip() or len(spec) > 512:
        raise InvalidInput(f"{where}: connector builder {spec!r} must be 'package.module:function'")
    return spec.strip()


def parse_connector_builders(value: str) -> dict[str, str]:
    """`EVALBOARD_CONNECTOR_BUILDER`: `pkg.mod:fn` (every run), `run=pkg.mod:fn,...`, or a JSON file."""
    value = value.strip()
    if not value:
        return {}
    if "=" not in value and ":" in value and not value.endswith(".json"):
        return {"*": _check_builder(value, "EVALBOARD_CONNECTOR_BUILDER")}
    if "=" not in value:
        path = Path(value)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise InvalidInput(f"EVALBOARD_CONNECTOR_BUILDER is neither a builder nor a readable JSON file: {e}",
                               path=path) from None
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise InvalidInput("EVALBOARD_CONNECTOR_BUILDER must map run name (or \"*\") to a builder", path=path)
        return {k: _check_builder(v, str(path)) for k, v in data.items()}
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        run, sep, spec = item.partition("=")
        if not sep or not run.strip():
            raise InvalidInput(f"EVALBOARD_CONNECTOR_BUILDER entry {item!r} is not of the form run=pkg.mod:fn")
        out[run.strip()] = _check_builder(spec, "EVALBOARD_CONNECTOR_BUILDER")
    return out

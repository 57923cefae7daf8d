"""Where evalboard keeps its state: read from the workspace config and the environment in one
place, then passed down.

A **workspace** is a folder holding `.evalboard/config.toml` (`evalboard demo` and `evalboard init`
write one). Commands find it by walking up from the current folder, as git finds `.git`, so any
command run inside a workspace uses its registry, MLflow store, artifact location and models.
Relative paths in the config are resolved against the workspace folder.

Precedence, per setting: environment variable > workspace config > default. Without a
workspace, the defaults are a folder of SQLite files under `./.evalboard`, so a single machine
needs no configuration; `EVALBOARD_DB=postgresql://...` and an MLflow server URI are the two
switches for running many workers.

| setting | environment | config (`.evalboard/config.toml`) | default |
| --- | --- | --- | --- |
| workspace | `EVALBOARD_WORKSPACE` | — | nearest folder above with `.evalboard/config.toml` |
| home | `EVALBOARD_HOME` | — | `<workspace>/.evalboard`, else `./.evalboard` |
| registry | `EVALBOARD_DB` | `[registry] url` | `sqlite:///<home>/registry.db` |
| MLflow store | `MLFLOW_TRACKING_URI` | `[mlflow] tracking_uri` | `sqlite:///<home>/mlflow.db` |
| artifacts | `EVALBOARD_ARTIFACT_LOCATION` | `[mlflow] artifact_location` | next to a local store; the server's otherwise |
| models | `EVALBOARD_MODELS` | `[models]` id = "dir" | none |
| connector builders | `EVALBOARD_CONNECTOR_BUILDER` | `[connector_builders]` run (or "*") = "pkg.mod:fn" | none |
| trusted builders | `EVALBOARD_TRUSTED_BUILDERS` | `[connector_builders] trusted = ["pkg.mod:fn", "pkg.mod:*"]` | none |
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.atomic import write_file
from registry.errors import InvalidInput

__all__ = [
    "Settings",
    "Workspace",
    "WorkspaceConfig",
    "parse_models",
    "parse_connector_builders",
    "parse_trusted_builders",
    "check_builder_name",
    "DEFAULT_VISION_CACHE_BYTES",
    "default_artifact_location",
    "find_workspace",
    "write_workspace_config",
    "CONFIG_NAME",
    "HOME_NAME",
    "LOCAL_MODELS_KEY",
    "DEFAULT_MLFLOW_UI",
]

HOME_NAME = ".evalboard"
TRUSTED_KEY = "trusted"
"""The key of ``[connector_builders]`` that lists trusted builders (not a run name)."""
CONFIG_NAME = "config.toml"
DEFAULT_VISION_CACHE_BYTES = 2 << 30
ARTIFACTS_NAME = "mlartifacts"
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"
LOCAL_MODELS_KEY = "*"
"""The models-mapping key whose folder holds base models a checkpoint may name by local path."""

ENV_VARS = {
    "EVALBOARD_WORKSPACE": "workspace folder (instead of searching upwards for .evalboard/config.toml)",
    "EVALBOARD_HOME": "folder of the default SQLite registry and MLflow store",
    "EVALBOARD_DB": "registry: any SQLAlchemy URL",
    "MLFLOW_TRACKING_URI": "MLflow tracking store or server",
    "EVALBOARD_ARTIFACT_LOCATION": "where new MLflow experiments keep their artifacts",
    "EVALBOARD_MODELS": "base-model (and vision-tower) id -> local folder: a JSON file, or id=dir,id2=dir2",
    "EVALBOARD_CONNECTOR_BUILDER": "connector builder pkg.mod:fn for every run, run=pkg.mod:fn,..., or a JSON file",
    "EVALBOARD_TRUSTED_BUILDERS": "connector builders a checkpoint file may name: pkg.mod:fn or pkg.mod:*, comma-separated",
    "EVALBOARD_VISION_CACHE_BYTES": "bound of the on-disk vision-feature cache (bytes; 0 disables it)",
    "EVALBOARD_MLFLOW_UI": "base URL of the MLflow UI the dashboard links to",
    "EVALBOARD_PROGRESS": "1: draw progress bars even when stderr is not a terminal",
}


# -- the workspace ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workspace:
    """A folder with `.evalboard/config.toml`: the settings of everything below it."""

    root: Path
    """The workspace folder; relative paths in its config are resolved against it."""

    @property
    def home(self) -> Path:
        return self.root / HOME_NAME

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_NAME

    def load(self) -> WorkspaceConfig:
        """The parsed config (empty when the file does not exist)."""
        if not self.config_path.is_file():
            return WorkspaceConfig()
        return WorkspaceConfig.parse(self.config_path.read_text(encoding="utf-8"), self)


def find_workspace(start: Path | None = None) -> Workspace | None:
    """The nearest folder at or above `start` (default: the current folder) that holds
    `.evalboard/config.toml`, or None."""
    here = Path(os.path.abspath(start or Path.cwd()))
    for folder in (here, *here.parents):
        if (folder / HOME_NAME / CONFIG_NAME).is_file():
            return Workspace(folder)
    return None


@dataclass(frozen=True)
class WorkspaceConfig:
    """What `.evalboard/config.toml` says; fields it leaves out are None. Paths are resolved."""

    registry: str | None = None
    tracking_uri: str | None = None
    artifact_location: str | None = None
    models: dict[str, str] | None = None
    connector_builders: dict[str, str] | None = None
    """``[connector_builders]``: run name (or "*") = "package.module:function"."""
    trusted_builders: tuple[str, ...] | None = None
    """``[connector_builders] trusted = [...]``: builders a checkpoint file may name (``pkg.mod:fn``
    or ``pkg.mod:*``); a file's builder outside this list (and the reference builders) is refused."""

    _SECTIONS = {
        "registry": {"url"},
        "mlflow": {"tracking_uri", "artifact_location"},
        "models": None,
        "connector_builders": None,
    }

    @classmethod
    def parse(cls, text: str, ws: Workspace) -> WorkspaceConfig:
        """Validate the TOML text of `ws`'s config; unknown sections or keys are errors."""
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # Python 3.10
            import tomli as tomllib

        where = ws.config_path
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise InvalidInput(f"is not valid TOML: {e}", path=where) from None
        for section, value in data.items():
            if section not in cls._SECTIONS:
                raise InvalidInput(
                    f"unknown section [{section}]; known: {', '.join(f'[{s}]' for s in cls._SECTIONS)}", path=where
                )
            if not isinstance(value, dict):
                raise InvalidInput(f"{section!r} must be a [{section}] table", path=where)
            keys = cls._SECTIONS[section]
            for key, v in value.items():
                if keys is not None and key not in keys:
                    raise InvalidInput(
                        f"unknown key {key!r} in [{section}]; known: {', '.join(sorted(keys))}", path=where
                    )
                if section == "connector_builders" and key == TRUSTED_KEY:
                    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                        raise InvalidInput(
                            f'[connector_builders] {TRUSTED_KEY} must be a list of builders, e.g. ["pkg.mod:fn"]',
                            path=where,
                        )
                    continue
                if not isinstance(v, str) or not v.strip():
                    raise InvalidInput(f"[{section}] {key} must be a non-empty string", path=where)
        registry = data.get("registry", {}).get("url")
        mlflow = data.get("mlflow", {})
        models = data.get("models")
        return cls(
            registry=_resolve_url(registry, ws.root) if registry else None,
            tracking_uri=_resolve_url(mlflow["tracking_uri"], ws.root) if "tracking_uri" in mlflow else None,
            artifact_location=(
                _resolve_location(mlflow["artifact_location"], ws.root) if "artifact_location" in mlflow else None
            ),
            models={k: str(_resolve_path(v, ws.root)) for k, v in models.items()} if models is not None else None,
            connector_builders=(
                {k: _check_builder(v, str(where)) for k, v in data["connector_builders"].items() if k != TRUSTED_KEY}
                if "connector_builders" in data
                else None
            ),
            trusted_builders=(
                tuple(_check_builder(v, str(where), trust=True) for v in data["connector_builders"][TRUSTED_KEY])
                if TRUSTED_KEY in data.get("connector_builders", {})
                else None
            ),
        )


def write_workspace_config(
    root: Path,
    *,
    registry: str | None = None,
    tracking_uri: str | None = None,
    artifact_location: str | None = None,
    models: Mapping[str, str] | None = None,
) -> Path:
    """Write `<root>/.evalboard/config.toml` (paths may be relative to `root`); returns its path.
    Left-out settings are written as their workspace defaults."""
    home = HOME_NAME
    lines = [
        "# evalboard workspace: every `evalboard` command run in this folder or below it uses these",
        "# settings. Relative paths are relative to this workspace folder. Environment variables",
        "# (EVALBOARD_DB, MLFLOW_TRACKING_URI, EVALBOARD_ARTIFACT_LOCATION, EVALBOARD_MODELS) override them.",
        "",
        "[registry]",
        f"url = {_toml_str(registry or f'sqlite:///{home}/registry.db')}",
        "",
        "[mlflow]",
        f"tracking_uri = {_toml_str(tracking_uri or f'sqlite:///{home}/mlflow.db')}",
        f"artifact_location = {_toml_str(artifact_location or f'{home}/{ARTIFACTS_NAME}')}",
        "",
        "[models]  # base-model id = local folder (workers never download)",
        *(f"{_toml_str(k)} = {_toml_str(v)}" for k, v in (models or {}).items()),
    ]
    path = Path(root) / HOME_NAME / CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines) + "\n"
    WorkspaceConfig.parse(text, Workspace(Path(root)))  # never write a config we would refuse to read
    return write_file(path, text)


def _toml_str(value: str) -> str:
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def _resolve_path(value: str, root: Path) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else root / p


def _resolve_url(url: str, root: Path) -> str:
    """`sqlite:///relative.db` is relative to the workspace, not to wherever a command runs."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != "sqlite:///:memory:":
        return prefix + str(root / url[len(prefix) :])
    return url


def _resolve_location(value: str, root: Path) -> str:
    if "://" in value or value.startswith("file:"):
        return value
    return _resolve_path(value, root).as_uri()


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a local SQLite MLflow store go next to its database (`<dir>/mlartifacts`), never
    into `./mlruns` of whatever folder a command runs in. A file store keeps them inside itself and
    a tracking server decides for itself: None."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix) and tracking_uri != "sqlite:///:memory:":
        db = Path(os.path.abspath(tracking_uri[len(prefix) :]))
        return (db.parent / ARTIFACTS_NAME).as_uri()
    return None


# -- the effective settings ------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    home: Path = Path(HOME_NAME)
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

    trusted_builders: tuple[str, ...] = ()
    """Builders a checkpoint file may name and have run (``pkg.mod:fn``, or ``pkg.mod:*`` for every
    function of a module), besides evalboard's reference builders. Config
    ``[connector_builders] trusted = [...]``; env `EVALBOARD_TRUSTED_BUILDERS` (comma-separated)."""

    def model_id_for(self, name_or_path: str, *, what: str = "the base model") -> str:
        """The id workers know a model by, for a training process that names it by ``name_or_path``
        (e.g. ``model.config._name_or_path``): an id stays as it is; a local folder becomes the id
        the models mapping gives that folder, or stays a path when it lies inside the folder mapped
        under ``"*"``. Any other local folder is refused here, in the training process, because no
        worker would load it (`evaluator.base_model.resolve_base_model`)."""
        if name_or_path in self.models or not name_or_path:
            return name_or_path
        folder = Path(name_or_path).expanduser()
        if not folder.is_dir():
            return name_or_path
        real = Path(os.path.realpath(folder))
        for model_id, mapped in sorted(self.models.items()):
            if model_id != LOCAL_MODELS_KEY and Path(os.path.realpath(Path(mapped).expanduser())) == real:
                return model_id
        allowed = self.models.get(LOCAL_MODELS_KEY)
        if allowed and real.is_relative_to(os.path.realpath(Path(allowed).expanduser())):
            return name_or_path
        raise InvalidInput(
            f"{what} was loaded from a local folder that the workspace's models mapping does not name, "
            "so no worker could load it: map it under an id ([models] in .evalboard/config.toml, or "
            f"EVALBOARD_MODELS='my-org/my-base={name_or_path}'), or pass base_model='<id>' to the callback",
            path=name_or_path,
        )

    def connector_builder_for(self, run_name: str | None) -> str | None:
        """The configured builder for ``run_name``'s connector checkpoints (the run's, else "*")."""
        return self.connector_builders.get(run_name or "") or self.connector_builders.get("*")

    def trusts_builder(self, spec: str) -> bool:
        """Whether the user listed ``spec`` (or its whole module) as a builder files may name."""
        module = spec.partition(":")[0]
        return spec in self.trusted_builders or f"{module}:*" in self.trusted_builders

    mlflow_ui: str = DEFAULT_MLFLOW_UI
    """Base URL of the MLflow UI that the dashboard's and reports' links point at. Env
    `EVALBOARD_MLFLOW_UI` (an http or https URL)."""

    progress: bool = False
    """Draw progress bars even when stderr is not a terminal. Env `EVALBOARD_PROGRESS=1`."""

    artifact_location: str | None = None
    """Where new MLflow experiments keep artifacts. Env `EVALBOARD_ARTIFACT_LOCATION`; default
    next to a local SQLite store (`default_artifact_location`), the server's choice otherwise."""

    workspace: Workspace | None = None
    """The workspace these settings came from (None: defaults and environment only)."""

    origins: Mapping[str, str] = field(default_factory=dict)
    """Setting name -> where its value came from ("env EVALBOARD_DB", "workspace config", "default")."""

    def __post_init__(self) -> None:
        # Defaults derive from `home`, so fill them here rather than in the field defaults.
        home = Path(self.home)
        object.__setattr__(self, "home", home)
        if not self.db_url:
            object.__setattr__(self, "db_url", f"sqlite:///{home / 'registry.db'}")
        if not self.mlflow_uri:
            object.__setattr__(self, "mlflow_uri", f"sqlite:///{home / 'mlflow.db'}")
        if self.artifact_location is None:
            object.__setattr__(self, "artifact_location", default_artifact_location(self.mlflow_uri))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, cwd: Path | None = None) -> Settings:
        """Settings from `env` (default `os.environ`) over the workspace config found from `cwd`
        (default: the current folder) over the defaults."""
        env = os.environ if env is None else env
        named = env.get("EVALBOARD_WORKSPACE", "").strip()
        ws = Workspace(Path(os.path.abspath(os.path.expanduser(named)))) if named else find_workspace(cwd)
        config = ws.load() if ws is not None else WorkspaceConfig()
        origins: dict[str, str] = {}

        def pick(name: str, env_var: str, from_config: Any, label: str = "workspace config") -> Any:
            if env.get(env_var, "").strip():
                origins[name] = f"env {env_var}"
                return env[env_var].strip()
            if from_config is not None:
                origins[name] = label
                return from_config
            origins[name] = "default"
            return None

        origins["workspace"] = (
            "env EVALBOARD_WORKSPACE" if named else "found above the current folder" if ws else "none found"
        )
        home = pick("home", "EVALBOARD_HOME", ws.home if ws else None, "the workspace's") or HOME_NAME
        db_url = pick("registry", "EVALBOARD_DB", config.registry) or ""
        mlflow_uri = pick("mlflow", "MLFLOW_TRACKING_URI", config.tracking_uri) or ""
        artifacts = pick("artifacts", "EVALBOARD_ARTIFACT_LOCATION", config.artifact_location)
        if origins["artifacts"].startswith("env"):
            artifacts = _resolve_location(artifacts, Path.cwd())
        models_value = pick("models", "EVALBOARD_MODELS", config.models)
        models = parse_models(models_value) if isinstance(models_value, str) else dict(models_value or {})
        builders_value = pick("connector_builders", "EVALBOARD_CONNECTOR_BUILDER", config.connector_builders)
        builders = (
            parse_connector_builders(builders_value) if isinstance(builders_value, str) else dict(builders_value or {})
        )
        trusted_value = pick("trusted_builders", "EVALBOARD_TRUSTED_BUILDERS", config.trusted_builders)
        trusted = (
            parse_trusted_builders(trusted_value) if isinstance(trusted_value, str) else tuple(trusted_value or ())
        )
        return cls(
            home=Path(home),
            db_url=db_url,
            mlflow_uri=mlflow_uri,
            models=models,
            artifact_location=artifacts,
            workspace=ws,
            origins=origins,
            connector_builders=builders,
            trusted_builders=trusted,
            vision_cache_bytes=_non_negative_int(
                env.get("EVALBOARD_VISION_CACHE_BYTES", ""), "EVALBOARD_VISION_CACHE_BYTES", DEFAULT_VISION_CACHE_BYTES
            ),
            mlflow_ui=_http_url(env.get("EVALBOARD_MLFLOW_UI", ""), "EVALBOARD_MLFLOW_UI") or DEFAULT_MLFLOW_UI,
            progress=_switch(env.get("EVALBOARD_PROGRESS", ""), "EVALBOARD_PROGRESS"),
        )

    def describe(self) -> dict[str, Any]:
        """What `evalboard info` prints: each setting with where it came from."""
        ws = self.workspace
        return {
            "workspace": str(ws.root) if ws else None,
            "config": str(ws.config_path) if ws and ws.config_path.is_file() else None,
            "home": str(Path(os.path.abspath(self.home))),
            "registry": self.db_url,
            "mlflow_tracking_uri": self.mlflow_uri,
            "artifact_location": self.artifact_location,
            "models": dict(self.models),
            "connector_builders": dict(self.connector_builders),
            "trusted_builders": list(self.trusted_builders),
            "vision_cache_bytes": self.vision_cache_bytes,
            "mlflow_ui": self.mlflow_ui,
            "progress": self.progress,
            "origins": dict(self.origins),
        }

    def mlflow_ui_command(self, port: int = 5000, executable: str = "mlflow") -> str:
        """The `mlflow ui` command that shows this store (and puts UI-made experiments' artifacts
        in the same place as ours)."""
        cmd = f"{executable} ui --backend-store-uri {self.mlflow_uri}"
        if self.artifact_location and not self.mlflow_uri.startswith(("http://", "https://")):
            cmd += f" --default-artifact-root {self.artifact_location}"
        return cmd + f" --port {port}"

    def summary_line(self) -> str:
        """One line: which workspace, registry, MLflow store and artifact location a command uses."""
        ws = f"workspace {self.workspace.root}" if self.workspace else "no workspace (defaults)"
        return (
            f"{ws}; registry {self.db_url}; MLflow {self.mlflow_uri}; "
            f"artifacts {self.artifact_location or 'chosen by the MLflow server'}; "
            f"{len(self.models)} base models mapped"
        )


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
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
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


_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
BUILDER_RE = re.compile(rf"{_DOTTED}:{_DOTTED}")
"""A builder name: ``package.module:function`` (dotted identifiers only)."""


def _http_url(value: str, name: str) -> str | None:
    """An http(s) URL from the environment (None when unset), without a trailing slash."""
    text = value.strip()
    if not text:
        return None
    if not re.fullmatch(r"https?://[^\s/?#]+(?:/[^\s?#]*)?", text):
        raise InvalidInput(f"{name} must be an http:// or https:// URL, got {text[:80]!r}")
    return text.rstrip("/")


def _switch(value: str, name: str) -> bool:
    """An on/off switch from the environment: unset, "0" or "1"."""
    text = value.strip()
    if text not in ("", "0", "1"):
        raise InvalidInput(f"{name} must be 1 (on) or 0 (off), got {text[:80]!r}")
    return text == "1"


def check_builder_name(spec: object) -> str | None:
    """``spec`` stripped when it is a well-formed builder name, else None."""
    if not isinstance(spec, str) or len(spec) > 512:
        return None
    spec = spec.strip()
    return spec if BUILDER_RE.fullmatch(spec) else None


def _check_builder(spec: str, where: str, *, trust: bool = False) -> str:
    """A builder name as configured (``pkg.mod:*`` also allowed in a trust list)."""
    text = spec.strip() if isinstance(spec, str) else ""
    module, _, fn = text.partition(":")
    whole_module = trust and fn == "*" and re.fullmatch(_DOTTED, module) is not None
    if check_builder_name(text) is None and not whole_module:
        form = "'package.module:function' or 'package.module:*'" if trust else "'package.module:function'"
        raise InvalidInput(f"{where}: connector builder {spec!r} must be {form}")
    return text


def parse_trusted_builders(value: str) -> tuple[str, ...]:
    """`EVALBOARD_TRUSTED_BUILDERS`: builders a checkpoint may name, comma-separated."""
    return tuple(
        _check_builder(part, "EVALBOARD_TRUSTED_BUILDERS", trust=True)
        for part in (p.strip() for p in value.split(","))
        if part
    )


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
            raise InvalidInput(
                f"EVALBOARD_CONNECTOR_BUILDER is neither a builder nor a readable JSON file: {e}", path=path
            ) from None
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise InvalidInput('EVALBOARD_CONNECTOR_BUILDER must map run name (or "*") to a builder', path=path)
        return {k: _check_builder(v, str(path)) for k, v in data.items()}
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        run, sep, spec = item.partition("=")
        if not sep or not run.strip():
            raise InvalidInput(f"EVALBOARD_CONNECTOR_BUILDER entry {item!r} is not of the form run=pkg.mod:fn")
        out[run.strip()] = _check_builder(spec, "EVALBOARD_CONNECTOR_BUILDER")
    return out

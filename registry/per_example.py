"""Per-example losses: the Parquet file every evaluation logs to its MLflow run.

One row per example of the eval set (or of its subset), in the eval set's order:

    example_id  string   the eval set's id of the example
    task        string   a2t, i2t, ...
    nll_sum     float64  the exact sum of the NLL over the example's scored tokens (nats)
    tokens      int64    scored tokens
    loss        float64  nll_sum / tokens (NaN when the example scores no token); for reading by eye

The schema's metadata (key ``evalboard``, JSON) says what the rows were computed on, so a file
read back from MLflow on another machine, after the local files are gone, can still be paired
with another checkpoint's:

    format            2
    evalset_hash      content hash of the eval set
    evalset_name      its name when evaluated
    subset            "all", or "max_examples=N" (per task, the N examples whose id hashes lowest)
    checkpoint_hash   content hash of the checkpoint evaluated

Files written before format 2 hold only the mean ``loss``; they still show the examples that
moved most, but give no interval (their NLL sums and eval set are unknown).

This module reads and writes the file; `registry.bootstrap` turns two of them into intervals.
`ExampleCache` fetches a run's file from MLflow once and keeps it under the evalboard home.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from registry.atomic import atomic_file
from registry.errors import InvalidInput, TrackingError
from registry.eval_key import ALL_EXAMPLES
from registry.safeio import require_regular_file

__all__ = [
    "ARTIFACT",
    "FORMAT",
    "ALL_EXAMPLES",
    "ExampleLosses",
    "ExampleCache",
    "write",
    "read",
]

ARTIFACT = "per_example_losses.parquet"
"""The file's name, locally and as an MLflow artifact (at the run's artifact root)."""

FORMAT = 2
_META_KEY = b"evalboard"
_COLUMNS = ("example_id", "task", "nll_sum", "tokens", "loss")


@dataclass(frozen=True, eq=False)
class ExampleLosses:
    """One evaluation's per-example NLL sums and token counts, and what they were computed on."""

    example_ids: np.ndarray
    """str objects, unique."""
    tasks: np.ndarray
    """str objects, one per example."""
    nll_sums: np.ndarray | None
    """float64 exact NLL sums; None for a file written before format 2 (only means known)."""
    tokens: np.ndarray
    """int64 scored tokens."""
    losses: np.ndarray
    """float64 mean NLL per example (NaN where it scores no token)."""
    evalset_hash: str | None
    subset: str | None
    checkpoint_hash: str | None
    source: str
    """Where it was read from (a path, or ``mlflow run <id>``): for messages."""

    @property
    def n(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def comparable(self) -> bool:
        """Carries what a paired interval needs: exact sums and the eval set it was made on."""
        return self.nll_sums is not None and bool(self.evalset_hash) and bool(self.subset)

    def loss(self) -> float:
        """Token-weighted loss over every example (NaN when no token is scored)."""
        if self.nll_sums is None:
            return math.nan
        total = int(self.tokens.sum())
        return math.fsum(self.nll_sums.tolist()) / total if total else math.nan


def write(
    path: str | Path,
    *,
    example_ids: Sequence[str],
    tasks: Sequence[str],
    nll_sums: Sequence[float],
    tokens: Sequence[int],
    evalset_hash: str,
    evalset_name: str,
    subset: str,
    checkpoint_hash: str | None,
) -> Path:
    """Write the file atomically (a temporary file renamed into place)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(example_ids)
    if not (len(tasks) == len(nll_sums) == len(tokens) == n):
        raise ValueError("example_ids, tasks, nll_sums and tokens must have the same length")
    sums = np.asarray(nll_sums, dtype=np.float64)
    counts = np.asarray(tokens, dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    meta = {
        "format": FORMAT,
        "evalset_hash": evalset_hash,
        "evalset_name": evalset_name,
        "subset": subset,
        "checkpoint_hash": checkpoint_hash,
    }
    table = pa.table(
        {
            "example_id": pa.array([str(x) for x in example_ids], pa.string()),
            "task": pa.array([str(t) for t in tasks], pa.string()),
            "nll_sum": pa.array(sums, pa.float64()),
            "tokens": pa.array(counts, pa.int64()),
            "loss": pa.array(means, pa.float64()),
        }
    ).replace_schema_metadata({_META_KEY: json.dumps(meta).encode()})
    path = Path(path)
    with atomic_file(path) as fh:
        pq.write_table(table, fh)
    return path


def read(path: str | Path, *, source: str | None = None) -> ExampleLosses:
    """Read and check a per-example file; `InvalidInput` naming the file otherwise."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    require_regular_file(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise InvalidInput(f"not a readable Parquet file ({e})", path=path) from e
    cols = set(table.column_names)
    missing = {"example_id", "task", "tokens"} - cols
    if missing or not ({"nll_sum", "loss"} & cols):
        need = sorted(missing | ({"nll_sum"} if not ({"nll_sum", "loss"} & cols) else set()))
        raise InvalidInput(f"per-example file lacks column(s) {', '.join(need)}", path=path)
    meta = _metadata(table.schema.metadata, path)
    try:
        ids = np.asarray(table.column("example_id").to_pylist(), dtype=object)
        tasks = np.asarray(table.column("task").to_pylist(), dtype=object)
        tokens_list = table.column("tokens").to_pylist()
        sums_list = table.column("nll_sum").to_pylist() if "nll_sum" in cols else None
        loss_list = table.column("loss").to_pylist() if "loss" in cols else None
    except (pa.ArrowException, ValueError) as e:
        raise InvalidInput(f"per-example file has unreadable columns ({e})", path=path) from e
    if any(not isinstance(x, str) for x in ids) or any(not isinstance(t, str) or not t for t in tasks):
        raise InvalidInput("example_id and task must be non-empty strings on every row", path=path)
    if len(set(ids.tolist())) != len(ids):
        raise InvalidInput("example_id repeats: each example must appear once", path=path)
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in tokens_list):
        raise InvalidInput("tokens must be whole numbers ≥ 0 on every row", path=path)
    tokens = np.asarray(tokens_list, dtype=np.int64)
    sums = None
    if sums_list is not None:
        sums = np.asarray([math.nan if s is None else s for s in sums_list], dtype=np.float64)
        if not np.all(np.isfinite(sums)) or np.any(sums < 0):
            raise InvalidInput("nll_sum must be a finite number ≥ 0 on every row", path=path)
    if loss_list is not None:
        losses = np.asarray([math.nan if v is None else v for v in loss_list], dtype=np.float64)
    else:
        assert sums is not None
        with np.errstate(invalid="ignore", divide="ignore"):
            losses = np.where(tokens > 0, sums / np.maximum(tokens, 1), np.nan)
    return ExampleLosses(
        example_ids=ids,
        tasks=tasks,
        nll_sums=sums,
        tokens=tokens,
        losses=losses,
        evalset_hash=meta.get("evalset_hash"),
        subset=meta.get("subset"),
        checkpoint_hash=meta.get("checkpoint_hash"),
        source=source or str(path),
    )


def _metadata(raw: dict[bytes, bytes] | None, path: Path) -> dict[str, str]:
    if not raw or _META_KEY not in raw:
        return {}  # a file from before format 2
    try:
        meta = json.loads(raw[_META_KEY])
    except ValueError as e:
        raise InvalidInput(f"per-example file's evalboard metadata is not JSON ({e})", path=path) from e
    if not isinstance(meta, dict):
        raise InvalidInput("per-example file's evalboard metadata is not an object", path=path)
    out = {}
    for key in ("evalset_hash", "subset", "checkpoint_hash"):
        value = meta.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > 256):
            raise InvalidInput(f"per-example file's metadata {key} must be a short string", path=path)
        if value:
            out[key] = value
    return out


class ExampleCache:
    """Per-example files of MLflow runs, downloaded once into ``folder`` (one file per run id:
    an evaluation's run is written once and never changes)."""

    def __init__(self, tracking_uri: str, folder: str | Path):
        self.tracking_uri = tracking_uri
        self.folder = Path(folder)
        self._client = None

    def _mlflow(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def path_for(self, run_id: str) -> Path:
        if not run_id or not all(c.isalnum() or c in "-_" for c in run_id) or len(run_id) > 64:
            raise InvalidInput(f"not an MLflow run id: {run_id[:80]!r}")
        return self.folder / f"{run_id}.parquet"

    def get(self, run_id: str) -> ExampleLosses | None:
        """The run's per-example losses, or None when the run logged none (an imported result)."""
        cached = self.path_for(run_id)
        source = f"mlflow run {run_id}"
        if cached.is_file():
            return read(cached, source=source)
        client = self._mlflow()
        try:
            listed = {f.path for f in client.list_artifacts(run_id)}
        except Exception as e:  # mlflow raises its own and requests' exceptions alike
            raise TrackingError(f"MLflow at {self.tracking_uri} could not list run {run_id}'s artifacts: {e}") from e
        if ARTIFACT not in listed:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.folder) as tmp:
            try:
                local = client.download_artifacts(run_id, ARTIFACT, tmp)
            except Exception as e:
                raise TrackingError(
                    f"MLflow at {self.tracking_uri} could not give run {run_id}'s {ARTIFACT}: {e}"
                ) from e
            loaded = read(local, source=source)  # check before keeping it
            os.replace(local, cached)
        return loaded

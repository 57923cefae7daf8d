"""MLflow logging: the only module that writes to MLflow.

Layout in MLflow:
- one experiment per registry run, named ``<prefix><run name>`` (prefix ``evalboard/`` by default);
- each checkpoint is an external LoggedModel (``mlflow.create_external_model``) tagged with its
  content hash, step, base model, row range and token-space hash; found again by that hash;
- each (checkpoint, eval set) evaluation is one MLflow run: metrics ``loss_all`` and ``loss_<task>``
  at ``step=<checkpoint step>``, linked to the LoggedModel (``model_id=``) and to the eval set as an
  MLflow dataset whose digest is the eval-set hash (first 36 hex characters: MLflow's column
  limit; the full hash is the tag ``evalboard.evalset_hash``).

Idempotence: before creating a run we look for a FINISHED run with the same key tags
(``evalboard.eval_key``, and ``evalboard.job_id`` for queued jobs) and return it instead.
A queued job's run is also tagged ``evalboard.fencing_token`` (its claim); `Tracker.reconcile`
uses that to tell a live worker's RUNNING run from one a dead worker left behind.

Every run is also tagged with the process that created it and will end it (``evalboard.host``,
``evalboard.pid``, ``evalboard.pid_start``: the boot id and start time of that pid, from /proc, so
a pid the kernel reused later is not taken for it). A run of no queued job (``evalboard eval``,
``import-eval``) whose process is gone stays RUNNING for ever otherwise: `Tracker.reconcile`
ends it KILLED when its host is this host (or one named as gone) and that process no longer runs.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.errors import LeaseLost

__all__ = ["Tracker", "EvalRecord", "mlflow_available", "record_from_dict", "check_tracking_store"]

TAG = "evalboard."
DIGEST_LEN = 36
# MLflow 3's UI opens an experiment without a kind in its GenAI (traces) view; this tag makes it
# open the model-training view (runs, metrics charts), which is what evaluations are.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


@dataclass(frozen=True)
class EvalRecord:
    """Everything one evaluation logs (computed before MLflow is touched)."""

    run_name: str  # the registry run: becomes the experiment
    checkpoint_path: str
    checkpoint_hash: str
    step: int
    base_model: str
    model_type: str  # the checkpoint's track, as MLflow's LoggedModel type ("trainable-rows", "vision-connector")
    model_params: Mapping[str, str]  # the LoggedModel's parameters (step, base model, row range or vision tower, ...)
    token_space_hash: str
    evalset_name: str
    evalset_hash: str
    evalset_path: str
    losses: Mapping[str, float]
    tokens: Mapping[str, int]
    examples: Mapping[str, int]
    params: Mapping[str, Any]  # reproducibility: versions, device, dtype, batch settings, max_examples
    tags: Mapping[str, str]
    artifacts: Mapping[str, str]  # artifact file name -> local path
    eval_key: str  # checkpoint hash + eval-set hash + options that change the numbers


def record_from_dict(data: Mapping[str, Any]) -> EvalRecord:
    """An `EvalRecord` kept as JSON (the outbox), including ones written before records carried
    their model type and parameters (then: a trainable-rows checkpoint with its row range)."""
    data = dict(data)
    if "model_type" not in data:
        data["model_type"] = "trainable-rows"
        data["model_params"] = {
            "step": str(data.get("step")),
            "base_model": data.get("base_model", ""),
            "row_start": str(data.pop("row_start", 0)),
            "row_end": str(data.pop("row_end", 0)),
            "token_space_hash": data.get("token_space_hash", ""),
        }
    return EvalRecord(**data)


def mlflow_available(uri: str) -> bool:
    try:
        from mlflow.tracking import MlflowClient

        MlflowClient(uri).search_experiments(max_results=1)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not reachable now"
        return False


def check_tracking_store(uri: str) -> None:
    """Refuse, before anything is computed or written, a local MLflow store that cannot take a run
    (a path under a file, a read-only or corrupt database): one line naming the store instead of
    MLflow's traceback after the evaluation. Creates nothing. A tracking server is not probed:
    when it is away, results wait in the outbox."""
    import os
    import sqlite3
    from urllib.parse import urlparse

    from registry.errors import InvalidInput

    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        target, is_db = uri.removeprefix("sqlite://").removeprefix("/").split("?", 1)[0], True
    elif scheme in ("", "file"):
        target, is_db = (urlparse(uri).path if scheme == "file" else uri), False
    else:
        return
    path = Path(target)
    if path.exists():
        if is_db and not path.is_file():
            raise InvalidInput(f"MLflow tracking store {uri} cannot be used: {path} is not a database file")
        if not is_db and not path.is_dir():
            raise InvalidInput(f"MLflow tracking store {uri} cannot be used: {path} is not a folder")
        if is_db:
            try:  # take the write lock and give it back: the file is a writable SQLite database
                conn = sqlite3.connect(str(path), timeout=30)
                try:
                    conn.execute("PRAGMA schema_version").fetchone()  # reads the header: a database?
                    conn.execute("BEGIN IMMEDIATE")
                    conn.rollback()
                finally:
                    conn.close()
            except sqlite3.Error as e:
                raise InvalidInput(f"MLflow tracking store {uri} cannot be used: {e}") from None
        elif not os.access(path, os.W_OK | os.X_OK):
            raise InvalidInput(f"MLflow tracking store {uri} cannot be used: {path} is not writable")
        return
    ancestor = path.parent if str(path.parent) else Path(".")
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InvalidInput(f"MLflow tracking store {uri} cannot be used: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InvalidInput(f"MLflow tracking store {uri} cannot be used: {ancestor} is not writable")


class Tracker:
    """Writes evaluations to the MLflow store at `tracking_uri`.

    `artifact_location` is the folder (or URI) under which each new experiment keeps its
    artifacts (`<location>/<experiment id>`); by default, next to a local SQLite store
    (`registry.settings.default_artifact_location`) and the server's own for a tracking server."""

    def __init__(
        self, tracking_uri: str, experiment_prefix: str = "evalboard/", *, artifact_location: str | None = None
    ):
        from mlflow.tracking import MlflowClient

        from registry.settings import default_artifact_location

        self.uri = tracking_uri
        self.prefix = experiment_prefix
        self.artifact_location = artifact_location or default_artifact_location(tracking_uri)
        _ensure_sqlite_folder(tracking_uri)
        # A client bound to this URI: the process-wide tracking URI (fluent API) is left alone, so
        # two trackers in one process, or a training run logging elsewhere, do not collide.
        self.client = MlflowClient(tracking_uri)
        self._experiments: dict[str, str] = {}

    def experiment_id(self, run_name: str) -> str:
        from mlflow.exceptions import MlflowException

        name = f"{self.prefix}{run_name}"
        if name in self._experiments:
            return self._experiments[name]
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                exp_id = self.client.create_experiment(
                    name,
                    artifact_location=self._experiment_artifacts(name),
                    tags={f"{TAG}run": run_name, EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                )
            except MlflowException:  # another worker created it first
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            exp_id = exp.experiment_id
            if EXPERIMENT_KIND_TAG not in exp.tags:  # made by an older evalboard
                self.client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        self._experiments[name] = exp_id
        return exp_id

    def _experiment_artifacts(self, name: str) -> str | None:
        """`<artifact location>/<experiment name, made path-safe>`: one folder per experiment,
        readable by name, instead of MLflow's `./mlruns/<id>` relative to the current folder."""
        if not self.artifact_location:
            return None
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("._") or "experiment"
        return f"{self.artifact_location.rstrip('/')}/{safe}"

    def find_model_id(self, exp_id: str, checkpoint_hash: str) -> str | None:
        """The LoggedModel of this checkpoint content in this experiment, if one was created."""
        found = self.client.search_logged_models(
            experiment_ids=[exp_id], filter_string=f"tags.`{TAG}checkpoint_hash` = '{checkpoint_hash}'", max_results=1
        )
        return found[0].model_id if len(found) else None

    def logged_model_id(self, exp_id: str, rec: EvalRecord) -> str:
        return self.ensure_model(
            exp_id,
            checkpoint_hash=rec.checkpoint_hash,
            checkpoint_path=rec.checkpoint_path,
            step=rec.step,
            model_type=rec.model_type,
            model_params=rec.model_params,
        )

    def ensure_model(
        self,
        exp_id: str,
        *,
        checkpoint_hash: str,
        checkpoint_path: str,
        step: int | None,
        model_type: str,
        model_params: Mapping[str, Any],
    ) -> str:
        """The checkpoint's external LoggedModel in this experiment, created when it has none
        (what `mlflow.create_external_model` does, through this tracker's own client)."""
        from mlflow.entities import LoggedModelStatus
        from mlflow.models.model import MLMODEL_FILE_NAME
        from mlflow.models.utils import get_external_mlflow_model_spec
        from mlflow.utils.mlflow_tags import MLFLOW_MODEL_IS_EXTERNAL

        existing = self.find_model_id(exp_id, checkpoint_hash)
        if existing is not None:
            return existing
        model = self.client.create_logged_model(
            experiment_id=exp_id,
            name=f"step-{step}",
            params={k: str(v) for k, v in model_params.items()},
            tags={
                f"{TAG}checkpoint_hash": checkpoint_hash,
                f"{TAG}checkpoint_path": checkpoint_path,
                f"{TAG}step": str(step),
                MLFLOW_MODEL_IS_EXTERNAL: "true",
            },
            model_type=model_type,
        )
        # An external model's weights are not in MLflow; an MLmodel file lets it be registered.
        with tempfile.TemporaryDirectory(prefix="evalboard-model-") as tmp:
            get_external_mlflow_model_spec(model).save(os.path.join(tmp, MLMODEL_FILE_NAME))
            self.client.log_model_artifacts(model.model_id, tmp)
        return self.client.finalize_logged_model(model.model_id, LoggedModelStatus.READY).model_id

    def _start_run(self, exp_id: str, run_name: str, tags: Mapping[str, str]) -> str:
        from mlflow.tracking.context import registry as context_registry

        tags = {**dict(tags), **owner_tags()}  # who must end it: what `reconcile` checks when it stays RUNNING
        run = self.client.create_run(exp_id, run_name=run_name, tags=context_registry.resolve_tags(tags))
        return run.info.run_id

    def find_finished(self, exp_id: str, *, eval_key: str | None = None, job_id: int | None = None) -> str | None:
        clauses = ["attributes.status = 'FINISHED'"]
        if job_id is not None:
            clauses.append(f"tags.`{TAG}job_id` = '{job_id}'")
        elif eval_key is not None:
            clauses.append(f"tags.`{TAG}eval_key` = '{eval_key}'")
        runs = self.client.search_runs([exp_id], " and ".join(clauses), max_results=1)
        return runs[0].info.run_id if runs else None

    def log(
        self,
        rec: EvalRecord,
        *,
        job_id: int | None = None,
        force: bool = False,
        still_owner: Callable[[], bool] | None = None,
    ) -> dict[str, str]:
        """Log one evaluation; returns {run_id, experiment_id, model_id}. Reuses a FINISHED run
        with the same job id (or the same eval key unless ``force``) instead of duplicating it.

        ``still_owner()`` is asked just before the run is marked FINISHED; when it says False (the
        worker lost its job's lease) the run ends FAILED and `LeaseLost` is raised, so a stale
        worker never adds a second FINISHED run for a job."""
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import Param

        exp_id = self.experiment_id(rec.run_name)
        model_id = self.logged_model_id(exp_id, rec)
        existing = self.find_finished(exp_id, job_id=job_id) if job_id is not None else None
        if existing is None and not force and job_id is None:
            existing = self.find_finished(exp_id, eval_key=rec.eval_key)
        if existing is not None:
            return {"run_id": existing, "experiment_id": exp_id, "model_id": model_id, "reused": "true"}
        tags = {
            f"{TAG}checkpoint_hash": rec.checkpoint_hash,
            f"{TAG}evalset_hash": rec.evalset_hash,
            f"{TAG}evalset": rec.evalset_name,
            f"{TAG}token_space_hash": rec.token_space_hash,
            f"{TAG}eval_key": rec.eval_key,
            f"{TAG}step": str(rec.step),
            f"{TAG}checkpoint_path": rec.checkpoint_path,
            **dict(rec.tags),
        }
        if job_id is not None:
            tags[f"{TAG}job_id"] = str(job_id)
        dataset = MetaDataset(  # type: ignore[abstract]  # mlflow leaves `profile` abstract; Dataset is no ABC
            source=_local_source(rec.evalset_path), name=rec.evalset_name, digest=rec.evalset_hash[:DIGEST_LEN]
        )
        run_id = self._start_run(exp_id, f"step{rec.step}:{rec.evalset_name}", tags)
        with self._run_status(run_id):
            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in rec.params.items()])
            self._log_eval_input(run_id, dataset, model_id)
            self._log_metrics(run_id, rec.losses, rec.tokens, rec.step, model_id, dataset)
            for name, path in rec.artifacts.items():
                if not Path(path).exists():  # an outbox entry flushed on another machine
                    self.client.set_tag(run_id, f"{TAG}missing_artifact.{name}", path)
                    continue
                self.client.log_artifact(
                    run_id, path, artifact_path=None if "/" not in name else name.rsplit("/", 1)[0]
                )
            if still_owner is not None and not still_owner():
                raise LeaseLost(
                    f"job {job_id}: lease lost before MLflow run {run_id} finished; the run is marked FAILED"
                )
        return {"run_id": run_id, "experiment_id": exp_id, "model_id": model_id, "reused": "false"}

    def reconcile(
        self,
        live_leases: Callable[[], Mapping[int, int]],
        done_runs: Callable[[], Mapping[int, str | None]],
        *,
        hosts_gone: Collection[str] = (),
    ) -> dict[str, list[str]]:
        """Close what dead workers and processes left in MLflow; returns {"killed": run ids,
        "superseded": run ids}.

        - A RUNNING run of a queued job whose (job id, fencing token) is not a live lease belongs to
          a dead attempt (worker killed, lease expired, or the job finished in another run): KILLED.
        - A RUNNING run of no queued job (`evalboard eval`, `import-eval`) whose process is gone:
          KILLED, tagged ``evalboard.reconciled``. Only this host's processes can be checked, so a
          run created on another host is left alone, unless that host is in ``hosts_gone`` (the
          user says it will never end its runs). Runs without the process tags are left alone.
        - A done job with more than one FINISHED run (a stale worker raced its successor) keeps the
          run the registry recorded; the others become FAILED, tagged ``evalboard.superseded_by``.

        Runs are listed before the leases and done jobs are read, so a run started after the listing
        is never judged against leases older than it, and a run that finished after the listing is
        found among the done jobs' runs (a lease is only cleared by the `complete` that records it).
        """
        exp_ids = [
            e.experiment_id
            for e in self.client.search_experiments(filter_string=f"name LIKE '{self.prefix}%'", max_results=1000)
        ]
        if not exp_ids:
            return {"killed": [], "superseded": []}
        job_tag = f"tags.`{TAG}job_id` LIKE '%'"
        orphans = self._orphaned_runs(exp_ids, set(hosts_gone))
        running = self._all_runs(exp_ids, f"attributes.status = 'RUNNING' and {job_tag}")
        finished = self._all_runs(exp_ids, f"attributes.status = 'FINISHED' and {job_tag}")
        live, done = live_leases(), done_runs()
        recorded = set(done.values())
        killed = []
        for run in running:
            job_id = int(run.data.tags[f"{TAG}job_id"])
            token = run.data.tags.get(f"{TAG}fencing_token")
            if token is not None and live.get(job_id) == int(token):
                continue  # a live worker's run
            if run.info.run_id in recorded:
                continue  # it finished after the listing: its job completed with it
            if self.client.get_run(run.info.run_id).info.status != "RUNNING":
                continue
            self.client.set_terminated(run.info.run_id, status="KILLED")
            self.client.set_tag(
                run.info.run_id, f"{TAG}reconciled", "dead worker: lease lost or job finished elsewhere"
            )
            killed.append(run.info.run_id)
        for run_id, reason in orphans:
            if self.client.get_run(run_id).info.status != "RUNNING":
                continue  # it ended after the listing
            self.client.set_terminated(run_id, status="KILLED")
            self.client.set_tag(run_id, f"{TAG}reconciled", reason)
            killed.append(run_id)
        by_job: dict[int, list[Any]] = {}
        for run in finished:
            by_job.setdefault(int(run.data.tags[f"{TAG}job_id"]), []).append(run)
        superseded = []
        for job_id, runs in by_job.items():
            if len(runs) < 2 or job_id not in done:
                continue
            keep = (
                done[job_id]
                if done[job_id] in {r.info.run_id for r in runs}
                else min(runs, key=lambda r: r.info.start_time).info.run_id
            )
            for run in runs:
                if run.info.run_id != keep:
                    self.client.set_terminated(run.info.run_id, status="FAILED")
                    self.client.set_tag(run.info.run_id, f"{TAG}superseded_by", keep)
                    superseded.append(run.info.run_id)
        return {"killed": killed, "superseded": superseded}

    def _orphaned_runs(self, exp_ids: list[str], hosts_gone: set[str]) -> list[tuple[str, str]]:
        """(run id, why) of the RUNNING runs of no queued job whose creating process is gone."""
        here = socket.gethostname()
        out = []
        for run in self._all_runs(exp_ids, f"attributes.status = 'RUNNING' and tags.`{TAG}pid` LIKE '%'"):
            tags = run.data.tags
            if f"{TAG}job_id" in tags:
                continue  # a queued job's run: its lease says whether its worker lives
            host, pid, start = tags.get(f"{TAG}host", ""), tags.get(f"{TAG}pid", ""), tags.get(f"{TAG}pid_start", "")
            if host in hosts_gone:
                out.append((run.info.run_id, f"host {host} is gone (its process {pid} cannot end the run)"))
            elif host == here and pid.isdigit() and not process_alive(int(pid), start):
                out.append((run.info.run_id, f"process {pid} on {host} is gone"))
        return out

    def _all_runs(self, exp_ids: list[str], filter_string: str) -> list[Any]:
        runs: list[Any] = []
        token: str | None = None
        while True:
            page = self.client.search_runs(exp_ids, filter_string, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def log_imported(
        self,
        *,
        run_name: str,
        step: int | None,
        losses: Mapping[str, float],
        tokens: Mapping[str, int],
        source_path: str,
        file_sha256: str,
        checkpoint: Any = None,
        model_type: str | None = None,
        model_params: Mapping[str, Any] | None = None,
        evalset: Any = None,
    ) -> dict[str, str]:
        """Backfill an existing eval_step*.json (once per file content). Linked like an evaluated
        result: to the checkpoint's external LoggedModel (created when it has none; `checkpoint`
        is its registry entity, `model_type`/`model_params` describe it) and, when the file's eval
        set is registered (`evalset`), to it as the run's dataset input."""
        from mlflow.data.meta_dataset import MetaDataset

        exp_id = self.experiment_id(run_name)
        key = f"import:{file_sha256}"
        existing = self.find_finished(exp_id, eval_key=key)
        if existing:
            return {"run_id": existing, "experiment_id": exp_id, "reused": "true"}
        checkpoint_hash = getattr(checkpoint, "content_hash", None)
        model_id = None
        if checkpoint_hash:
            model_id = self.ensure_model(
                exp_id,
                checkpoint_hash=checkpoint_hash,
                checkpoint_path=checkpoint.path,
                step=checkpoint.step if checkpoint.step is not None else step,
                model_type=model_type or "checkpoint",
                model_params=model_params or {},
            )
        tags = {f"{TAG}eval_key": key, f"{TAG}source": "import", f"{TAG}source_path": source_path}
        if checkpoint_hash:
            tags[f"{TAG}checkpoint_hash"] = checkpoint_hash
        dataset = None
        if evalset is not None:
            tags[f"{TAG}evalset"] = evalset.name
            tags[f"{TAG}evalset_hash"] = evalset.content_hash
            dataset = MetaDataset(  # type: ignore[abstract]  # mlflow leaves `profile` abstract; Dataset is no ABC
                source=_local_source(evalset.path), name=evalset.name, digest=evalset.content_hash[:DIGEST_LEN]
            )
        run_id = self._start_run(exp_id, f"import:{Path(source_path).name}", tags)
        with self._run_status(run_id):
            if dataset is not None or model_id is not None:
                self._log_eval_input(run_id, dataset, model_id)
            self._log_metrics(run_id, losses, tokens, step or 0, model_id, dataset)
            self.client.log_artifact(run_id, source_path)
        return {"run_id": run_id, "experiment_id": exp_id, "model_id": model_id or "", "reused": "false"}

    @contextmanager
    def _run_status(self, run_id: str) -> Iterator[None]:
        """FINISHED when the block completes, FAILED when it raises (as `mlflow.start_run` does)."""
        try:
            yield
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")

    def _log_eval_input(self, run_id: str, dataset: Any, model_id: str | None) -> None:
        from mlflow.entities import DatasetInput, InputTag, LoggedModelInput
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        datasets = (
            []
            if dataset is None
            else [
                DatasetInput(
                    dataset=dataset._to_mlflow_entity(), tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value="eval")]
                )
            ]
        )
        self.client.log_inputs(
            run_id, datasets=datasets, models=[LoggedModelInput(model_id)] if model_id is not None else None
        )

    def _log_metrics(
        self,
        run_id: str,
        losses: Mapping[str, float],
        tokens: Mapping[str, int],
        step: int,
        model_id: str | None,
        dataset: Any,
    ) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[
                Metric(
                    key,
                    value,
                    now,
                    step,
                    model_id=model_id,
                    dataset_name=dataset.name if dataset is not None else None,
                    dataset_digest=dataset.digest if dataset is not None else None,
                )
                for key, value in _metrics(losses, tokens).items()
            ],
        )


def owner_tags() -> dict[str, str]:
    """The tags that say which process created a run (and must end it)."""
    pid = os.getpid()
    return {f"{TAG}host": socket.gethostname(), f"{TAG}pid": str(pid), f"{TAG}pid_start": process_start(pid) or ""}


def process_start(pid: int) -> str | None:
    """``<boot id>:<start time in clock ticks>`` of a running process (Linux /proc), so a pid reused
    by a later process (or after a reboot) is told apart; None when no such process runs (a
    zombie, killed but not yet reaped, runs no more) or /proc cannot say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name, in parentheses, may hold spaces
    if fields[0] in ("Z", "X"):
        return None
    return f"{boot}:{fields[19]}"


def process_alive(pid: int, start: str) -> bool:
    """Whether process ``pid`` that started at ``start`` (`process_start`; "" when unknown) runs on
    this host. Without /proc only the pid can be checked."""
    if Path("/proc/self/stat").exists():
        now = process_start(pid)
        return now is not None and (not start or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ensure_sqlite_folder(uri: str) -> None:
    """MLflow creates a SQLite database but not the folder it lives in."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and uri != "sqlite:///:memory:":
        Path(uri[len(prefix) :]).parent.mkdir(parents=True, exist_ok=True)


def _metrics(losses: Mapping[str, float], tokens: Mapping[str, int]) -> dict[str, float]:
    """`loss_<task>` and `tokens_<task>`, "all" included: the names the dashboard and users query."""
    return {
        **{f"loss_{t}": float(v) for t, v in losses.items()},
        **{f"tokens_{t}": float(v) for t, v in tokens.items()},
    }


def _local_source(path: str):
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "can be interpreted in multiple ways": both are the local source
        return resolve_dataset_source(Path(path).resolve().as_uri())

"""Evaluate registered checkpoints on an eval set: the pipeline behind `evalboard eval` and the worker.

Order matters for "nothing is logged on refusal": every check (compatibility, file integrity,
base model, rows) runs before any result is written; numbers are computed before MLflow is
touched; the registry row is written last, with the MLflow ids.

What differs between checkpoint tracks (rows patched into the embeddings, a connector in front of
a vision tower) is asked of `evaluator.tracks`: this module never branches on a track.
"""

from __future__ import annotations

import logging
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from evaluator import tracks
from evaluator.base_model import ResidentBase, load_base, parse_device, resolve_base_model
from evaluator.loss import LossReport, evaluate_loss
from evaluator.options import EvalOptions, subset_examples
from evaluator.rows import ResidentModel
from registry import per_example
from registry.atomic import write_file
from registry.audit import overridable, pair_findings
from registry.entities import CheckpointEntity, EvalSetEntity
from registry.errors import EvalboardError, Incompatible, InvalidInput, TrackingError
from registry.eval_key import EvalKey
from registry.eval_result import EvalResult, eval_filename
from registry.settings import Settings
from registry.store import Registry

__all__ = ["EvalOptions", "EvalOutcome", "Evaluator", "Publication", "subset_examples", "resolve_device"]

log = logging.getLogger(__name__)


@dataclass
class EvalOutcome:
    checkpoint: CheckpointEntity
    evalset: EvalSetEntity
    result: EvalResult
    report: LossReport | None
    mlflow: dict[str, str] = field(default_factory=dict)
    skipped: bool = False
    registry_result_id: int | None = None

    def line(self) -> str:
        losses = " ".join(f"{k}={v:.4f}" for k, v in self.result.losses.items())
        state = "already evaluated" if self.skipped else "evaluated"
        return f"{state}: {self.checkpoint.path} on {self.evalset.name}: {losses}"


@dataclass(frozen=True)
class Computation:
    """What `Evaluator.compute` produced, nothing written yet: the numbers, the per-example
    report, and what they were computed from (the track and its loaded checkpoint, for statistics)."""

    checkpoint: CheckpointEntity
    evalset: EvalSetEntity
    options: EvalOptions
    result: EvalResult
    report: LossReport
    track: Any
    """The checkpoint's `evaluator.tracks.EvalTrack`."""
    loaded: Any
    """What the track loaded from the checkpoint (rows, connector state)."""


@dataclass(frozen=True)
class Publication:
    """What `Evaluator.record` publishes once the numbers exist: the MLflow record and the registry
    result row. Plain JSON (`to_dict`/`from_dict`), so a queued job can keep it in the registry's
    outbox while MLflow is unreachable and log it later without computing anything again."""

    record: Any  # evaluator.tracking.EvalRecord
    result_fields: dict[str, Any]  # Registry.add_eval_result keyword arguments, less the MLflow ids
    job_id: int | None = None
    job_token: int | None = None
    force: bool = False
    stats: dict[str, Any] | None = None
    """The checkpoint's statistics document, stored in the registry once MLflow has the result."""
    eval_json: bool = False
    """Also write ``eval_step<step>.json`` next to the checkpoint once the result is recorded."""

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {
            "record": asdict(self.record),
            "result_fields": self.result_fields,
            "job_id": self.job_id,
            "job_token": self.job_token,
            "force": self.force,
            "stats": self.stats,
            "eval_json": self.eval_json,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Publication:
        from evaluator.tracking import record_from_dict

        return cls(
            record=record_from_dict(data["record"]),
            result_fields=dict(data["result_fields"]),
            job_id=data.get("job_id"),
            job_token=data.get("job_token"),
            force=bool(data.get("force")),
            stats=data.get("stats"),
            eval_json=bool(data.get("eval_json")),
        )


def resolve_device(requested: str | None) -> torch.device:
    """A device we can actually use, or a clear error (never a silent fallback for an explicit ask)."""
    parse_device(requested)  # a malformed name is a one-line refusal, not torch's RuntimeError
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInput(f"--device {requested}: torch sees no CUDA device on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InvalidInput(f"--device {requested}: only {torch.cuda.device_count()} CUDA devices are visible")
    return dev


_FEATURES_MEMORY_BYTES = 4 << 30
"""Vision features kept in memory across a sweep (beyond this the disk cache serves them)."""


class Evaluator:
    """Holds one resident base model (and vision tower) and evaluates checkpoints against eval sets."""

    log = log

    def __init__(
        self,
        registry: Registry,
        settings: Settings | None = None,
        *,
        tracker: Any = None,
        progress: Callable[[int, int], None] | None = None,
    ):
        self.reg = registry
        self.settings = settings or Settings.from_env()
        self._tracker = tracker
        self.progress = progress
        self.base: ResidentBase | None = None
        self.resident: ResidentModel | None = None
        self.towers: dict[tuple[Path, str], Any] = {}
        self.examples_cache: dict[tuple[str, str], Any] = {}
        """Eval-set examples per (content hash, form), read once per worker."""
        self.features_memory: dict[str, torch.Tensor] = {}
        """Vision-tower features by cache key (see evaluator/vision.py)."""
        self._feature_cache: Any = None
        self.loads = 0

    @property
    def tracker(self):
        if self._tracker is None:
            from evaluator.tracking import Tracker

            self._tracker = Tracker(self.settings.mlflow_uri, artifact_location=self.settings.artifact_location)
        return self._tracker

    # --- preparation (all checks, no writes) ------------------------------------------------

    def check(self, ck: CheckpointEntity, es: EvalSetEntity, options: EvalOptions) -> list:
        """Refuse what cannot be evaluated; returns the non-error findings (e.g. version warnings)."""
        tracks.get(ck.track).refuse(self, ck, options)
        findings = pair_findings(self.reg, ck, es, models=self.settings.models)
        errors = [f for f in findings if f.severity == "error"]
        allowed = overridable(ck) if ck.status == "valid" else frozenset()
        if errors and not (options.allow_mismatch and all(f.code in allowed for f in errors)):
            hint = " (pass --allow-mismatch to evaluate anyway)" if all(f.code in allowed for f in errors) else ""
            raise Incompatible(
                f"refusing to evaluate {ck.path} on eval set {es.name!r}: "
                + "; ".join(f.message for f in errors)
                + hint
            )
        return findings

    def ensure_base(self, base_model: str, device: torch.device, *, pristine: bool = False) -> ResidentModel:
        """The resident base LLM on ``device``, loaded once. ``pristine``: as loaded, never fitted to
        a token space (a connector feeds the base's own vocabulary); a fitted one is reloaded."""
        path = resolve_base_model(base_model, self.settings.models)
        stale = self.base is None or self.base.path != Path(path) or self.base.device != device
        if stale or (pristine and self.resident is not None and self.resident.sizes is not None):
            self.base = None
            self.resident = None
            self.base = load_base(path, device)
            self.resident = ResidentModel(self.base)
            self.loads += 1  # load_base logs what it loaded
        assert self.resident is not None
        return self.resident

    def ensure_tower(self, tower_id: str, device: torch.device):
        """The resident vision tower ``tower_id`` on ``device`` (same dtype as the base LLM)."""
        from evaluator.base_model import default_dtype
        from evaluator.vision import load_tower

        path = resolve_base_model(tower_id, self.settings.models)
        key = (Path(path), str(device))
        if key not in self.towers:
            self.towers.clear()  # one tower resident at a time
            self.features_memory.clear()
            self.towers[key] = load_tower(path, device, self.base.dtype if self.base else default_dtype(device))
        return self.towers[key]

    def feature_cache(self):
        """The on-disk vision-feature cache under the evalboard home (None when disabled)."""
        from evaluator.vision import FeatureCache

        if self.settings.vision_cache_bytes <= 0:
            return None
        if self._feature_cache is None:
            self._feature_cache = FeatureCache(
                self.settings.home / "cache" / "vision", self.settings.vision_cache_bytes
            )
        if sum(t.numel() * t.element_size() for t in self.features_memory.values()) > _FEATURES_MEMORY_BYTES:
            self.features_memory.clear()
        return self._feature_cache

    def previous_checkpoint(self, ck: CheckpointEntity) -> CheckpointEntity | None:
        """The run's valid checkpoint of the same track just before ``ck`` (for drift)."""
        if ck.step is None:
            return None
        earlier = [
            c
            for c in self.reg.list_checkpoints(run_id=ck.run_id, status="valid", track=ck.track)
            if c.step is not None and c.step < ck.step
        ]
        return max(earlier, key=lambda c: c.step or 0) if earlier else None  # every step here is set

    # --- the evaluation ---------------------------------------------------------------------

    def compute(self, ck: CheckpointEntity, es: EvalSetEntity, options: EvalOptions) -> Computation:
        """Check, load, apply and compute; writes nothing."""
        findings = self.check(ck, es, options)
        track = tracks.get(ck.track)
        loaded = track.load(self, ck)
        device = resolve_device(options.device)
        applied = track.apply(self, ck, loaded, device, options)
        fed = track.inputs(self, applied, es, options.max_examples)
        report = evaluate_loss(
            applied.model,
            fed.examples,
            max_tokens_per_batch=options.max_tokens_per_batch,
            pad_token_id=applied.pad_token_id,
            progress=self.progress,
            inputs=fed.inputs,
            placeholder_id=fed.placeholder_id,
        )
        bad = {t: v.loss for t, v in report.tasks.items() if not math.isfinite(v.loss)}
        if bad:
            raise InvalidInput(f"non-finite loss {bad} on eval set {es.name!r}; not logged as a score", path=ck.path)
        result = EvalResult(
            step=ck.step,
            losses=report.losses(),
            tokens={t: v.tokens for t, v in report.tasks.items()},
            examples={t: v.examples for t, v in report.tasks.items()},
            checkpoint={"path": ck.path, "content_hash": ck.content_hash},
            evalset={"name": es.name, "content_hash": es.content_hash},
            token_space_hash=applied.token_space_hash,
            extra={**_reproducibility(self.base, report, options, applied.prepare, findings), **applied.params},
        )
        return Computation(ck, es, options, result, report, track, loaded)

    def evaluate(
        self,
        ck: CheckpointEntity,
        es: EvalSetEntity,
        options: EvalOptions = EvalOptions(),
        *,
        job_id: int | None = None,
    ) -> EvalOutcome:
        if not options.force:
            existing = self._existing(ck, es, options)
            if existing is not None:
                return existing
        return self.publish_computation(self.compute(ck, es, options), job_id=job_id)

    def prior_result(
        self, ck: CheckpointEntity, es: EvalSetEntity, max_examples: int | None, *, logged_only: bool = False
    ):
        """The registry's newest evaluator result for this checkpoint content on this eval-set content
        and subset, whichever checkpoint it was computed for (``logged_only``: one that has its
        MLflow run), or None."""
        if not ck.content_hash:
            return None
        return self.reg.latest_result(EvalKey.of(ck, es, max_examples), source="evaluator", logged_only=logged_only)

    def _existing(self, ck: CheckpointEntity, es: EvalSetEntity, options: EvalOptions) -> EvalOutcome | None:
        r = self.prior_result(ck, es, options.max_examples)
        if r is None:
            return None
        metrics = r.metrics or {}
        res = EvalResult(
            step=r.step,
            losses={t: m["loss"] for t, m in metrics.items()},
            tokens={t: m.get("tokens") for t, m in metrics.items()},
            examples={t: m.get("examples") for t, m in metrics.items()},
        )
        return EvalOutcome(ck, es, res, None, {"run_id": r.mlflow_run_id or ""}, skipped=True, registry_result_id=r.id)

    def publish_computation(
        self, computed: Computation, *, job_id: int | None = None, job_token: int | None = None
    ) -> EvalOutcome:
        """`prepare_publication`, then `publish`: artifacts, MLflow, then the registry."""
        pub = self.prepare_publication(computed, job_id=job_id, job_token=job_token)
        mlflow_ids, ent = self.publish(pub, log_to_mlflow=computed.options.log_to_mlflow)
        return EvalOutcome(
            computed.checkpoint,
            computed.evalset,
            computed.result,
            computed.report,
            mlflow_ids,
            registry_result_id=ent.id,
        )

    def prepare_publication(
        self, computed: Computation, *, job_id: int | None = None, job_token: int | None = None
    ) -> Publication:
        """Write the local artifacts under the evalboard home (result json, per-example losses,
        statistics) and assemble what `publish` sends; touches neither MLflow nor the registry nor
        the checkpoint's folder (those are written by `publish`, after MLflow took the result)."""
        ck, es, options = computed.checkpoint, computed.evalset, computed.options
        result, report = computed.result, computed.report
        assert ck.content_hash is not None  # `compute` refuses an invalid checkpoint, the only kind without one
        out_dir = self.settings.home / "results" / f"{ck.content_hash[:16]}-{es.content_hash[:16]}"
        if options.max_examples:
            out_dir = out_dir.with_name(out_dir.name + f"-n{options.max_examples}")
        out_dir.mkdir(parents=True, exist_ok=True)
        artifacts = {}
        result_path = result.save(out_dir / eval_filename(ck.step or 0))
        artifacts[result_path.name] = str(result_path)
        if report is not None:
            examples_path = out_dir / per_example.ARTIFACT
            _write_per_example(report, examples_path, ck, es, options.max_examples)
            artifacts[examples_path.name] = str(examples_path)
        stats = computed.track.statistics(self, ck, computed.loaded, base_dir=self.base.path if self.base else None)
        if stats is not None:
            import json

            stats_path = out_dir / computed.track.stats_artifact
            write_file(stats_path, json.dumps(stats, indent=2) + "\n")
            artifacts[stats_path.name] = str(stats_path)
        record = self._tracking_record(ck, es, result, options, artifacts)
        if job_token is not None:
            record = _with_tags(record, {"evalboard.fencing_token": str(job_token)})
        run = self.reg.get_run(id=ck.run_id)
        extra = {
            "per_example_path": artifacts.get(per_example.ARTIFACT),
            "max_examples": options.max_examples,
            "allow_mismatch": options.allow_mismatch,
            "result_dir": str(out_dir),
            "job_id": job_id,
            "run_name": run.name,
            **{k: v for k, v in result.extra.items() if k in ("device", "dtype")},
        }
        fields = dict(
            checkpoint_id=ck.id,
            run_id=ck.run_id,
            evalset_id=es.id,
            evalset_hash=es.content_hash,
            checkpoint_hash=ck.content_hash,
            step=ck.step,
            source="evaluator",
            loss_all=result.loss_all,
            metrics=result.metrics(),
            path=str(result_path),
            extra=extra,
        )
        return Publication(
            record=record,
            result_fields=fields,
            job_id=job_id,
            job_token=job_token,
            force=options.force,
            stats=stats,
            eval_json=options.write_eval_json and ck.step is not None,
        )

    def publish(self, pub: Publication, *, log_to_mlflow: bool = True, still_owner: Callable[[], bool] | None = None):
        """Log `pub` to MLflow (reusing the job's FINISHED run if one exists), then record it: the
        statistics, the registry result (or the one this job already added: a retry after a crash
        adds no second row), and the ``eval_step`` json next to the checkpoint, in that order, so a
        failure before MLflow has the result leaves nothing behind. Returns (mlflow ids, registry
        result). `still_owner` is asked before the run is FINISHED."""
        mlflow_ids: dict[str, str] = {}
        if log_to_mlflow:
            try:
                mlflow_ids = self.tracker.log(pub.record, job_id=pub.job_id, force=pub.force, still_owner=still_owner)
            except EvalboardError:
                raise
            except Exception as e:  # noqa: BLE001 - MLflow's and its HTTP client's many failures: one line
                first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
                raise TrackingError(
                    f"MLflow at {self.settings.mlflow_uri} could not log the result of "
                    f"{pub.record.checkpoint_path} ({type(e).__name__}: {first}); nothing was "
                    "recorded"
                ) from e
        fields = dict(pub.result_fields)
        fields["extra"] = {
            **fields.get("extra", {}),
            "mlflow_experiment_id": mlflow_ids.get("experiment_id"),
            "mlflow_model_id": mlflow_ids.get("model_id"),
        }
        if pub.stats is not None and fields.get("checkpoint_id") is not None:
            self.reg.put_row_stats(checkpoint_id=fields["checkpoint_id"], stats=pub.stats)
        ent = None
        if pub.job_id is not None:
            for r in self.reg.list_eval_results(checkpoint_id=fields.get("checkpoint_id")):
                if (r.extra or {}).get("job_id") == pub.job_id and r.source == "evaluator":
                    ent = self.reg.update_eval_result(
                        id=r.id, mlflow_run_id=mlflow_ids.get("run_id"), extra=fields["extra"]
                    )
                    break
        if ent is None:
            ent = self.reg.add_eval_result(mlflow_run_id=mlflow_ids.get("run_id"), **fields)
        if pub.eval_json:
            _copy_next_to_checkpoint(Path(fields["path"]), Path(pub.record.checkpoint_path), pub.record.evalset_name)
        return mlflow_ids, ent

    def statistics(self, ck: CheckpointEntity, *, with_base: bool = True) -> dict:
        """The checkpoint's statistics document (row norms, or connector parameter norms), with drift
        against the run's previous checkpoint; stored in the registry and returned. ``with_base``:
        compare with the frozen base (its text rows, read as slices; never the whole model)."""
        if ck.status != "valid":
            raise InvalidInput(f"is invalid: {ck.reason}", path=ck.path)
        track = tracks.get(ck.track)
        loaded = track.load_for_stats(self, ck)
        base_dir = track.stats_base(self, ck, loaded) if with_base else None
        stats = track.statistics(self, ck, loaded, base_dir=base_dir)
        self.reg.put_row_stats(checkpoint_id=ck.id, stats=stats)
        return stats

    def _tracking_record(self, ck, es, result: EvalResult, options: EvalOptions, artifacts: dict):
        from evaluator.tracking import EvalRecord

        run = self.reg.get_run(id=ck.run_id)
        track = tracks.get(ck.track)
        params = {k: v for k, v in result.extra.items() if k not in ("findings", "prepare")}
        tags = {"evalboard.allow_mismatch": str(options.allow_mismatch).lower(), "evalboard.track": ck.track}
        if options.max_examples:
            tags["evalboard.subset"] = f"max_examples={options.max_examples}"
        if run.training_mlflow_run_id:  # the training that wrote the checkpoint (integrations' callbacks)
            tags["evalboard.training_run_id"] = run.training_mlflow_run_id
            if run.training_mlflow_experiment_id:
                tags["evalboard.training_experiment_id"] = run.training_mlflow_experiment_id
        return EvalRecord(
            run_name=run.name,
            checkpoint_path=ck.path,
            checkpoint_hash=ck.content_hash,
            step=ck.step or 0,
            base_model=ck.base_model or "",
            model_type=track.model_type,
            model_params=track.model_params(ck, result.token_space_hash),
            token_space_hash=result.token_space_hash or "",
            evalset_name=es.name,
            evalset_hash=es.content_hash,
            evalset_path=es.path,
            losses=result.losses,
            tokens=result.tokens,
            examples=result.examples,
            params=params,
            tags=tags,
            artifacts=artifacts,
            eval_key=EvalKey.of(ck, es, options.max_examples).tag,
        )


def _with_tags(record, tags: dict[str, str]):
    from dataclasses import replace

    return replace(record, tags={**dict(record.tags), **tags})


def _reproducibility(
    base: ResidentBase | None, report: LossReport, options: EvalOptions, prepare: str, findings: list
) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import transformers

    try:
        evalboard_version = version("evalboard")
    except PackageNotFoundError:  # run from a source tree that was never installed
        evalboard_version = "unknown"
    return {
        "evalboard_version": evalboard_version,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "python_version": platform.python_version(),
        "device": str(base.device) if base else None,
        "dtype": str(base.dtype).removeprefix("torch.") if base else None,
        "base_model_path": str(base.path) if base else None,
        "max_tokens_per_batch": report.max_tokens_per_batch,
        "batches": report.batches,
        "oom_retries": report.oom_retries,
        "n_tokens": report.n_tokens,
        "n_scored": report.n_scored,
        "runtime_s": round(report.seconds, 3),
        "max_examples": options.max_examples,
        "allow_mismatch": options.allow_mismatch,
        "prepare": prepare,
        "findings": [f.message for f in findings],
    }


def _write_per_example(
    report: LossReport, path: Path, ck: CheckpointEntity, es: EvalSetEntity, max_examples: int | None
) -> None:
    per_example.write(
        path,
        example_ids=[e.example_id for e in report.examples],
        tasks=[e.task for e in report.examples],
        nll_sums=[e.nll_sum for e in report.examples],
        tokens=[e.tokens for e in report.examples],
        evalset_hash=es.content_hash,
        evalset_name=es.name,
        subset=EvalKey.of(ck, es, max_examples).subset,
        checkpoint_hash=ck.content_hash,
    )


def _copy_next_to_checkpoint(source: Path, ckpt: Path, evalset_name: str) -> None:
    """The result file kept under the evalboard home, also written next to the checkpoint (when
    it is still there: an outbox entry may be logged on another machine)."""
    try:
        result = EvalResult.load(source)
    except (InvalidInput, OSError) as e:
        log.warning("not writing an eval_step json next to %s: %s", ckpt, e)
        return
    _write_next_to_checkpoint(result, ckpt, evalset_name)


def _write_next_to_checkpoint(result: EvalResult, ckpt: Path, evalset_name: str) -> None:
    """``<run>/eval_step<step>.json`` as the training code writes it; a second eval set does not
    overwrite the first's file (it goes to ``eval_step<step>.<evalset>.json``)."""
    import json

    target = ckpt.parent / eval_filename(result.step or 0)
    if target.exists():
        try:
            held = json.loads(target.read_text())
        except (OSError, ValueError):
            held = None
        evalset = held.get("evalset") if isinstance(held, dict) else None
        current = evalset.get("name") if isinstance(evalset, dict) else None
        if current != evalset_name:
            safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in evalset_name)
            target = ckpt.parent / f"eval_step{result.step}.{safe}.json"
    try:
        result.save(target)
    except (OSError, InvalidInput) as e:
        log.warning("could not write %s: %s", target, e)

"""What differs between checkpoint tracks in the evaluator: one small protocol, one module per track.

    load(ev, ck)                  read and verify the checkpoint's files (no model touched)
    apply(ev, loaded, device)     make the resident model(s) ready and apply the checkpoint to them
    inputs(ev, applied, es, n)    the eval set's examples in this track's form, and how to build the
                                  decoder's inputs for a batch of them
    statistics(ev, ck, loaded)    the checkpoint's statistics document (stored in the registry)

`evaluator/service.py` runs an evaluation with these four calls and never asks which track it has.
Adding a track: a module here with an `EvalTrack` subclass, listed in evaluator/tracks/__init__.py
(and its registry half in registry/tracks/).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from evaluator.options import EvalOptions

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from evaluator.batching import Example
    from evaluator.loss import InputsFn
    from evaluator.service import Evaluator
    from registry.entities import CheckpointEntity, EvalSetEntity

__all__ = ["EvalTrack", "Applied", "TrackInputs"]


@dataclass(frozen=True)
class Applied:
    """A checkpoint applied to the resident model, ready to evaluate."""

    model: PreTrainedModel
    """The causal LM whose loss is computed."""
    loaded: Any
    """The track's loaded checkpoint (what `load` returned)."""
    pad_token_id: int | None
    token_space_hash: str | None
    """The token space the numbers are in (None where the track has none)."""
    prepare: str
    """One sentence: what applying the checkpoint did (recorded with the result)."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """Settings that change the numbers, logged with the result (e.g. the vision feature layer)."""
    context: Any = None
    """Whatever `inputs` needs besides the model (e.g. the connector module)."""


@dataclass(frozen=True)
class TrackInputs:
    """The examples in the form `evaluate_loss` takes, and how to feed a batch of them."""

    examples: list[Example]
    inputs: InputsFn | None = None
    placeholder_id: int | None = None


class EvalTrack(ABC):
    letter: ClassVar[str]
    model_type: ClassVar[str]
    """The MLflow LoggedModel type of its checkpoints."""
    stats_artifact: ClassVar[str]
    """File name of its statistics document among an evaluation's artifacts."""

    @abstractmethod
    def load(self, ev: Evaluator, ck: CheckpointEntity) -> Any:
        """Read and validate the registered checkpoint's files; refuse if they changed on disk."""

    @abstractmethod
    def apply(
        self, ev: Evaluator, ck: CheckpointEntity, loaded: Any, device: torch.device, options: EvalOptions
    ) -> Applied:
        """Make the resident model(s) ready on ``device`` and apply the checkpoint."""

    @abstractmethod
    def inputs(self, ev: Evaluator, applied: Applied, es: EvalSetEntity, max_examples: int | None) -> TrackInputs:
        """The eval set's examples (a deterministic subset when ``max_examples``) for this track."""

    @abstractmethod
    def statistics(self, ev: Evaluator, ck: CheckpointEntity, loaded: Any, *, base_dir: Path | None) -> dict[str, Any]:
        """The statistics document of a loaded checkpoint (drift against the run's previous one)."""

    @abstractmethod
    def model_params(self, ck: CheckpointEntity, token_space_hash: str | None) -> dict[str, str]:
        """Parameters of the checkpoint's MLflow LoggedModel."""

    def refuse(self, ev: Evaluator, ck: CheckpointEntity, options: EvalOptions) -> None:
        """Refuse, from the registered entry alone (no file read, no code imported), what this track
        can tell cannot be evaluated with ``options`` (default: nothing)."""
        return None

    def stats_base(self, ev: Evaluator, ck: CheckpointEntity, loaded: Any) -> Path | None:
        """The local folder of the frozen model the statistics compare against (None: not needed)."""
        return None

    def materialize(self, ev: Evaluator, ck: CheckpointEntity, out_dir: Path, dtype: torch.dtype | None) -> str:
        """Write a full, standalone model snapshot of the checkpoint; returns a one-line summary."""
        from registry.errors import InvalidInput

        raise InvalidInput(
            f"cannot be materialized: a {self.model_type} checkpoint is not part of a save_pretrained model",
            path=ck.path,
        )

    def load_for_stats(self, ev: Evaluator, ck: CheckpointEntity) -> Any:
        """What `statistics` needs, without a model (default: `load`)."""
        return self.load(ev, ck)

"""The evaluator's half of each checkpoint track, by letter (the registry's half: registry/tracks).

get(letter)   the EvalTrack that loads, applies, feeds and describes checkpoints of that track
"""

from __future__ import annotations

from evaluator.tracks.base import Applied, EvalTrack, TrackInputs
from evaluator.tracks.connector import ConnectorEval
from evaluator.tracks.trainable_rows import TrainableRowsEval
from registry.errors import InvalidInput

__all__ = ["EvalTrack", "Applied", "TrackInputs", "ALL", "get"]

ALL: tuple[EvalTrack, ...] = (TrainableRowsEval(), ConnectorEval())
_BY_LETTER = {t.letter: t for t in ALL}


def get(letter: str) -> EvalTrack:
    try:
        return _BY_LETTER[letter]
    except KeyError:
        raise InvalidInput(f"the evaluator has no track {letter!r}; known: {', '.join(_BY_LETTER)}") from None

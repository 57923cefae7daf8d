"""The checkpoint tracks the registry knows, by letter: the one place that lists them.

    get("B")            the Track for a registered checkpoint's letter
    for_dir(path)       the track whose files a folder holds (None if none)
    for_file(path)      the track that claims a single file (None if none)
    DEFAULT_DIR         the track of a ``checkpoint_<step>/`` folder that holds none of the known files

Adding a track: a module with a `Track` subclass (see registry/tracks/base.py), listed in `ALL`.
"""

from __future__ import annotations

from pathlib import Path

from registry.errors import InvalidInput
from registry.tracks.base import FileEntry, Registration, Track
from registry.tracks.connector import ConnectorTrack
from registry.tracks.trainable_rows import TrainableRowsTrack

__all__ = ["Track", "Registration", "FileEntry", "ALL", "DEFAULT_DIR", "get", "for_dir", "for_file", "letters"]

ALL: tuple[Track, ...] = (TrainableRowsTrack(), ConnectorTrack())
DEFAULT_DIR: Track = ALL[0]
_BY_LETTER = {t.letter: t for t in ALL}


def letters() -> tuple[str, ...]:
    return tuple(_BY_LETTER)


def get(letter: str) -> Track:
    try:
        return _BY_LETTER[letter]
    except KeyError:
        raise InvalidInput(f"unknown checkpoint track {letter!r}; known: {', '.join(_BY_LETTER)}") from None


def for_dir(path: Path) -> Track | None:
    return next((t for t in ALL if t.claims_dir(path)), None)


def for_file(path: Path) -> Track | None:
    return next((t for t in ALL if t.claims_file(path)), None)

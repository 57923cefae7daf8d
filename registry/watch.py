"""Watch training output folders: register each new checkpoint once it is complete, and queue it.

A trainer writes a checkpoint over seconds or minutes, file by file. A checkpoint is complete when
  1. every file it needs exists (its track says which: `Track.complete`; e.g. Track B needs a
     `trainable_rows.*` file and `trainable_rows.json`, Track A the `.pt` itself),
  2. the sizes and mtimes of all its files are unchanged across two polls at least
     `settle_seconds` apart, and
  3. it validates (the scanner registers it as valid).
Only then is its evaluation enqueued, once per content: the store's dedupe makes a second enqueue
of the same (checkpoint content, eval set) return the first job, and the watcher remembers what it
already handled so an unchanged checkpoint costs one `stat` per poll.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from registry.entities import EvalSetEntity
from registry.errors import EvalboardError
from registry.policy import enqueue_checkpoints
from registry.scanner import discover, scan
from registry.store import Registry
from registry.tracks import Track

__all__ = ["Watcher", "WatchEvent", "file_state"]

log = logging.getLogger("evalboard.watch")

FileState = tuple[tuple[str, int, int], ...]


def file_state(checkpoint: Path, track: Track) -> FileState | None:
    """(name, size, mtime_ns) of the checkpoint's files, or None while a required file is missing."""
    try:
        if not track.complete(checkpoint):
            return None
        if checkpoint.is_file():
            st = checkpoint.stat()
            return ((checkpoint.name, st.st_size, st.st_mtime_ns),)
        entries = {e.name: e.stat() for e in os.scandir(checkpoint) if e.is_file()}
    except FileNotFoundError:
        return None
    return tuple(sorted((n, st.st_size, st.st_mtime_ns) for n, st in entries.items()))


@dataclass(frozen=True)
class WatchEvent:
    path: str
    action: str
    """'enqueued', 'already-queued', 'already-evaluated' (`registry.policy`), 'invalid', 'refused'."""
    detail: str = ""
    job_id: int | None = None


@dataclass
class _Seen:
    state: FileState
    since: float  # monotonic time this state was first seen


@dataclass
class Watcher:
    """Poll `roots` every `interval` seconds; see the module docstring for "complete"."""

    registry: Registry
    roots: list[Path]
    evalset: EvalSetEntity
    settle_seconds: float = 5.0
    max_attempts: int = 3
    options: dict = field(default_factory=dict)
    models: Mapping[str, str] | None = None
    """Base model id -> local folder, so the audit can check widths (`Settings.models`)."""
    clock: Callable[[], float] = time.monotonic
    polls: int = 0
    _pending: dict[Path, _Seen] = field(default_factory=dict)
    _handled: dict[Path, FileState] = field(default_factory=dict)

    @property
    def settling(self) -> bool:
        """Some checkpoint was seen but is not complete yet."""
        return bool(self._pending)

    def candidates(self) -> Iterable[tuple[Path, Track]]:
        for root in self.roots:
            if not root.exists():
                continue
            for run in discover(root).runs.values():
                yield from run.checkpoints

    def poll(self) -> list[WatchEvent]:
        """One pass: returns what happened to checkpoints that became complete in it."""
        now = self.clock()
        self.polls += 1
        events = []
        for path, track in self.candidates():
            state = file_state(path, track)
            if state is None:  # a required file is not there yet
                self._pending.pop(path, None)
                continue
            if self._handled.get(path) == state:
                continue
            seen = self._pending.get(path)
            if seen is None or seen.state != state:
                self._pending[path] = _Seen(state, now)  # new or still being written
                if seen is not None or self.polls > 1:  # not for what was there when watching began
                    log.info(
                        "settling %s: its files changed; complete once unchanged for %g s", path, self.settle_seconds
                    )
                continue
            if now - seen.since < self.settle_seconds:
                continue
            del self._pending[path]
            self._handled[path] = state
            events.append(self._register(path))
        return events

    def _register(self, path: Path) -> WatchEvent:
        try:
            scan(self.registry, [path])
            ck = self.registry.get_checkpoint(path=os.path.realpath(path))
        except EvalboardError as e:
            return self._log(WatchEvent(str(path), "invalid", str(e)))
        if not ck.is_valid:
            # A truncated file that stopped growing for a while: look again when it changes.
            return self._log(WatchEvent(str(path), "invalid", ck.reason or "invalid"))
        (decision,) = enqueue_checkpoints(
            self.registry, [ck], self.evalset, models=self.models, max_attempts=self.max_attempts, options=self.options
        )
        job_id = decision.job.id if decision.job is not None else None
        return self._log(WatchEvent(str(path), decision.action, decision.detail, job_id=job_id))

    def _log(self, event: WatchEvent) -> WatchEvent:
        level = logging.INFO if event.action in ("enqueued", "already-queued", "already-evaluated") else logging.WARNING
        log.log(
            level,
            "%s %s%s",
            event.action,
            event.path,
            f": {event.detail}" if event.detail else f" (job {event.job_id})" if event.job_id is not None else "",
        )
        return event

    def run(
        self, *, interval: float, should_stop: Callable[[], bool], on_event: Callable[[WatchEvent], None] | None = None
    ) -> None:
        while not should_stop():
            for event in self.poll():
                if on_event is not None:
                    on_event(event)
            deadline = self.clock() + interval
            while not should_stop() and self.clock() < deadline:
                time.sleep(min(0.2, interval))

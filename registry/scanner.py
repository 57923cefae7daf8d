"""`evalboard scan`: find runs, checkpoints, token spaces, eval results and eval sets, register them.

What counts as what (README "Layout"); which files make a checkpoint of which track is asked of
``registry.tracks``, never decided here:
- ``<run>/checkpoint_<step>/`` holding a track's files (``trainable_rows.*``: Track B;
  ``mm_projector.*``: Track A in LLaVA's layout) → a checkpoint of run ``<run>``;
- ``<run>/checkpoint_<step>.pt`` → a Track A (connector) checkpoint;
- a checkpoint whose track names another run folder (``Track.run_dir``; LLaVA's output folder holds
  its final save itself, beside ``checkpoint-<step>/`` and ``mm_projector/checkpoint-<step>.bin``)
  → a checkpoint of that run; a folder that is its own run is also looked into;
- ``<run>/token_space.json`` next to checkpoints → the run-level token space;
- ``<run>/eval_step<step>.json`` → an evaluation the trainer already made (imported, source="import");
- a folder with ``manifest.json`` and ``*.parquet`` → an eval set.

Registration is idempotent by content: a checkpoint whose files keep their size and mtime is
"unchanged" without reading a byte (so rescans of 10,000 checkpoints take seconds). A checkpoint
that fails validation is registered as invalid with its reason and the scan goes on.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry import tracks
from registry.errors import EvalboardError, Incompatible, InvalidInput
from registry.evalset import MANIFEST, EvalSet
from registry.files import FileRecord, content_hash
from registry.imports import EvalJson, check_attribution, checkpoints_by_step, record_import, written_by_evaluator
from registry.safeio import as_invalid, sha256_file
from registry.store import Registry
from registry.token_space import TokenSpace
from registry.tracks import FileEntry, Track
from registry.trainable_rows import TOKEN_SPACE_FILENAME, parse_step

__all__ = ["ScanSummary", "scan", "discover", "register_evalset", "register_token_space"]

_CKPT_DIR_RE = re.compile(r"^(?:checkpoint|ckpt)[-_]\d+$")
_EVAL_JSON_RE = re.compile(r"^eval_step\d+\.json$")
_TRAINER_STATE = "trainer_state.json"  # in every transformers.Trainer checkpoint folder

Progress = Callable[[str], None]


@dataclass
class ScanSummary:
    found: int = 0
    new: int = 0
    updated: int = 0
    unchanged: int = 0
    invalid: int = 0
    runs: int = 0
    evalsets: int = 0
    results_imported: int = 0
    invalid_items: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "new": self.new,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "invalid": self.invalid,
            "runs": self.runs,
            "evalsets": self.evalsets,
            "results_imported": self.results_imported,
            "invalid_items": self.invalid_items,
        }


@dataclass
class _Run:
    path: Path
    checkpoints: list[tuple[Path, Track]] = field(default_factory=list)
    eval_jsons: list[Path] = field(default_factory=list)
    token_space: Path | None = None
    refused: list[tuple[Path, Track, str]] = field(default_factory=list)
    """Checkpoints registered invalid without a read: symlinks leaving the tree, folders that cannot be entered."""


@dataclass
class Discovery:
    runs: dict[Path, _Run] = field(default_factory=dict)
    evalsets: list[Path] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    """Folders that cannot be listed or entered (no permission): reported, never fatal."""

    @property
    def n_items(self) -> int:
        return sum(len(r.checkpoints) + len(r.refused) for r in self.runs.values()) + len(self.evalsets)


def _outside(path: Path, root: Path) -> str | None:
    """The symlink's target when it leaves the scanned tree, else None."""
    target = Path(os.path.realpath(path))
    return None if target.is_relative_to(root) else str(target)


def discover(root: str | Path) -> Discovery:
    """Walk ``root`` (never following symlinks) and sort what is there into runs and eval sets."""
    root = Path(os.path.realpath(root))
    found = Discovery()
    if not os.path.lexists(root):
        raise InvalidInput("does not exist", path=root)
    try:
        if root.is_file():
            _classify_file(found, root.parent, root.name, root)
            return found
        track = _checkpoint_dir_track(root, root.name)
        if track is None and _is_evalset_dir(root):
            found.evalsets.append(root)
            return found
    except OSError as e:
        raise _cannot_enter(e, root) from None
    if track is not None:
        run_path = track.run_dir(root)
        found.runs.setdefault(run_path, _Run(run_path)).checkpoints.append((root, track))
        if run_path != root:
            return found

    def cannot_list(e: OSError) -> None:
        where = Path(e.filename or root)
        found.unreadable.append((where, str(_cannot_enter(e, where))))

    for dirpath, dirnames, filenames in os.walk(root, onerror=cannot_list, followlinks=False):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            p = here / d
            if d.startswith(".") or d == "__pycache__":
                continue
            if p.is_symlink():
                target = _outside(p, root)
                if target and _CKPT_DIR_RE.match(d):
                    found.runs.setdefault(here, _Run(here)).refused.append(
                        (p, tracks.DEFAULT_DIR, f"symlink leaves the scanned tree {root} (points to {target}); refused")
                    )
                continue
            try:
                track = _checkpoint_dir_track(p, d)
                evalset = track is None and _is_evalset_dir(p)
            except OSError as e:  # no search permission: one invalid entry, the scan goes on
                reason = str(_cannot_enter(e, p))
                if _CKPT_DIR_RE.match(d):
                    found.runs.setdefault(here, _Run(here)).refused.append((p, tracks.DEFAULT_DIR, reason))
                else:
                    found.unreadable.append((p, reason))
                continue
            if track is not None:
                run_path = track.run_dir(p)
                found.runs.setdefault(run_path, _Run(run_path)).checkpoints.append((p, track))
                if run_path == p:  # a run of its own (LLaVA's output folder): its checkpoints are inside
                    keep.append(d)
            elif evalset:
                found.evalsets.append(p)
            else:
                keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            try:
                _classify_file(found, here, f, root)
            except OSError as e:
                found.unreadable.append((here / f, str(as_invalid(e, here / f))))
    for run in found.runs.values():
        ts = run.path / TOKEN_SPACE_FILENAME
        if os.path.lexists(ts) and (run.checkpoints or run.refused):
            run.token_space = ts
    found.runs = {p: r for p, r in found.runs.items() if r.checkpoints or r.refused or r.eval_jsons}
    return found


def _cannot_enter(e: OSError, folder: Path) -> InvalidInput:
    """A folder the scan cannot list or look into (no read or search permission, an I/O error)."""
    return InvalidInput(f"folder cannot be listed or entered: {e.strerror or type(e).__name__}", path=folder)


def _classify_file(found: Discovery, here: Path, name: str, root: Path) -> None:
    p = here / name
    track = tracks.for_file(p)
    if track is not None:
        run_path = track.run_dir(p)
        run = found.runs.setdefault(run_path, _Run(run_path))
        target = _outside(p, root) if p.is_symlink() else None
        if target:
            run.refused.append((p, track, f"symlink leaves the scanned tree {root} (points to {target}); refused"))
        else:
            run.checkpoints.append((p, track))
    elif _EVAL_JSON_RE.match(name):
        found.runs.setdefault(here, _Run(here)).eval_jsons.append(p)


def _checkpoint_dir_track(p: Path, name: str) -> Track | None:
    """The track of folder ``p`` when it is a checkpoint: by its files, else by its name (but a
    Hugging Face Trainer's own full checkpoint, next to ours when the training callback saves
    rows beside it, is not one of ours, nor a folder holding another checkpoint's files)."""
    track = tracks.for_dir(p)
    if (
        track is None
        and _CKPT_DIR_RE.match(name)
        and not (p / _TRAINER_STATE).is_file()
        and not any(t.companion_dir(p) for t in tracks.ALL)
    ):
        return tracks.DEFAULT_DIR  # registered (invalid) with what is missing
    return track


def _is_evalset_dir(p: Path) -> bool:
    return (p / MANIFEST).is_file() and any(p.glob("*.parquet"))


# --- registration ---------------------------------------------------------------------------


class _Scanner:
    def __init__(self, registry: Registry, root: Path, summary: ScanSummary, progress: Progress | None):
        self.reg = registry
        self.root = root
        self.summary = summary
        self.progress = progress or (lambda _msg: None)
        self.index = registry.checkpoint_files_index(paths_under=str(root))
        self._ts_ids: dict[str, int] = {}
        self.known_evalsets = {e.path: e for e in registry.list_evalsets()}

    def token_space_id(self, ts: TokenSpace, path: str) -> int:
        if ts.abi_hash not in self._ts_ids:
            self._ts_ids[ts.abi_hash] = register_token_space(self.reg, ts, path).id
        return self._ts_ids[ts.abi_hash]

    def run(self, run: _Run) -> None:
        run_ts, run_ts_id = None, None
        if run.token_space is not None:
            try:
                run_ts = TokenSpace.load(run.token_space)
                run_ts_id = self.token_space_id(run_ts, str(run.token_space))
            except EvalboardError as e:
                self.invalid(str(run.token_space), str(e))
        letters = sorted({t.letter for _, t in run.checkpoints} | {t.letter for _, t, _ in run.refused})
        run_track = letters[0] if len(letters) == 1 else "mixed" if letters else "unknown"
        entity = self.reg.upsert_run(
            path=str(run.path),
            name=run.path.name,
            track=run_track,
            token_space_id=run_ts_id,
            token_space_path=str(run.token_space) if run.token_space else None,
        )
        self.summary.runs += 1
        work = sorted(run.checkpoints, key=lambda pt: (tracks.ALL.index(pt[1]), _step_key(pt[0])))
        changed = False
        for ckpt, track in work:
            try:
                changed |= (
                    self.checkpoint(entity.id, ckpt, track, run_ts if track.uses_token_space else None) is not None
                )
            except (InvalidInput, Incompatible, OSError) as e:  # one unreadable item never aborts the scan
                reason = str(as_invalid(e, ckpt) if isinstance(e, OSError) else e)
                changed |= self.record_invalid(entity.id, ckpt, track, reason, []) is not None
        for link, track, reason in run.refused:
            self.summary.found += 1
            self.record_invalid(entity.id, link, track, reason, [])
            changed = True
        if not (changed or run.eval_jsons):
            return  # an untouched run: nothing to recompute, no query
        # Derived from what is registered (unchanged checkpoints were skipped without a read).
        registered = self.reg.list_checkpoints(run_id=entity.id)
        if changed:
            bases = Counter(c.base_model for c in registered if c.status == "valid" and c.base_model)
            if bases:
                self.reg.upsert_run(path=str(run.path), name=run.path.name, base_model=bases.most_common(1)[0][0])
        steps = checkpoints_by_step(registered)
        for ej in sorted(run.eval_jsons):
            try:
                self.import_result(entity.id, ej, steps)
            except (InvalidInput, Incompatible, OSError) as e:
                self.invalid(str(ej), str(as_invalid(e, ej) if isinstance(e, OSError) else e))

    def checkpoint(self, run_id: int, path: Path, track: Track, run_ts: TokenSpace | None):
        self.summary.found += 1
        self.progress(str(path))
        entries = track.entries(path)
        names = sorted(entries)
        escaped = [n for n, e in entries.items() if e.is_symlink() and _outside(Path(e.path), self.root)]
        known = self.index.get(str(path))
        if known is not None and not escaped:
            files, _, status = known
            if _unchanged(files, entries):
                self.summary.unchanged += 1
                if status == "invalid":
                    self.invalid(str(path), self.reg.get_checkpoint(path=str(path)).reason or "invalid")
                return None
        if escaped:
            target = os.path.realpath(entries[escaped[0]].path)
            return self.record_invalid(
                run_id,
                path,
                track,
                f"{escaped[0]} is a symlink that leaves the scanned tree {self.root} (points to {target}); refused",
                [],
            )
        try:
            reg = track.register(path, run_token_space=run_ts)
        except EvalboardError as e:
            return self.record_invalid(run_id, path, track, str(e), names)
        ts_id = self.token_space_id(reg.token_space, reg.token_space_path or str(path)) if reg.token_space else None
        fields = dict(
            step=reg.step,
            track=track.letter,
            status="valid",
            reason=None,
            content_hash=reg.content_hash,
            files=reg.files,
            base_model=reg.base_model,
            token_space_id=ts_id,
            has_token_space=reg.token_space is not None,
            row_start=reg.row_start,
            row_end=reg.row_end,
            meta=dict(reg.meta),
        )
        ent, state = self.reg.upsert_checkpoint(path=str(path), run_id=run_id, **fields)
        self.count(state)
        return ent

    def record_invalid(self, run_id: int, path: Path, track: Track, reason: str, names: list[str]):
        records = _records(path, names)
        ent, state = self.reg.upsert_checkpoint(
            path=str(path),
            run_id=run_id,
            step=parse_step(path.name),
            track=track.letter,
            status="invalid",
            reason=reason,
            content_hash=content_hash(records) if records else None,
            files=[r.to_dict() for r in records],
            has_token_space=(TOKEN_SPACE_FILENAME in names),
            meta={},
        )
        self.count(state)
        self.invalid(str(path), reason)
        return ent

    def count(self, state: str) -> None:
        setattr(self.summary, state, getattr(self.summary, state) + 1)

    def invalid(self, path: str, reason: str) -> None:
        self.summary.invalid += 1
        self.summary.invalid_items.append({"path": path, "reason": reason})

    def import_result(self, run_id: int, path: Path, steps: dict[int, Any]) -> None:
        st = path.stat()
        imported = [
            r for r in self.reg.list_eval_results(run_ids=[run_id]) if r.source == "import" and r.path == str(path)
        ]
        if any(
            (r.extra or {}).get("size") == st.st_size and (r.extra or {}).get("mtime_ns") == st.st_mtime_ns
            for r in imported
        ):
            return  # same file as last time: not even re-hashed
        sha = sha256_file(path)
        if any((r.extra or {}).get("file_sha256") == sha for r in imported):
            return
        try:
            ej = EvalJson.read(path, sha256=sha)
        except EvalboardError as e:
            self.invalid(str(path), str(e))
            return
        if written_by_evaluator(self.reg, ej.result):
            return  # evalboard wrote this file itself: the result is already registered
        ck = steps.get(ej.result.step) if ej.result.step is not None else None
        check_attribution(ej, ck)  # computed on other content: an invalid item, never this checkpoint's result
        _, created = record_import(self.reg, ej, run_id=run_id, checkpoint=ck)
        self.summary.results_imported += created

    def evalset(self, path: Path) -> None:
        self.progress(str(path))
        known = self.known_evalsets.get(str(path))
        if known is not None and _files_unchanged(path, known.files):
            return  # registered and untouched: the Parquet files are not re-read
        try:
            _, state = register_evalset(self.reg, path)
        except EvalboardError as e:
            self.invalid(str(path), str(e))
            return
        if state == "new":
            self.summary.evalsets += 1


def _step_key(p: Path) -> tuple[int, str]:
    s = parse_step(p.name)
    return (s if s is not None else -1, p.name)


def _unchanged(files: list[dict[str, Any]], entries: Mapping[str, os.DirEntry[str] | FileEntry]) -> bool:
    """Same file names with the same size and mtime as registered: no need to read anything."""
    if sorted(f["name"] for f in files) != sorted(entries):
        return False
    for f in files:
        try:
            st = entries[f["name"]].stat()
        except OSError:
            return False
        if st.st_size != f["size"] or st.st_mtime_ns != f["mtime_ns"]:
            return False
    return True


def _records(path: Path, names: Iterable[str]) -> list[FileRecord]:
    out = []
    for n in names:  # relative to the folder, or to the folder holding a single-file checkpoint
        p = (path.parent if path.is_file() else path) / n
        try:
            st = p.stat()
            out.append(FileRecord(n, st.st_size, st.st_mtime_ns, sha256_file(p)))
        except (OSError, EvalboardError):  # unreadable or not a regular file: not fingerprinted
            continue
    return out


def _files_unchanged(base: Path, files: list[dict[str, Any]]) -> bool:
    """The eval set's top-level Parquet files and manifest are the registered ones, and every
    registered file (image files in sub-folders included) keeps its size and mtime."""
    try:
        with os.scandir(base) as it:
            entries = {e.name: e for e in it if e.is_file()}
    except OSError:
        return False
    names = {f["name"] for f in files}
    current = {n for n in entries if n.endswith(".parquet") or n == MANIFEST}
    if current != {n for n in names if "/" not in n and (n.endswith(".parquet") or n == MANIFEST)}:
        return False
    return _unchanged(files, {n: entries[n] if n in entries else FileEntry(base / n) for n in names})


def register_token_space(reg: Registry, ts: TokenSpace, path: str):
    return reg.upsert_token_space(
        abi_hash=ts.abi_hash,
        text_vocab_size=ts.text_vocab_size,
        vocab_size_total=ts.vocab_size_total,
        spec=ts.to_dict(),
        codec_versions=ts.codec_versions(),
        tokenizer_version=ts.tokenizer_version,
        path=path,
    )


def register_evalset(reg: Registry, path: str | Path, *, name: str | None = None, replace: bool = False):
    """Validate then register an eval set (and its inline token space). Nothing is written when
    validation fails."""
    es = EvalSet.load(path)
    if es.token_space is None and es.token_space_hash is not None:
        try:
            spec = reg.get_token_space(abi_hash=es.token_space_hash).spec
            es = EvalSet.load(
                path, token_space=TokenSpace.from_dict(spec, source=f"token space {es.token_space_hash[:12]}")
            )
        except EvalboardError:
            pass
    if es.token_space is not None:
        register_token_space(reg, es.token_space, f"{es.path}/{MANIFEST}")
    return reg.register_evalset(
        name=name or es.name,
        path=es.path,
        content_hash=es.content_hash,
        token_space_hash=es.token_space_hash,
        manifest=dict(es.manifest),
        tasks=es.tasks,
        n_examples=len(es.examples),
        files=[f.to_dict() for f in es.files],
        replace=replace,
    )


def scan(
    registry: Registry,
    paths: Iterable[str | Path],
    *,
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
) -> ScanSummary:
    """Register everything under ``paths``. Per-item failures become invalid entries, not exceptions."""
    summary = ScanSummary()
    discovered = [(Path(os.path.realpath(p)), discover(p)) for p in paths]
    if on_total:
        on_total(sum(d.n_items for _, d in discovered))
    for root, found in discovered:
        scanner = _Scanner(registry, root if os.path.isdir(root) else root.parent, summary, progress)
        for path, reason in found.unreadable:
            scanner.invalid(str(path), reason)
        for es in found.evalsets:
            scanner.evalset(es)
        for run in sorted(found.runs.values(), key=lambda r: str(r.path)):
            scanner.run(run)
    return summary

"""`evalboard scan`: find runs, checkpoints, token spaces, eval results and eval sets, register them.

What counts as what (README "Layout"):
- ``<run>/checkpoint_<step>/`` with ``trainable_rows.*`` → a Track B checkpoint of run ``<run>``;
- ``<run>/checkpoint_<step>.pt`` → a Track A (connector) checkpoint;
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from registry.connector import ConnectorCheckpoint
from registry.errors import EvalboardError, Incompatible, InvalidInput
from registry.eval_result import EvalResult
from registry.evalset import MANIFEST, EvalSet
from registry.files import FileRecord, content_hash
from registry.safeio import as_invalid, sha256_file
from registry.store import Registry
from registry.token_space import TokenSpace
from registry.trainable_rows import META_FILENAME, ROWS_FILENAMES, TOKEN_SPACE_FILENAME, TrainableRows, parse_step

__all__ = ["ScanSummary", "scan", "discover", "register_evalset", "register_token_space"]

_CKPT_DIR_RE = re.compile(r"^(?:checkpoint|ckpt)[-_]\d+$")
_CKPT_FILE_RE = re.compile(r"^(?:checkpoint|ckpt)[-_]\d+\.(?:pt|bin)$")
_EVAL_JSON_RE = re.compile(r"^eval_step\d+\.json$")
_B_FILES = (*ROWS_FILENAMES, META_FILENAME, TOKEN_SPACE_FILENAME)

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
            "found": self.found, "new": self.new, "updated": self.updated, "unchanged": self.unchanged,
            "invalid": self.invalid, "runs": self.runs, "evalsets": self.evalsets,
            "results_imported": self.results_imported, "invalid_items": self.invalid_items,
        }


@dataclass
class _Run:
    path: Path
    rows: list[Path] = field(default_factory=list)
    connectors: list[Path] = field(default_factory=list)
    eval_jsons: list[Path] = field(default_factory=list)
    token_space: Path | None = None
    escaped: list[tuple[Path, str]] = field(default_factory=list)  # symlinks leaving the tree


@dataclass
class Discovery:
    runs: dict[Path, _Run] = field(default_factory=dict)
    evalsets: list[Path] = field(default_factory=list)

    @property
    def n_items(self) -> int:
        return sum(len(r.rows) + len(r.connectors) + len(r.escaped) for r in self.runs.values()) + len(self.evalsets)


def _outside(path: Path, root: Path) -> str | None:
    """The symlink's target when it leaves the scanned tree, else None."""
    target = Path(os.path.realpath(path))
    return None if target.is_relative_to(root) else str(target)


def discover(root: str | Path) -> Discovery:
    """Walk ``root`` (never following symlinks) and sort what is there into runs and eval sets."""
    root = Path(os.path.realpath(root))
    found = Discovery()
    if not root.exists():
        raise InvalidInput("does not exist", path=root)
    if root.is_file():
        _classify_file(found, root.parent, root.name, root)
        return found
    if _is_checkpoint_dir(root, root.name):
        found.runs.setdefault(root.parent, _Run(root.parent)).rows.append(root)
        return found
    if _is_evalset_dir(root):
        found.evalsets.append(root)
        return found
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            p = here / d
            if d.startswith(".") or d == "__pycache__":
                continue
            if p.is_symlink():
                target = _outside(p, root)
                if target and _CKPT_DIR_RE.match(d):
                    found.runs.setdefault(here, _Run(here)).escaped.append(
                        (p, f"symlink leaves the scanned tree {root} (points to {target}); refused"))
                continue
            if _is_checkpoint_dir(p, d):
                found.runs.setdefault(here, _Run(here)).rows.append(p)
            elif _is_evalset_dir(p):
                found.evalsets.append(p)
            else:
                keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            _classify_file(found, here, f, root)
    for run in found.runs.values():
        ts = run.path / TOKEN_SPACE_FILENAME
        if ts.exists() and (run.rows or run.connectors or run.escaped):
            run.token_space = ts
    found.runs = {p: r for p, r in found.runs.items() if r.rows or r.connectors or r.escaped or r.eval_jsons}
    return found


def _classify_file(found: Discovery, here: Path, name: str, root: Path) -> None:
    p = here / name
    if _CKPT_FILE_RE.match(name):
        run = found.runs.setdefault(here, _Run(here))
        target = _outside(p, root) if p.is_symlink() else None
        if target:
            run.escaped.append((p, f"symlink leaves the scanned tree {root} (points to {target}); refused"))
        else:
            run.connectors.append(p)
    elif _EVAL_JSON_RE.match(name):
        found.runs.setdefault(here, _Run(here)).eval_jsons.append(p)


def _is_checkpoint_dir(p: Path, name: str) -> bool:
    if _CKPT_DIR_RE.match(name):
        return True
    return any((p / f).exists() for f in (*ROWS_FILENAMES, META_FILENAME))


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
        track = "mixed" if run.rows and run.connectors else "B" if run.rows else "A" if run.connectors else "unknown"
        entity = self.reg.upsert_run(path=str(run.path), name=run.path.name, track=track,
                                     token_space_id=run_ts_id,
                                     token_space_path=str(run.token_space) if run.token_space else None)
        self.summary.runs += 1
        work = [(p, "B") for p in sorted(run.rows, key=_step_key)] + \
            [(p, "A") for p in sorted(run.connectors, key=_step_key)]
        changed = False
        for ckpt, track in work:
            try:
                changed |= self.checkpoint(entity.id, ckpt, track, run_ts if track == "B" else None) is not None
            except (InvalidInput, Incompatible, OSError) as e:  # one unreadable item never aborts the scan
                reason = str(as_invalid(e, ckpt) if isinstance(e, OSError) else e)
                changed |= self.record_invalid(entity.id, ckpt, track, reason, []) is not None
        for link, reason in run.escaped:
            self.summary.found += 1
            self.record_invalid(entity.id, link, "A" if link.suffix in (".pt", ".bin") else "B", reason, [])
            changed = True
        if not (changed or run.eval_jsons):
            return  # an untouched run: nothing to recompute, no query
        # Derived from what is registered (unchanged checkpoints were skipped without a read).
        registered = self.reg.list_checkpoints(run_id=entity.id)
        if changed:
            bases = Counter(c.base_model for c in registered if c.status == "valid" and c.base_model)
            if bases:
                self.reg.upsert_run(path=str(run.path), name=run.path.name, base_model=bases.most_common(1)[0][0])
        steps: dict[int, Any] = {}
        for c in registered:  # a Track B checkpoint wins a step shared with a connector
            if c.step is not None and (c.step not in steps or c.track == "B"):
                steps[c.step] = c
        for ej in sorted(run.eval_jsons):
            try:
                self.import_result(entity.id, ej, steps)
            except (InvalidInput, Incompatible, OSError) as e:
                self.invalid(str(ej), str(as_invalid(e, ej) if isinstance(e, OSError) else e))

    def checkpoint(self, run_id: int, path: Path, track: str, run_ts: TokenSpace | None):
        self.summary.found += 1
        self.progress(str(path))
        entries = _entries(path, track)
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
            return self.record_invalid(run_id, path, track,
                                       f"{escaped[0]} is a symlink that leaves the scanned tree {self.root} "
                                       f"(points to {target}); refused", [])
        try:
            if track == "B":
                ck = TrainableRows.load(path, run_token_space=run_ts)
                ts_id = self.token_space_id(ck.token_space, str(path / TOKEN_SPACE_FILENAME)) if ck.token_space else None
                fields = dict(step=ck.step, track="B", status="valid", reason=None, content_hash=ck.content_hash,
                              files=[f.to_dict() for f in ck.files], base_model=ck.base_model,
                              token_space_id=ts_id, has_token_space=ck.token_space is not None,
                              row_start=ck.row_start, row_end=ck.row_end,
                              meta={"hidden_size": ck.hidden_size, "dtype": ck.dtype, "tied": ck.tied,
                                    "embed_key": ck.embed_key, "lm_head_key": ck.lm_head_key,
                                    "embed_shape": list(ck.embed.shape), "warnings": list(ck.warnings),
                                    "token_space_versions": _versions(ck.token_space),
                                    **{k: v for k, v in ck.meta.info.items() if _jsonable(v)}})
            else:
                ck = ConnectorCheckpoint.load(path)
                fields = dict(step=ck.step, track="A", status="valid", reason=None, content_hash=ck.content_hash,
                              files=[f.to_dict() for f in ck.files], base_model=ck.base_llm, token_space_id=None,
                              has_token_space=False, row_start=None, row_end=None,
                              meta={"vision_tower": ck.vision_tower, "n_params": ck.n_params,
                                    "has_optimizer": ck.has_optimizer,
                                    "modules": {m: {k: list(s) for k, s in p.items()} for m, p in ck.modules.items()},
                                    **dict(ck.meta)})
        except EvalboardError as e:
            return self.record_invalid(run_id, path, track, str(e), names)
        ent, state = self.reg.upsert_checkpoint(path=str(path), run_id=run_id, **fields)
        self.count(state)
        return ent

    def record_invalid(self, run_id: int, path: Path, track: str, reason: str, names: list[str]):
        records = _records(path, names)
        ent, state = self.reg.upsert_checkpoint(
            path=str(path), run_id=run_id, step=parse_step(path.name), track=track, status="invalid",
            reason=reason, content_hash=content_hash(records) if records else None,
            files=[r.to_dict() for r in records], has_token_space=(TOKEN_SPACE_FILENAME in names), meta={})
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
        imported = [r for r in self.reg.list_eval_results(run_ids=[run_id])
                    if r.source == "import" and r.path == str(path)]
        if any((r.extra or {}).get("size") == st.st_size and (r.extra or {}).get("mtime_ns") == st.st_mtime_ns
               for r in imported):
            return  # same file as last time: not even re-hashed
        sha = sha256_file(path)
        if any((r.extra or {}).get("file_sha256") == sha for r in imported):
            return
        try:
            res = EvalResult.load(path)
        except EvalboardError as e:
            self.invalid(str(path), str(e))
            return
        ck = steps.get(res.step) if res.step is not None else None
        evalset_hash = res.evalset.get("content_hash") if res.evalset else None
        ck_hash = (res.checkpoint or {}).get("content_hash")
        if ck_hash and evalset_hash and self.reg.find_eval_result(checkpoint_hash=ck_hash, evalset_hash=evalset_hash,
                                                                  source="evaluator"):
            return  # evalboard wrote this file itself: the result is already registered
        evalset_id = None
        if evalset_hash:
            try:
                evalset_id = self.reg.get_evalset(content_hash=evalset_hash).id
            except EvalboardError:
                evalset_id = None
        self.reg.add_eval_result(
            checkpoint_id=ck.id if ck is not None else None, run_id=run_id, evalset_id=evalset_id,
            evalset_hash=evalset_hash, checkpoint_hash=ck.content_hash if ck is not None else None,
            step=res.step, source="import", loss_all=res.loss_all, metrics=res.metrics(), path=str(path),
            extra={"file_sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                   "evalset_name": (res.evalset or {}).get("name")},
        )
        self.summary.results_imported += 1

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


class _FileEntry:
    """The bits of os.DirEntry we use, for a single-file (Track A) checkpoint."""

    def __init__(self, path: Path):
        self.name, self.path = path.name, str(path)

    def is_symlink(self) -> bool:
        return os.path.islink(self.path)

    def stat(self) -> os.stat_result:
        return os.stat(self.path)


def _entries(path: Path, track: str) -> dict[str, Any]:
    """The checkpoint's recognised files, from one directory listing (a rescan's only reads)."""
    if track == "A" or not path.is_dir():
        return {path.name: _FileEntry(path)} if os.path.lexists(path) else {}
    with os.scandir(path) as it:
        return {e.name: e for e in it if e.name in _B_FILES}


def _unchanged(files: list[dict[str, Any]], entries: dict[str, os.DirEntry]) -> bool:
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
    for n in names:
        p = path if path.is_file() else path / n
        try:
            st = p.stat()
            out.append(FileRecord(n, st.st_size, st.st_mtime_ns, sha256_file(p)))
        except (OSError, EvalboardError):  # unreadable or not a regular file: not fingerprinted
            continue
    return out


def _versions(ts: TokenSpace | None) -> dict[str, Any] | None:
    """Codec/tokenizer versions of this very file: token-space rows are shared per ABI hash, so
    versions (which are not part of the ABI) must be kept with whoever shipped them."""
    if ts is None:
        return None
    tok = "@".join(x for x in (ts.tokenizer_name, ts.tokenizer_version) if x) or None
    return {"codecs": ts.codec_versions(), "tokenizer": tok}


def _files_unchanged(base: Path, files: list[dict[str, Any]]) -> bool:
    try:
        with os.scandir(base) as it:
            entries = {e.name: e for e in it if e.is_file()}
    except OSError:
        return False
    names = {f["name"] for f in files}
    current = {n for n in entries if n.endswith(".parquet") or n == MANIFEST}
    return current == names and _unchanged(files, {n: entries[n] for n in names})


def _jsonable(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool)) or v is None


def register_token_space(reg: Registry, ts: TokenSpace, path: str):
    return reg.upsert_token_space(abi_hash=ts.abi_hash, text_vocab_size=ts.text_vocab_size,
                                  vocab_size_total=ts.vocab_size_total, spec=ts.to_dict(),
                                  codec_versions=ts.codec_versions(), tokenizer_version=ts.tokenizer_version,
                                  path=path)


def register_evalset(reg: Registry, path: str | Path, *, name: str | None = None, replace: bool = False):
    """Validate then register an eval set (and its inline token space). Nothing is written when
    validation fails."""
    es = EvalSet.load(path)
    if es.token_space is None:
        try:
            spec = reg.get_token_space(abi_hash=es.token_space_hash).spec
            es = EvalSet.load(path, token_space=TokenSpace.from_dict(spec, source=f"token space {es.token_space_hash[:12]}"))
        except EvalboardError:
            pass
    if es.token_space is not None:
        register_token_space(reg, es.token_space, f"{es.path}/{MANIFEST}")
    return reg.register_evalset(name=name or es.name, path=es.path, content_hash=es.content_hash,
                                token_space_hash=es.token_space_hash, manifest=dict(es.manifest), tasks=es.tasks,
                                n_examples=len(es.examples), files=[f.to_dict() for f in es.files],
                                replace=replace)


def scan(registry: Registry, paths: Iterable[str | Path], *, progress: Progress | None = None,
         on_total: Callable[[int], None] | None = None) -> ScanSummary:
    """Register everything under ``paths``. Per-item failures become invalid entries, not exceptions."""
    summary = ScanSummary()
    discovered = [(Path(os.path.realpath(p)), discover(p)) for p in paths]
    if on_total:
        on_total(sum(d.n_items for _, d in discovered))
    for root, found in discovered:
        scanner = _Scanner(registry, root if root.is_dir() else root.parent, summary, progress)
        for es in found.evalsets:
            scanner.evalset(es)
        for run in sorted(found.runs.values(), key=lambda r: str(r.path)):
            scanner.run(run)
    return summary

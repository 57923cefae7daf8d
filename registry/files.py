"""File fingerprints: what registration records about each file, and the content hash built on them.

Size + mtime tell a rescan that nothing changed without reading a byte of tensor data; the
sha256 proves, before an evaluation, that the bytes are still the ones we registered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from registry.errors import IntegrityError
from registry.safeio import sha256_file

__all__ = ["FileRecord", "file_records", "content_hash", "verify_files"]


@dataclass(frozen=True, slots=True)
class FileRecord:
    name: str  # relative to the checkpoint folder (or the file name for a single-file checkpoint)
    size: int
    mtime_ns: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FileRecord:
        return cls(str(d["name"]), int(d["size"]), int(d["mtime_ns"]), str(d["sha256"]))


def file_records(base: Path, paths: Iterable[Path]) -> list[FileRecord]:
    out = []
    for p in sorted(paths):
        st = p.stat()
        name = p.name if p.parent == base or base.is_file() else str(p.relative_to(base))
        out.append(FileRecord(name, st.st_size, st.st_mtime_ns, sha256_file(p)))
    return out


def content_hash(records: Iterable[FileRecord]) -> str:
    """sha256 over sorted ``name:sha256`` lines: renaming the folder keeps it, editing a byte changes it."""
    h = hashlib.sha256(b"evalboard-content/1\n")
    for r in sorted(records, key=lambda r: r.name):
        h.update(f"{r.name}:{r.sha256}\n".encode())
    return h.hexdigest()


def _resolve(base: Path, name: str) -> Path:
    return base if base.is_file() else base / name


def verify_files(base: str | Path, records: Iterable[Mapping[str, Any] | FileRecord]) -> None:
    """Re-hash each registered file; raise IntegrityError naming the first one that changed."""
    base = Path(base)
    for r in records:
        r = r if isinstance(r, FileRecord) else FileRecord.from_dict(r)
        path = _resolve(base, r.name)
        if not path.exists():
            raise IntegrityError(f"registered file {r.name} is missing; rescan with `evalboard scan`", path=path)
        actual = sha256_file(path)
        if actual != r.sha256:
            raise IntegrityError(
                f"changed on disk since registration (sha256 {actual[:12]}…, registered {r.sha256[:12]}…); "
                "refusing to evaluate it; rescan with `evalboard scan` if the change is intended",
                path=path,
            )


def read_model_config(model_dir: str | Path | None) -> dict[str, Any] | None:
    """A model folder's ``config.json`` as a dict (no weights read), or None when it is missing or
    unreadable: callers use it for optional checks."""
    import json

    if not model_dir:
        return None
    try:
        data = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None

"""`token_space.json`: the ABI of an extended vocabulary.

A token space says how many rows belong to the base text vocabulary, how many rows the extended
model has in total, and which contiguous id range each added modality (audio codec tokens, image
tokens, ...) occupies. Checkpoints, eval sets and training runs must agree on it, so we hash it.

Schema accepted (README "Token space"): ``text_vocab_size``, ``vocab_size_total``, ``modalities``
(name -> ``{"start", "end"}`` with ``end`` exclusive, or ``[start, end]``, or ``{"start", "size"}``),
optional ``special_tokens`` (name -> id), ``pad_token_id``, ``tokenizer`` and ``codecs`` versions.

Two hashes:
- ``abi_hash``: sha256 of the canonical JSON of the fields that define the ABI (sizes, ranges,
  special ids). Key order, whitespace and informational fields do not change it.
- ``file_sha256``: the raw bytes of the file, to notice any edit at all.
Codec/tokenizer versions are recorded and audited separately (a version bump is a warning, a
range change is an error).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.errors import InvalidInput
from registry.safeio import MAX_NAME_CHARS, canonical_json, check_int, check_text, read_json, sha256_file

__all__ = ["ModalityRange", "TokenSpace", "TokenSpaceChange", "ABI_VERSION"]

ABI_VERSION = "evalboard-token-space-abi/1"

_ALIASES: dict[str, tuple[str, ...]] = {
    "text_vocab_size": ("text_vocab_size", "text_vocab", "n_text_tokens", "base_vocab_size"),
    "vocab_size_total": ("vocab_size_total", "total_vocab_size", "vocab_total", "vocab_size"),
    "modalities": ("modalities", "modality_ranges", "ranges"),
    "special_tokens": ("special_tokens", "special_ids", "specials"),
    "pad_token_id": ("pad_token_id", "pad_id"),
    "tokenizer": ("tokenizer", "tokenizer_version"),
    "codecs": ("codecs", "codec_versions"),
}
# Fields we keep but that never affect compatibility.
_INFORMATIONAL = {"schema_version", "version", "name", "description", "created_at", "notes", "meta", "metadata"}
_RANGE_KEYS = {"start", "end", "stop", "size", "offset", "codec", "codec_version", "description", "name"}


@dataclass(frozen=True, slots=True)
class ModalityRange:
    """Rows ``[start, end)`` reserved for one modality."""

    name: str
    start: int
    end: int
    codec: str | None = None
    codec_version: str | None = None

    @property
    def size(self) -> int:
        return self.end - self.start

    def describe(self) -> str:
        """Inclusive bounds, as people write them: ``151936–168319``."""
        return f"{self.start}–{self.end - 1}"


@dataclass(frozen=True, slots=True)
class TokenSpaceChange:
    """One structural difference between two token spaces."""

    field: str  # e.g. "range:image", "vocab_size_total", "codec:audio", "tokenizer"
    severity: str  # "error" (ABI differs) or "warning" (versions differ)
    this: Any
    other: Any
    message: str


@dataclass(frozen=True)
class TokenSpace:
    text_vocab_size: int
    vocab_size_total: int
    modalities: tuple[ModalityRange, ...]
    special_tokens: Mapping[str, int] = field(default_factory=dict)
    pad_token_id: int | None = None
    tokenizer_name: str | None = None
    tokenizer_version: str | None = None
    info: Mapping[str, Any] = field(default_factory=dict)
    path: str | None = None
    file_sha256: str | None = None

    # --- construction ---------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> TokenSpace:
        path = Path(path)
        data = read_json(path)
        ts = cls.from_dict(data, source=path)
        object.__setattr__(ts, "path", str(path))
        object.__setattr__(ts, "file_sha256", sha256_file(path))
        return ts

    # seed-compatible name
    load_json = load

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | Path | None = None) -> TokenSpace:
        where = str(source) if source is not None else "token space"
        fields = _resolve_aliases(data, where)
        for required in ("text_vocab_size", "vocab_size_total", "modalities"):
            if required not in fields:
                names = " / ".join(_ALIASES[required])
                raise InvalidInput(f"missing field {required!r} (accepted names: {names})", path=where)
        text = _int(fields["text_vocab_size"], "text_vocab_size", where)
        total = _int(fields["vocab_size_total"], "vocab_size_total", where)
        codecs = _parse_codecs(fields.get("codecs"), where)
        modalities = _parse_modalities(fields["modalities"], codecs, where)
        specials = _parse_specials(fields.get("special_tokens"), where)
        pad = fields.get("pad_token_id")
        pad = _int(pad, "pad_token_id", where) if pad is not None else None
        tok_name, tok_version = _parse_tokenizer(fields.get("tokenizer"), where)
        info = {k: v for k, v in data.items() if k in _INFORMATIONAL}
        ts = cls(text, total, modalities, specials, pad, tok_name, tok_version, info)
        ts.validate(where)
        return ts

    def validate(self, where: str = "token space") -> None:
        """Ranges inside ``[text_vocab_size, vocab_size_total)``, no overlaps, ids in the vocabulary."""
        if self.text_vocab_size <= 0:
            raise InvalidInput(f"text_vocab_size must be positive, got {self.text_vocab_size}", path=where)
        if self.vocab_size_total < self.text_vocab_size:
            raise InvalidInput(
                f"vocab_size_total {self.vocab_size_total} is smaller than text_vocab_size {self.text_vocab_size}",
                path=where,
            )
        if not self.modalities:
            raise InvalidInput("defines no modality ranges", path=where)
        for r in self.modalities:
            if r.start >= r.end:
                raise InvalidInput(f"{r.name} range [{r.start}, {r.end}) is empty or reversed", path=where)
            if r.start < self.text_vocab_size:
                raise InvalidInput(
                    f"{r.name} range {r.describe()} starts inside the text vocabulary (text_vocab_size {self.text_vocab_size})",
                    path=where,
                )
            if r.end > self.vocab_size_total:
                raise InvalidInput(
                    f"{r.name} range {r.describe()} runs past vocab_size_total {self.vocab_size_total}",
                    path=where,
                )
        ordered = sorted(self.modalities, key=lambda r: r.start)
        for a, b in zip(ordered, ordered[1:]):
            if b.start < a.end:
                raise InvalidInput(f"{a.name} range {a.describe()} overlaps {b.name} range {b.describe()}", path=where)
        for name, tid in self.special_tokens.items():
            if not 0 <= tid < self.vocab_size_total:
                raise InvalidInput(
                    f"special token {name!r} id {tid} is outside [0, {self.vocab_size_total})", path=where
                )
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size_total:
            raise InvalidInput(f"pad_token_id {self.pad_token_id} is outside [0, {self.vocab_size_total})", path=where)

    # --- identity -------------------------------------------------------------------------

    def abi_payload(self) -> dict[str, Any]:
        """Only what decides whether token ids mean the same thing."""
        return {
            "abi": ABI_VERSION,
            "text_vocab_size": self.text_vocab_size,
            "vocab_size_total": self.vocab_size_total,
            "modalities": sorted([r.name, r.start, r.end] for r in self.modalities),
            "special_tokens": dict(sorted(self.special_tokens.items())),
            "pad_token_id": self.resolved_pad_id(),
        }

    @property
    def abi_hash(self) -> str:
        return hashlib.sha256(canonical_json(self.abi_payload()).encode()).hexdigest()

    @property
    def short_hash(self) -> str:
        return self.abi_hash[:12]

    def codec_versions(self) -> dict[str, str | None]:
        return {r.name: _join_version(r.codec, r.codec_version) for r in self.modalities}

    def resolved_pad_id(self) -> int | None:
        """``pad_token_id``, else a special token named pad/<pad>/<|pad|>, else None."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        for name in ("pad", "<pad>", "<|pad|>", "pad_token", "<|endoftext|>"):
            if name in self.special_tokens:
                return self.special_tokens[name]
        return None

    def modality(self, name: str) -> ModalityRange | None:
        return next((r for r in self.modalities if r.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        """The canonical schema (what `save` writes and what the store keeps)."""
        return {
            "text_vocab_size": self.text_vocab_size,
            "vocab_size_total": self.vocab_size_total,
            "modalities": {
                r.name: {
                    "start": r.start,
                    "end": r.end,
                    **({"codec": r.codec} if r.codec else {}),
                    **({"codec_version": r.codec_version} if r.codec_version else {}),
                }
                for r in sorted(self.modalities, key=lambda r: r.start)
            },
            "special_tokens": dict(self.special_tokens),
            "pad_token_id": self.pad_token_id,
            "tokenizer": {"name": self.tokenizer_name, "version": self.tokenizer_version},
            **dict(self.info),
        }

    def save(self, path: str | Path) -> Path:
        """Write ``token_space.json`` atomically (`registry.atomic.write_file`)."""
        import json

        from registry.atomic import write_file

        return write_file(path, json.dumps(self.to_dict(), indent=2) + "\n")

    # --- comparison -----------------------------------------------------------------------

    def diff(self, other: TokenSpace, this_label: str = "this", other_label: str = "other") -> list[TokenSpaceChange]:
        """Every structural difference, each with a sentence naming both sides."""
        changes: list[TokenSpaceChange] = []

        def add(fld: str, severity: str, a: Any, b: Any, msg: str) -> None:
            changes.append(TokenSpaceChange(fld, severity, a, b, msg))

        for name in ("text_vocab_size", "vocab_size_total"):
            a, b = getattr(self, name), getattr(other, name)
            if a != b:
                add(name, "error", a, b, f"{name} {a} in {this_label}, {b} in {other_label}")
        mine = {r.name: r for r in self.modalities}
        theirs = {r.name: r for r in other.modalities}
        for name in sorted(mine.keys() | theirs.keys()):
            a, b = mine.get(name), theirs.get(name)
            if a is None or b is None:
                present, absent = (this_label, other_label) if a else (other_label, this_label)
                r = a or b
                assert r is not None  # `name` is a range of one of the two
                add(
                    f"range:{name}",
                    "error",
                    a and (a.start, a.end),
                    b and (b.start, b.end),
                    f"{name} range {r.describe()} in {present}, absent in {absent}",
                )
                continue
            if (a.start, a.end) != (b.start, b.end):
                add(
                    f"range:{name}",
                    "error",
                    (a.start, a.end),
                    (b.start, b.end),
                    f"{name} range {a.describe()} ({a.size} rows) in {this_label}, "
                    f"{b.describe()} ({b.size} rows) in {other_label}",
                )
            va, vb = _join_version(a.codec, a.codec_version), _join_version(b.codec, b.codec_version)
            if va != vb:
                add(
                    f"codec:{name}",
                    "warning",
                    va,
                    vb,
                    f"{name} codec {va or 'unrecorded'} in {this_label}, {vb or 'unrecorded'} in {other_label}",
                )
        sa, sb = dict(self.special_tokens), dict(other.special_tokens)
        for name in sorted(sa.keys() | sb.keys()):
            if sa.get(name) != sb.get(name):
                add(
                    f"special:{name}",
                    "error",
                    sa.get(name),
                    sb.get(name),
                    f"special token {name!r} id {sa.get(name)} in {this_label}, {sb.get(name)} in {other_label}",
                )
        pa, pb = self.resolved_pad_id(), other.resolved_pad_id()
        if pa != pb:
            add("pad_token_id", "error", pa, pb, f"pad id {pa} in {this_label}, {pb} in {other_label}")
        ta = _join_version(self.tokenizer_name, self.tokenizer_version)
        tb = _join_version(other.tokenizer_name, other.tokenizer_version)
        if ta != tb:
            add(
                "tokenizer",
                "warning",
                ta,
                tb,
                f"tokenizer {ta or 'unrecorded'} in {this_label}, {tb or 'unrecorded'} in {other_label}",
            )
        return changes


# --- parsing helpers ------------------------------------------------------------------------


def _resolve_aliases(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    known = set(_INFORMATIONAL)
    for canonical, names in _ALIASES.items():
        known.update(names)
        present = [n for n in names if n in data]
        if len(present) > 1 and canonical != "tokenizer":
            raise InvalidInput(f"fields {present} are aliases of {canonical!r}; give only one", path=where)
        if present:
            out[canonical] = data[present[0]]
    unexpected = sorted(set(data) - known)
    if unexpected:
        raise InvalidInput(
            f"unexpected field {unexpected[0]!r}; known fields: "
            + ", ".join(sorted(_ALIASES))
            + ", and informational "
            + ", ".join(sorted(_INFORMATIONAL)),
            path=where,
        )
    if "tokenizer" in out and "tokenizer_version" in data and "tokenizer" in data:
        out["tokenizer"] = {"name": data["tokenizer"], "version": data["tokenizer_version"]}
    return out


def _int(value: Any, name: str, where: str) -> int:
    """A token id or size: an integer (a float such as 256.0 is refused, never truncated) that a
    registry column can hold."""
    return check_int(value, name, where)


def _parse_modalities(
    raw: Any, codecs: dict[str, tuple[str | None, str | None]], where: str
) -> tuple[ModalityRange, ...]:
    if isinstance(raw, list):
        items = []
        for i, entry in enumerate(raw):
            if not isinstance(entry, dict) or "name" not in entry:
                raise InvalidInput(f"modalities[{i}] must be an object with a 'name'", path=where)
            items.append((check_text(entry["name"], f"modalities[{i}].name", where), entry))
    elif isinstance(raw, dict):
        items = list(raw.items())
    else:
        raise InvalidInput("modalities must be an object of name -> {start, end}", path=where)
    out = []
    for name, spec in items:
        check_text(name, "modality name", where)
        start, end, codec, version = _parse_range(name, spec, where)
        c_name, c_version = codecs.get(name, (None, None))
        out.append(ModalityRange(name, start, end, codec or c_name, version or c_version))
    return tuple(out)


def _parse_range(name: str, spec: Any, where: str) -> tuple[int, int, str | None, str | None]:
    label = f"modality {name!r}"
    if isinstance(spec, list):
        if len(spec) != 2:
            raise InvalidInput(f"{label} must be [start, end], got {spec!r}", path=where)
        return _int(spec[0], f"{label} start", where), _int(spec[1], f"{label} end", where), None, None
    if not isinstance(spec, dict):
        raise InvalidInput(f"{label} must be an object with start and end", path=where)
    unexpected = sorted(set(spec) - _RANGE_KEYS)
    if unexpected:
        raise InvalidInput(
            f"{label} has unexpected field {unexpected[0]!r} (known: {', '.join(sorted(_RANGE_KEYS))})", path=where
        )
    start_key = "start" if "start" in spec else "offset" if "offset" in spec else None
    if start_key is None:
        raise InvalidInput(f"{label} is missing field 'start'", path=where)
    start = _int(spec[start_key], f"{label} start", where)
    end_key = "end" if "end" in spec else "stop" if "stop" in spec else None
    end = _int(spec[end_key], f"{label} end", where) if end_key else None
    if "size" in spec:
        size = _int(spec["size"], f"{label} size", where)
        if end is not None and end - start != size:
            raise InvalidInput(f"{label} size {size} disagrees with [start, end) = [{start}, {end})", path=where)
        end = start + size
    if end is None:
        raise InvalidInput(f"{label} is missing field 'end' (or 'size')", path=where)
    codec = _opt_str(spec.get("codec"), f"{label} codec", where)
    version = _opt_str(spec.get("codec_version"), f"{label} codec_version", where)
    return start, end, (codec or None), (version or None)


def _parse_codecs(raw: Any, where: str) -> dict[str, tuple[str | None, str | None]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput("codecs must be an object of modality -> version", path=where)
    out: dict[str, tuple[str | None, str | None]] = {}
    for name, spec in raw.items():
        if isinstance(spec, str):
            out[name] = (None, check_text(spec, f"codecs[{name!r}]", where))
        elif isinstance(spec, dict):
            out[name] = (
                _opt_str(spec.get("name"), f"codecs[{name!r}].name", where),
                _opt_str(spec.get("version"), f"codecs[{name!r}].version", where),
            )
        else:
            raise InvalidInput(f"codecs[{name!r}] must be a string or {{name, version}}", path=where)
    return out


def _parse_specials(raw: Any, where: str) -> dict[str, int]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput("special_tokens must be an object of name -> id", path=where)
    return {check_text(k, "special token name", where): _int(v, f"special token {k!r}", where) for k, v in raw.items()}


def _parse_tokenizer(raw: Any, where: str) -> tuple[str | None, str | None]:
    if raw is None:
        return None, None
    if isinstance(raw, str):
        return None, check_text(raw, "tokenizer version", where)
    if isinstance(raw, dict):
        return (
            _opt_str(raw.get("name"), "tokenizer.name", where),
            _opt_str(raw.get("version"), "tokenizer.version", where),
        )
    raise InvalidInput("tokenizer must be a version string or {name, version}", path=where)


def _opt_str(v: Any, name: str = "value", where: str | None = None) -> str | None:
    """A name or version: a string (or a number such as 2.1, kept as written), at most
    MAX_NAME_CHARS long; a list or an object is refused rather than stringified."""
    if v is None:
        return None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    return check_text(v, name, where, max_chars=MAX_NAME_CHARS, allow_empty=True)


def _join_version(name: str | None, version: str | None) -> str | None:
    if name and version:
        return f"{name}@{version}"
    return name or version

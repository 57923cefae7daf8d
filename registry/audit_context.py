"""What the audit reads, loaded once: below `registry.audit` and the tracks' audit rules
(`registry/tracks/*`), so a track depends only on what lies beneath it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from registry.entities import CheckpointEntity, EvalSetEntity, RunEntity, TokenSpaceEntity
from registry.files import read_model_config
from registry.store import Registry
from registry.token_space import TokenSpace

__all__ = ["AuditContext", "with_versions", "base_embedding_rows"]


def _space(ts: TokenSpaceEntity | None) -> TokenSpace | None:
    return TokenSpace.from_dict(ts.spec, source=ts.first_path) if ts is not None else None


def with_versions(space: TokenSpace, codecs: Mapping[str, Any] | None, tokenizer: str | None) -> TokenSpace:
    """``space`` with the codec/tokenizer versions a particular file recorded (token-space rows
    are shared per ABI hash, so the registered spec carries only the first file's versions)."""
    if codecs:
        mods = tuple(
            dataclasses.replace(r, codec=None, codec_version=codecs.get(r.name)) if r.name in codecs else r
            for r in space.modalities
        )
        space = dataclasses.replace(space, modalities=mods)
    if tokenizer is not None:
        space = dataclasses.replace(space, tokenizer_name=None, tokenizer_version=tokenizer)
    return space


class AuditContext:
    """Everything registered, loaded once: what the audit and each track's audit rules read."""

    def __init__(self, reg: Registry, models: Mapping[str, str] | None):
        self.reg = reg
        self.models = dict(models or {})
        self.spaces = {t.id: t for t in reg.list_token_spaces()}
        self.by_hash = {t.abi_hash: t for t in self.spaces.values()}
        self.runs = {r.id: r for r in reg.list_runs()}
        self.checkpoints = reg.list_checkpoints()
        self.evalsets = reg.list_evalsets()
        self._parsed: dict[int, TokenSpace | None] = {}
        self._files: dict[str, TokenSpace | None] = {}

    def space(self, ts_id: int | None) -> TokenSpace | None:
        if ts_id is None:
            return None
        if ts_id not in self._parsed:
            self._parsed[ts_id] = _space(self.spaces.get(ts_id))
        return self._parsed[ts_id]

    def evalset_space(self, es: EvalSetEntity) -> TokenSpace | None:
        manifest = es.manifest or {}
        inline = manifest.get("token_space")
        if isinstance(inline, dict):
            return TokenSpace.from_dict(inline, source=es.path)
        ts = self.by_hash.get(es.token_space_hash or "")
        space = self.space(ts.id) if ts else None
        if space is not None and (manifest.get("codec_versions") or manifest.get("tokenizer_version")):
            codecs = manifest.get("codec_versions") if isinstance(manifest.get("codec_versions"), dict) else None
            space = with_versions(space, codecs, manifest.get("tokenizer_version"))
        return space

    def own_space(self, ck: CheckpointEntity) -> TokenSpace | None:
        """The checkpoint's shipped token space, with the versions its own file recorded."""
        space = self.space(ck.token_space_id)
        versions = (ck.meta or {}).get("token_space_versions")
        if space is not None and isinstance(versions, dict):
            space = with_versions(space, versions.get("codecs"), versions.get("tokenizer"))
        return space

    def run_space(self, run: RunEntity | None) -> TokenSpace | None:
        """The run-level token_space.json as it is on disk (for its versions), else as registered."""
        if run is None or run.token_space_id is None:
            return None
        if run.token_space_path and run.token_space_path not in self._files:
            try:
                self._files[run.token_space_path] = TokenSpace.load(run.token_space_path)
            except Exception:  # noqa: BLE001 - moved or broken since the scan: use the registered spec
                self._files[run.token_space_path] = None
        on_disk = self._files.get(run.token_space_path or "")
        if on_disk is not None and on_disk.abi_hash == self.spaces[run.token_space_id].abi_hash:
            return on_disk
        return self.space(run.token_space_id)

    def checkpoint_space(self, ck: CheckpointEntity) -> tuple[TokenSpace | None, str]:
        """The checkpoint's own token space, else its run's (the seed allows either)."""
        if ck.token_space_id is not None:
            return self.own_space(ck), "checkpoint"
        run = self.runs.get(ck.run_id)
        if run is not None and run.token_space_id is not None:
            return self.run_space(run), "run"
        return None, "none"


def base_embedding_rows(model_dir: str | Path) -> int | None:
    """The base model's embedding rows from its config.json (no weights read)."""
    data = read_model_config(model_dir)
    if data is None:
        return None
    data = data.get("text_config", data)
    v = data.get("vocab_size")
    return v if isinstance(v, int) else None

"""`scan`: discovery, idempotent registration by content, invalid entries, cheap rescans, and
the sha256 check that catches a file changed behind the registry's back."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

import registry.connector
import registry.files
import registry.safeio
import registry.scanner
import registry.trainable_rows
from evalboard.fixtures import Workspace
from registry.audit import audit
from registry.connector import ConnectorCheckpoint
from registry.errors import IntegrityError
from registry.files import verify_files
from registry.scanner import discover, scan
from registry.trainable_rows import TrainableRows
from tests._infra.workspace import write_rows

B_RUN, WIDE_RUN, A_RUN = "stage3_token_lm_iter5", "stage3_token_lm_wide_image", "stage1_align_trial"
TENSOR_SUFFIXES = (".pt", ".bin", ".safetensors")


def _all_checkpoints(ws: Workspace) -> set[str]:
    return {str(p) for paths in ws.checkpoints.values() for p in paths}


def forbid_tensor_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make every way of reading a checkpoint's tensor bytes fail the test; returns the files hashed."""
    hashed: list[str] = []

    def no_load(*args, **kwargs):
        raise AssertionError(f"a rescan loaded a checkpoint: {args}")

    real_sha = registry.safeio.sha256_file

    def guarded_sha(path):
        assert not str(path).endswith(TENSOR_SUFFIXES), f"a rescan hashed tensor file {path}"
        hashed.append(str(path))
        return real_sha(path)

    monkeypatch.setattr(TrainableRows, "load", classmethod(no_load))
    monkeypatch.setattr(ConnectorCheckpoint, "load", classmethod(no_load))
    for module in (registry.safeio, registry.trainable_rows, registry.connector):
        monkeypatch.setattr(module, "load_tensors", no_load)
    for module in (registry.scanner, registry.files):
        monkeypatch.setattr(module, "sha256_file", guarded_sha)
    return hashed


def test_the_standard_tree(session_ws: Workspace, registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 2 "Done when": two Track B runs (one in another token space), a Track A run and a
    broken checkpoint: all registered, the broken one invalid with its reason, the audit names
    the mismatch exactly, and a second scan finds nothing new without reading a tensor."""
    ws = session_ws
    summary = scan(registry, [ws.root])
    assert summary.to_dict() | {"invalid_items": None} == {
        "found": 10,
        "new": 10,
        "updated": 0,
        "unchanged": 0,
        "invalid": 1,
        "runs": 3,
        "evalsets": 1,
        "results_imported": 2,
        "invalid_items": None,
    }

    checkpoints = {c.path: c for c in registry.list_checkpoints()}
    assert set(checkpoints) == _all_checkpoints(ws)
    (broken,) = ws.broken
    bad = checkpoints[str(broken)]
    assert bad.status == "invalid" and bad.step == 400
    assert (
        bad.reason
        == f"{broken / 'trainable_rows.pt'}: is truncated or corrupt (the zip archive has no central directory)"
    )
    assert summary.invalid_items == [{"path": str(broken), "reason": bad.reason}]
    assert all(c.status == "valid" for p, c in checkpoints.items() if p != str(broken))
    tracks = {Path(p).parent.name: c.track for p, c in checkpoints.items()}
    assert tracks == {B_RUN: "B", WIDE_RUN: "B", A_RUN: "A"}
    assert {c.base_model for c in checkpoints.values() if c.status == "valid"} == {ws.base_model}

    runs = {r.name: r for r in registry.list_runs()}
    assert set(runs) == {B_RUN, WIDE_RUN, A_RUN}
    spaces = {t.id: t.abi_hash for t in registry.list_token_spaces()}
    assert spaces[runs[B_RUN].token_space_id] == ws.token_space.abi_hash
    assert spaces[runs[WIDE_RUN].token_space_id] == ws.other_token_space.abi_hash
    assert runs[A_RUN].token_space_id is None

    mismatches = [f for f in audit(registry) if f.code == "token-space-mismatch"]
    assert len(mismatches) == 1
    (f,) = mismatches
    assert (f.severity, f.run, f.evalset) == ("error", WIDE_RUN, "synthetic-a2t-i2t")
    assert (
        f"image range 320–415 (96 rows) in {WIDE_RUN}/checkpoint_100 (checkpoint token space), "
        "320–383 (64 rows) in eval set 'synthetic-a2t-i2t'"
    ) in f.message
    assert f"vocab_size_total 416 in {WIDE_RUN}/checkpoint_100 (checkpoint token space), 384 in eval set" in f.message
    assert "(and 2 more checkpoints of this run, steps 100–300)" in f.message
    assert f.detail["changes"] == ["vocab_size_total", "range:image"]

    def state():
        return [(c.id, c.path, c.content_hash, c.status, c.reason) for c in registry.list_checkpoints()]

    before, before_counts = state(), registry.counts()
    hashed = forbid_tensor_reads(monkeypatch)
    again = scan(registry, [ws.root])
    assert (again.found, again.new, again.updated, again.unchanged, again.invalid) == (10, 0, 0, 10, 1)
    assert (again.evalsets, again.results_imported) == (0, 0)
    assert again.invalid_items == summary.invalid_items
    assert hashed == []  # untouched eval results and eval sets are not re-read either
    assert state() == before and registry.counts() == before_counts


def test_a_rewritten_file_is_updated_and_a_touched_one_is_not(workspace: Workspace, sqlite_registry) -> None:
    scan(sqlite_registry, [workspace.root])
    ck = workspace.checkpoints[B_RUN][1]
    old = sqlite_registry.get_checkpoint(path=str(ck))
    tensors = torch.load(ck / "trainable_rows.pt", weights_only=True)
    torch.save({k: v + 1.0 for k, v in tensors.items()}, ck / "trainable_rows.pt")
    touched = workspace.checkpoints[B_RUN][2] / "trainable_rows.json"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 5_000_000_000))

    summary = scan(sqlite_registry, [workspace.root])
    assert (summary.new, summary.updated, summary.unchanged) == (0, 1, 9)
    new = sqlite_registry.get_checkpoint(path=str(ck))
    assert new.id == old.id and new.content_hash != old.content_hash and new.status == "valid"
    third = scan(sqlite_registry, [workspace.root])
    assert (third.updated, third.unchanged) == (0, 10)  # the touch was recorded; quick check again


def test_a_token_space_added_later_is_noticed(workspace: Workspace, sqlite_registry) -> None:
    ck = workspace.checkpoints[B_RUN][0]
    shipped = ck / "token_space.json"
    kept = shipped.read_bytes()
    shipped.unlink()
    scan(sqlite_registry, [workspace.root])
    first = sqlite_registry.get_checkpoint(path=str(ck))
    assert first.status == "valid" and not first.has_token_space and first.token_space_id is None
    assert [f.code for f in audit(sqlite_registry) if f.checkpoint == str(ck)] == ["token-space-not-shipped"]

    shipped.write_bytes(kept)
    summary = scan(sqlite_registry, [workspace.root])
    assert (summary.new, summary.updated) == (0, 1)
    second = sqlite_registry.get_checkpoint(path=str(ck))
    assert second.has_token_space and second.token_space_id is not None
    assert "token_space.json" in {f["name"] for f in second.files}
    assert [f.code for f in audit(sqlite_registry) if f.checkpoint == str(ck)] == []


def test_a_fixed_broken_checkpoint_becomes_valid(workspace: Workspace, sqlite_registry) -> None:
    scan(sqlite_registry, [workspace.root])
    (broken,) = workspace.broken
    write_rows(broken, workspace.token_space, step=400, hidden_size=64)
    summary = scan(sqlite_registry, [workspace.root])
    assert (summary.updated, summary.invalid) == (1, 0)
    ck = sqlite_registry.get_checkpoint(path=str(broken))
    assert (ck.status, ck.reason) == ("valid", None)


def test_a_flipped_byte_is_refused_by_verify_files(workspace: Workspace, sqlite_registry) -> None:
    scan(sqlite_registry, [workspace.root])
    ck_dir = workspace.checkpoints[B_RUN][0]
    files = sqlite_registry.get_checkpoint(path=str(ck_dir)).files
    verify_files(ck_dir, files)  # as registered: passes

    pt = ck_dir / "trainable_rows.pt"
    st = pt.stat()
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0x01
    pt.write_bytes(bytes(data))
    os.utime(pt, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert pt.stat().st_size == st.st_size
    assert (pt.stat().st_size, pt.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)  # size and mtime cannot see it …
    with pytest.raises(IntegrityError) as e:  # … the sha256 does
        verify_files(ck_dir, files)
    assert str(e.value).startswith(f"{pt}: changed on disk since registration")
    assert "refusing to evaluate it" in str(e.value)

    pt.unlink()
    with pytest.raises(IntegrityError, match="registered file trainable_rows.pt is missing"):
        verify_files(ck_dir, files)


def test_a_track_a_file_is_verified_too(session_ws: Workspace, sqlite_registry, tmp_path: Path) -> None:
    scan(sqlite_registry, [session_ws.root])
    src = session_ws.checkpoints[A_RUN][0]
    files = sqlite_registry.get_checkpoint(path=str(src)).files
    copy = tmp_path / src.name
    shutil.copy2(src, copy)
    verify_files(copy, files)
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0x01
    copy.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="changed on disk since registration"):
        verify_files(copy, files)


def test_discovery_sorts_what_it_finds(session_ws: Workspace) -> None:
    found = discover(session_ws.root)
    runs = {p.name: r for p, r in found.runs.items()}
    assert set(runs) == {B_RUN, WIDE_RUN, A_RUN}
    assert [p.name for p, t in sorted(runs[B_RUN].checkpoints)] == [
        "checkpoint_100",
        "checkpoint_200",
        "checkpoint_300",
        "checkpoint_400",
    ]
    assert {t.letter for _, t in runs[B_RUN].checkpoints} == {"B"}
    assert runs[B_RUN].token_space == session_ws.runs[B_RUN] / "token_space.json"
    assert [p.name for p in runs[B_RUN].eval_jsons] == ["eval_step300.json"]
    assert sorted(p.name for p, _ in runs[A_RUN].checkpoints) == [
        "checkpoint_1225.pt",
        "checkpoint_2450.pt",
        "checkpoint_3675.pt",
    ]
    assert {t.letter for _, t in runs[A_RUN].checkpoints} == {"A"}
    assert found.evalsets == [Path(session_ws.evalsets["synthetic-a2t-i2t"])]
    assert not any("models" in str(p) for p in found.runs)  # the base model folder is not a run


def test_a_single_checkpoint_can_be_scanned(session_ws: Workspace, sqlite_registry) -> None:
    ck = session_ws.checkpoints[WIDE_RUN][0]
    summary = scan(sqlite_registry, [ck])
    assert (summary.found, summary.new, summary.runs) == (1, 1, 1)
    assert sqlite_registry.get_checkpoint(path=str(ck)).status == "valid"


def test_imported_eval_results_are_linked_to_their_checkpoint(session_ws: Workspace, sqlite_registry) -> None:
    scan(sqlite_registry, [session_ws.root])
    results = sqlite_registry.list_eval_results()
    assert len(results) == 2
    for r in results:
        assert r.source == "import" and r.step == 300 and r.loss_all == 2.7462
        assert r.metrics["a2t"]["loss"] == 2.3606
        ck = sqlite_registry.get_checkpoint(id=r.checkpoint_id)
        assert ck.step == 300 and r.checkpoint_hash == ck.content_hash
    scan(sqlite_registry, [session_ws.root])
    assert len(sqlite_registry.list_eval_results()) == 2


def test_an_eval_result_written_after_the_first_scan_links_to_its_unchanged_checkpoint(
    workspace: Workspace, sqlite_registry
) -> None:
    from registry.eval_result import EvalResult

    scan(sqlite_registry, [workspace.root])
    run_dir = workspace.runs[B_RUN]
    EvalResult(step=100, losses={"all": 3.0, "a2t": 2.9}).save(run_dir / "eval_step100.json")
    again = scan(sqlite_registry, [workspace.root])
    assert (again.new, again.results_imported) == (0, 1)
    (r,) = [r for r in sqlite_registry.list_eval_results() if r.step == 100]
    ck = sqlite_registry.get_checkpoint(path=str(run_dir / "checkpoint_100"))
    assert (r.checkpoint_id, r.checkpoint_hash) == (ck.id, ck.content_hash)


def test_a_trainers_own_checkpoint_next_to_ours_is_not_registered(registry, tmp_path):
    """The training callback writes `checkpoint_<step>/` next to the Trainer's `checkpoint-<step>/`
    (full model + trainer_state.json): only ours is a checkpoint; a folder named like one that
    holds neither ours nor a Trainer's state is still registered invalid, with what is missing."""
    run = Path(os.path.realpath(tmp_path)) / "run"
    write_rows(run / "checkpoint_2", step=2)
    theirs = run / "checkpoint-2"
    theirs.mkdir()
    (theirs / "trainer_state.json").write_text("{}")
    (theirs / "model.safetensors").write_bytes(b"weights")
    (run / "checkpoint-4").mkdir()
    summary = scan(registry, [run])
    assert {c.path: c.status for c in registry.list_checkpoints()} == {
        str(run / "checkpoint_2"): "valid",
        str(run / "checkpoint-4"): "invalid",
    }
    assert summary.invalid == 1

"""Bad inputs, each met twice: given alone to the real CLI, and inside a scanned tree.

One table of cases. Every case builds its bad input in its own run folder of one tree; the tree
also holds a valid run, sorted after every bad one, which the scan must still register. Then:

- `evalboard inspect BAD` (a subprocess, `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` set) exits 2 with
  exactly one line on stderr that names the offending file, and no traceback;
- `evalboard scan TREE` recorded the same input as invalid with *the same* sentence;
- for eval sets, `evalboard evalset add BAD` exits 2 and the registry snapshot is unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from evalboard.fixtures import make_token_space, write_connector_checkpoint
from registry.evalset import IGNORE_INDEX
from tests._infra.workspace import HIDDEN, TEXT_VOCAB, run_cli, small_token_space, write_rows

ROWS = 128  # audio 64 + image 64 rows: [256, 384)
TOTAL = TEXT_VOCAB + ROWS


class RunsShellCommand:
    """What a hostile checkpoint pickles: unpickling it calls os.system(command)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class CustomConfig:
    """A harmless class, but still a global the weights-only unpickler must refuse to import."""

    lr = 1e-4


# --- builders: each writes one bad input under `d` and returns the path a user would pass --------


def _ckpt(d: Path, **kw) -> Path:
    return write_rows(d / "checkpoint_100", step=100, **kw)


def _edit_meta(ck: Path, **changes) -> Path:
    meta = json.loads((ck / "trainable_rows.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (ck / "trainable_rows.json").write_text(json.dumps(meta, indent=2))
    return ck


def _write_token_space_dict(ck: Path, modalities: dict) -> Path:
    (ck / "token_space.json").write_text(
        json.dumps({"text_vocab_size": TEXT_VOCAB, "vocab_size_total": TOTAL, "modalities": modalities}, indent=2)
    )
    return ck


def pickle_runs_code(d: Path) -> Path:
    target = d / "checkpoint_7.pt"
    d.mkdir(parents=True)
    torch.save({"step": 7, "payload": RunsShellCommand(f"echo pwned > {d / 'pwned'}")}, target)
    return target


def pickle_custom_class(d: Path) -> Path:
    target = d / "checkpoint_8.pt"
    write_connector_checkpoint(target, step=8)
    obj = torch.load(target, weights_only=True)
    obj["config"] = CustomConfig()
    torch.save(obj, target)
    return target


def empty_pt(d: Path) -> Path:
    ck = _ckpt(d)
    (ck / "trainable_rows.pt").write_bytes(b"")
    return ck


def truncated_pt(d: Path) -> Path:
    ck = _ckpt(d)
    data = (ck / "trainable_rows.pt").read_bytes()
    (ck / "trainable_rows.pt").write_bytes(data[: len(data) // 2])
    return ck


def lfs_pointer_pt(d: Path) -> Path:
    d.mkdir(parents=True)
    target = d / "checkpoint_9.pt"
    target.write_text(
        "version https://git-lfs.github.com/spec/v1\n"
        "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        "size 12345678\n"
    )
    return target


def html_page_pt(d: Path) -> Path:
    ck = _ckpt(d)
    (ck / "trainable_rows.pt").write_text(
        "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"
    )
    return ck


def safetensors_header_too_long(d: Path) -> Path:
    ck = _ckpt(d, fmt="safetensors")
    f = ck / "trainable_rows.safetensors"
    data = f.read_bytes()
    f.write_bytes((10**9).to_bytes(8, "little") + data[8:])
    return ck


def safetensors_header_not_json(d: Path) -> Path:
    ck = _ckpt(d, fmt="safetensors")
    f = ck / "trainable_rows.safetensors"
    data = f.read_bytes()
    n = int.from_bytes(data[:8], "little")
    f.write_bytes(data[:8] + b"{" + b"\xff" * (n - 1) + data[8 + n :])
    return ck


def wrong_row_count(d: Path) -> Path:
    return _ckpt(d, rows=torch.randn(ROWS - 1, HIDDEN))


def wrong_hidden_size(d: Path) -> Path:
    # trainable_rows.json says hidden_size 16; both tensors are 8 wide
    return _ckpt(d, rows=torch.randn(ROWS, 8), lm_head_rows=torch.randn(ROWS, 8))


def lm_head_hidden_differs(d: Path) -> Path:
    ck = _ckpt(d, lm_head_rows=torch.randn(ROWS, 8))
    return _edit_meta(ck, hidden_size=None)


def nan_rows(d: Path) -> Path:
    rows = torch.randn(ROWS, HIDDEN)
    rows[3] = float("nan")
    return _ckpt(d, rows=rows)


def inf_rows(d: Path) -> Path:
    head = torch.randn(ROWS, HIDDEN)
    head[10, 2] = float("inf")
    head[20, 0] = float("-inf")
    return _ckpt(d, lm_head_rows=head)


def missing_rows_file(d: Path) -> Path:
    ck = _ckpt(d)
    (ck / "trainable_rows.pt").unlink()
    return ck


def missing_json_field(d: Path) -> Path:
    return _edit_meta(_ckpt(d), base_model=None)


def unexpected_json_field(d: Path) -> Path:
    return _edit_meta(_ckpt(d), learning_rate=3e-4)


def duplicate_json_keys(d: Path) -> Path:
    ck = _ckpt(d)
    (ck / "trainable_rows.json").write_text(
        '{"base_model": "demo/Qwen3-tiny-Base", "row_start": 256, "row_end": 384, "row_start": 300}\n'
    )
    return ck


def json_with_nan(d: Path) -> Path:
    ck = _ckpt(d)
    (ck / "trainable_rows.json").write_text(
        '{"base_model": "demo/Qwen3-tiny-Base", "row_start": 256, "row_end": 384, "hidden_size": NaN}\n'
    )
    return ck


def json_with_bom(d: Path) -> Path:
    ck = _ckpt(d)
    f = ck / "token_space.json"
    f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())
    return ck


def overlapping_ranges(d: Path) -> Path:
    return _write_token_space_dict(_ckpt(d), {"audio": {"start": 256, "end": 320}, "image": {"start": 300, "end": 384}})


def range_past_vocab(d: Path) -> Path:
    return _write_token_space_dict(_ckpt(d), {"audio": {"start": 256, "end": 320}, "image": {"start": 320, "end": 400}})


def rows_past_token_space(d: Path) -> Path:
    wider = make_token_space(TEXT_VOCAB, image=80)  # rows [256, 400)
    ck = write_rows(d / "checkpoint_100", wider, step=100, ship_token_space=False)
    small_token_space().save(ck / "token_space.json")  # vocab_size_total 384
    return ck


def step_disagrees_with_folder(d: Path) -> Path:
    return write_rows(d / "checkpoint_100", step=200)


def connector_without_projector(d: Path) -> Path:
    return write_connector_checkpoint(d / "checkpoint_11.pt", step=11, state={"resampler.queries": torch.randn(8, 32)})


def _raw_evalset(d: Path, rows: list[tuple[list[int], list[int]]], *, manifest_text: str | None = None) -> Path:
    """Parquet + manifest written directly (the library writer would refuse these)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d.mkdir(parents=True)
    ts = small_token_space()
    pq.write_table(
        pa.table(
            {
                "example_id": pa.array([f"a2t-{i}" for i in range(len(rows))], pa.string()),
                "task": pa.array(["a2t"] * len(rows), pa.string()),
                "input_ids": pa.array([r[0] for r in rows], pa.list_(pa.int64())),
                "labels": pa.array([r[1] for r in rows], pa.list_(pa.int64())),
            }
        ),
        d / "data.parquet",
    )
    manifest = manifest_text or json.dumps(
        {"name": d.name, "token_space_hash": ts.abi_hash, "token_space": ts.to_dict()}, indent=2
    )
    (d / "manifest.json").write_text(manifest)
    return d


_OK = ([1, 260, 261, 2, 10, 11], [IGNORE_INDEX] * 4 + [10, 11])


def evalset_empty(d: Path) -> Path:
    return _raw_evalset(d, [])


def evalset_token_out_of_range(d: Path) -> Path:
    return _raw_evalset(d, [_OK, ([1, 260, TOTAL, 2, 10, 11], [IGNORE_INDEX] * 4 + [10, 11])])


def evalset_length_mismatch(d: Path) -> Path:
    return _raw_evalset(d, [([1, 260, 2, 10, 11], [IGNORE_INDEX] * 3 + [11])])


def evalset_nothing_scored(d: Path) -> Path:
    return _raw_evalset(d, [([1, 260, 2, 10], [10] + [IGNORE_INDEX] * 3)])


def evalset_manifest_duplicate_key(d: Path) -> Path:
    ts = small_token_space()
    return _raw_evalset(
        d, [_OK], manifest_text=(f'{{"name": "first", "token_space_hash": "{ts.abi_hash}", "name": "second"}}')
    )


def eval_step_without_overall_loss(d: Path) -> Path:
    d.mkdir(parents=True)
    target = d / "eval_step100.json"
    target.write_text(json.dumps({"step": 100, "loss(a2t)": 2.36, "loss(i2t)": 3.33}))
    return target


def symlink_leaving_tree(d: Path) -> Path:
    outside = d.parents[1] / "outside" / "checkpoint_500"
    write_rows(outside, step=500)
    d.mkdir(parents=True)
    (d / "checkpoint_500").symlink_to(outside, target_is_directory=True)
    return d / "checkpoint_500"


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path], Path]
    names: str  # the file (relative to the case folder) the message must name
    says: tuple[str, ...]  # fragments of the one-line reason
    kind: str = "checkpoint"  # checkpoint | evalset | eval_result
    inspectable: bool = True


T = "checkpoint_100/trainable_rows.pt"
J = "checkpoint_100/trainable_rows.json"
S = "checkpoint_100/token_space.json"

CASES = [
    Case(
        "pickle-runs-code",
        pickle_runs_code,
        "checkpoint_7.pt",
        ("refused to unpickle", "'posix.system'", "would run code"),
    ),
    Case(
        "pickle-custom-class",
        pickle_custom_class,
        "checkpoint_8.pt",
        ("refused to unpickle", f"'{__name__}.CustomConfig'"),
    ),
    Case("empty-pt", empty_pt, T, ("empty (0 bytes)",)),
    Case("truncated-pt", truncated_pt, T, ("truncated or corrupt",)),
    Case("git-lfs-pointer-pt", lfs_pointer_pt, "checkpoint_9.pt", ("Git-LFS pointer", "git lfs pull")),
    Case("html-page-pt", html_page_pt, T, ("HTML",)),
    Case(
        "safetensors-header-too-long",
        safetensors_header_too_long,
        "checkpoint_100/trainable_rows.safetensors",
        ("header length 1000000000 does not fit",),
    ),
    Case(
        "safetensors-header-not-json",
        safetensors_header_not_json,
        "checkpoint_100/trainable_rows.safetensors",
        ("header is not valid JSON",),
    ),
    Case(
        "wrong-row-count",
        wrong_row_count,
        T,
        (f"input-embedding rows: expected ({ROWS}, hidden) for rows [256, 384), file has ({ROWS - 1}, {HIDDEN})",),
    ),
    Case("wrong-hidden-size", wrong_hidden_size, T, (f"expected ({ROWS}, {HIDDEN}), file has ({ROWS}, 8)",)),
    Case(
        "lm-head-hidden-differs-from-embed",
        lm_head_hidden_differs,
        T,
        (f"lm_head rows: expected ({ROWS}, {HIDDEN}) like the embedding rows, file has ({ROWS}, 8)",),
    ),
    Case("nan-rows", nan_rows, T, ("input-embedding rows contain NaN/Inf in 1 rows (first: token id 259)",)),
    Case("inf-rows", inf_rows, T, ("lm_head rows contain NaN/Inf in 2 rows (first: token id 266)",)),
    Case("missing-rows-file", missing_rows_file, "checkpoint_100", ("has no trainable_rows.pt",)),
    Case("json-missing-field", missing_json_field, J, ("missing field 'base_model'",)),
    Case("json-unexpected-field", unexpected_json_field, J, ("unexpected field 'learning_rate'",)),
    Case("json-duplicate-keys", duplicate_json_keys, J, ("duplicate JSON key 'row_start'",)),
    Case("json-with-nan", json_with_nan, J, ("contains NaN",)),
    Case("json-with-bom", json_with_bom, S, ("byte-order mark",)),
    Case("overlapping-modality-ranges", overlapping_ranges, S, ("audio range 256–319 overlaps image range 300–383",)),
    Case("range-past-vocab", range_past_vocab, S, ("image range 320–399 runs past vocab_size_total 384",)),
    Case(
        "rows-past-token-space",
        rows_past_token_space,
        T,
        ("row range [256, 400) runs past the token space's vocab_size_total 384",),
    ),
    Case(
        "step-disagrees-with-folder",
        step_disagrees_with_folder,
        "checkpoint_100",
        ("step 200 in trainable_rows.json disagrees with the folder name checkpoint_100",),
    ),
    Case(
        "connector-without-projector",
        connector_without_projector,
        "checkpoint_11.pt",
        ("connector has no projector weights",),
    ),
    Case("evalset-empty", evalset_empty, "data.parquet", ("the eval set is empty",), kind="evalset"),
    Case(
        "evalset-token-out-of-range",
        evalset_token_out_of_range,
        "data.parquet",
        (f"example 'a2t-1' has token id {TOTAL}, outside the token space [0, {TOTAL})",),
        kind="evalset",
    ),
    Case(
        "evalset-length-mismatch",
        evalset_length_mismatch,
        "data.parquet",
        ("input_ids has 5 tokens but labels has 4",),
        kind="evalset",
    ),
    Case("evalset-nothing-scored", evalset_nothing_scored, "data.parquet", ("has no scored position",), kind="evalset"),
    Case(
        "evalset-manifest-duplicate-key",
        evalset_manifest_duplicate_key,
        "manifest.json",
        ("duplicate JSON key 'name'",),
        kind="evalset",
    ),
    Case(
        "eval-step-without-overall-loss",
        eval_step_without_overall_loss,
        "eval_step100.json",
        ("no overall loss",),
        kind="eval_result",
    ),
    Case(
        "symlink-leaving-tree",
        symlink_leaving_tree,
        "checkpoint_500",
        ("symlink leaves the scanned tree", "outside/checkpoint_500"),
        inspectable=False,
    ),
]
INSPECTABLE = [c for c in CASES if c.inspectable]
EVALSETS = [c for c in CASES if c.kind == "evalset"]
SAFE_ENV = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}


def test_the_table_is_large_and_distinct() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 20
    assert len({c.says for c in CASES}) == len(CASES)


@dataclass
class BadTree:
    root: Path
    home: Path
    targets: dict[str, Path]
    scan: dict  # the `scan --json` summary
    good: Path


@pytest.fixture(scope="module")
def bad_tree(tmp_path_factory) -> BadTree:
    """Every case in one tree plus a valid run named to sort last, scanned once by the real CLI."""
    base = Path(os.path.realpath(tmp_path_factory.mktemp("bad")))
    root = base / "tree"
    targets = {c.id: c.build(root / f"case_{c.id}") for c in CASES}
    good = write_rows(root / "zz_valid_run" / "checkpoint_100", step=100)
    home = base / "home"
    proc = run_cli(["scan", root, "--json"], home=home, env=SAFE_ENV)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return BadTree(root, home, targets, json.loads(proc.stdout), good)


@pytest.fixture(scope="module")
def scanned_registry(bad_tree: BadTree):
    from registry.store import Registry

    with Registry(f"sqlite:///{bad_tree.home / 'registry.db'}") as reg:
        yield reg


def _one_line_error(proc, named: Path) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert str(named) in lines[0]
    return lines[0].removeprefix("error: ")


@dataclass
class InspectRuns:
    procs: dict[str, subprocess.CompletedProcess]
    registry_before: dict
    registry_after: dict


@pytest.fixture(scope="module")
def inspect_runs(bad_tree: BadTree, scanned_registry) -> InspectRuns:
    """`evalboard inspect` on every case, as separate processes, two at a time (they are
    independent and mostly spend their time importing torch)."""
    before = scanned_registry.snapshot()
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        futures = {
            c.id: pool.submit(run_cli, ["inspect", bad_tree.targets[c.id]], home=bad_tree.home, env=SAFE_ENV)
            for c in INSPECTABLE
        }
        procs = {case_id: f.result() for case_id, f in futures.items()}
    return InspectRuns(procs, before, scanned_registry.snapshot())


@pytest.mark.parametrize("case", INSPECTABLE, ids=lambda c: c.id)
def test_inspect_refuses_with_one_line_and_the_scan_records_the_same_reason(
    case: Case, bad_tree: BadTree, inspect_runs: InspectRuns, scanned_registry
) -> None:
    target = bad_tree.targets[case.id]
    proc = inspect_runs.procs[case.id]
    reason = _one_line_error(proc, bad_tree.root / f"case_{case.id}" / case.names)
    for fragment in case.says:
        assert fragment in reason
    assert proc.stdout == ""
    assert inspect_runs.registry_after == inspect_runs.registry_before  # inspect registers nothing

    recorded = {item["path"]: item["reason"] for item in bad_tree.scan["invalid_items"]}
    assert recorded.get(str(target)) == reason
    if case.kind == "checkpoint":
        ck = scanned_registry.get_checkpoint(path=str(target))
        assert (ck.status, ck.reason) == ("invalid", reason)


def test_the_symlink_leaving_the_tree_is_registered_invalid(bad_tree: BadTree, scanned_registry) -> None:
    link = bad_tree.targets["symlink-leaving-tree"]
    ck = scanned_registry.get_checkpoint(path=str(link))
    assert ck.status == "invalid"
    assert "symlink leaves the scanned tree" in ck.reason
    assert str(bad_tree.root / "outside") not in ck.reason  # the target is outside the tree …
    assert str(bad_tree.root.parent / "outside" / "checkpoint_500") in ck.reason  # … and named
    assert not any(
        c.path.startswith(str(bad_tree.root.parent / "outside")) for c in scanned_registry.list_checkpoints()
    )


def test_the_scan_goes_on_past_every_bad_input(bad_tree: BadTree, scanned_registry) -> None:
    n_checkpoints = sum(c.kind == "checkpoint" for c in CASES)
    summary = bad_tree.scan
    assert summary["found"] == n_checkpoints + 1
    assert summary["invalid"] == len(CASES)
    assert summary["evalsets"] == 0 and summary["results_imported"] == 0
    good = scanned_registry.get_checkpoint(path=str(bad_tree.good))
    assert good.status == "valid" and good.step == 100
    assert scanned_registry.list_evalsets() == []


@pytest.mark.parametrize("case", EVALSETS, ids=lambda c: c.id)
def test_evalset_add_refuses_and_leaves_the_registry_unchanged(case: Case, bad_tree: BadTree, scanned_registry) -> None:
    target = bad_tree.targets[case.id]
    before = scanned_registry.snapshot()
    assert before["checkpoints"]  # a non-empty registry, so "unchanged" means something
    proc = run_cli(["evalset", "add", target], home=bad_tree.home)
    reason = _one_line_error(proc, bad_tree.root / f"case_{case.id}" / case.names)
    for fragment in case.says:
        assert fragment in reason
    assert scanned_registry.snapshot() == before


def test_no_pickle_ran_code_under_inspect_or_scan(bad_tree: BadTree, inspect_runs: InspectRuns) -> None:
    """Both ran with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1; the payload would have written `pwned`."""
    assert inspect_runs.procs["pickle-runs-code"].returncode == 2
    assert not list(bad_tree.root.parent.rglob("pwned"))


def test_the_code_pickle_really_would_run_code(tmp_path: Path) -> None:
    """Guards the fixture: an unsafe load of the same file does run the command."""
    target = pickle_runs_code(tmp_path / "run")
    torch.load(target, weights_only=False)
    assert (tmp_path / "run" / "pwned").read_text().strip() == "pwned"

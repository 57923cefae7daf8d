"""Eval sets. A `*.parquet` symlink pointing outside the eval set's folder is refused
exactly like the same escape through the manifest's `files`; and `evalset add --replace` keeps
the replaced content as its own version (`<name>@<hash>`), so results on the old and the new
contents never appear as one series."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalboard.fixtures import make_evalset
from tests._infra.workspace import small_token_space, write_rows
from tests.bad_inputs._helpers import cli, invalid_reason, models_env, refusal, scan, state


@pytest.fixture
def escaping(tmp_path: Path):
    """An eval set whose only Parquet file is a symlink to one outside its folder."""
    ts = small_token_space()
    outside = make_evalset(tmp_path / "elsewhere", "elsewhere", ts, n_per_task=2)
    es = make_evalset(tmp_path / "evalsets" / "leaky", "leaky", ts, n_per_task=2)
    for part in Path(es.path).glob("*.parquet"):
        part.unlink()
    link = Path(es.path) / "part-00000.parquet"
    link.symlink_to(next(Path(outside.path).glob("*.parquet")))
    home = tmp_path / "home"
    write_rows(tmp_path / "outputs" / "run_a" / "checkpoint_100", step=100)
    scan(home, tmp_path / "outputs")
    return Path(es.path), link, home


def test_a_parquet_symlink_leaving_the_folder_is_refused(escaping) -> None:
    es, link, home = escaping
    manifest = json.loads((es / "manifest.json").read_text())
    manifest.pop("files")  # found by globbing
    (es / "manifest.json").write_text(json.dumps(manifest))
    before = state(home)
    reason = refusal(cli(["evalset", "add", es], home=home, timeout=60), link, "lies outside the eval-set folder")
    assert state(home) == before
    refusal(cli(["inspect", es], home=home, timeout=60), link, "lies outside the eval-set folder")
    assert invalid_reason(scan(home, es.parent), es) == reason


def test_the_same_escape_through_the_manifest_is_refused_the_same_way(escaping) -> None:
    es, link, home = escaping  # the manifest lists part-00000.parquet, the link
    before = state(home)
    refusal(
        cli(["evalset", "add", es], home=home, timeout=60), es, "part-00000.parquet", "lies outside the eval-set folder"
    )
    assert state(home) == before


@pytest.mark.slow
def test_a_replaced_evalset_is_a_new_version_with_its_own_series(workspace, tmp_path) -> None:
    from dashboard import data
    from registry.store import Registry

    home, env = tmp_path / "home", models_env(workspace)
    es_dir = Path(workspace.evalsets["synthetic-a2t-i2t"])
    ck = workspace.checkpoints["stage3_token_lm_iter5"][0]
    scan(home, workspace.root / "outputs", env=env)
    for step in ("first", "second"):
        if step == "second":  # new contents in the same folder, under the same name
            make_evalset(es_dir, "synthetic-a2t-i2t", workspace.token_space, seed=7)
            proc = cli(["evalset", "add", es_dir, "--replace"], home=home, env=env)
            assert proc.returncode == 0 and "replaced" in proc.stderr, proc.stderr
        else:
            assert cli(["evalset", "add", es_dir], home=home, env=env).returncode == 0
        proc = cli(
            ["eval", ck, "--evalset", "synthetic-a2t-i2t", "--max-examples", "2", "--no-eval-json"], home=home, env=env
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    with Registry(f"sqlite:///{home / 'registry.db'}") as reg:
        sets = {e.name: e for e in reg.list_evalsets()}
        results = data.load_results(reg)
        ck_id = reg.get_checkpoint(path=str(ck)).id
    old = [n for n in sets if n.startswith("synthetic-a2t-i2t@")]
    assert len(old) == 1 and "synthetic-a2t-i2t" in sets
    assert old[0] == f"synthetic-a2t-i2t@{sets[old[0]].content_hash[:12]}"
    mine = results[(results["checkpoint_id"] == ck_id) & (results["task"] == "all")]
    assert sorted(mine["evalset"].unique()) == sorted([old[0], "synthetic-a2t-i2t"])  # two series, not one

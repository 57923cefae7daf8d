"""Bounded inputs. Names and free-text fields have a length limit, said in the refusal,
so a 10 MB `base_model` cannot grow the registry by megabytes; and a checkpoint's `base_model`
cannot make evalboard load an arbitrary local folder: base models resolve through
`EVALBOARD_MODELS` and the Hugging Face cache, a local folder only where the user allowed it
(`EVALBOARD_MODELS='*=/folder'` or mapping that very path)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from evalboard.fixtures import write_connector_checkpoint
from tests._infra.workspace import write_rows
from tests.bad_inputs._helpers import cli, edit_json, invalid_reason, models_env, refusal, scan, state

TEN_MB = 10 * 1024 * 1024


def huge_base_model(d: Path):
    ck = write_rows(d / "checkpoint_100", step=100)
    f = edit_json(ck / "trainable_rows.json", base_model="Q" * TEN_MB)
    return ck, f, f"holds a string of {TEN_MB} characters; at most 8192"


def long_base_model(d: Path):
    ck = write_rows(d / "checkpoint_100", step=100)
    f = edit_json(ck / "trainable_rows.json", base_model="org/" + "m" * 996)
    return ck, f, "base_model is 1000 characters long; at most 256"


def long_modality_name(d: Path):
    ck = write_rows(d / "checkpoint_100", step=100)
    spec = json.loads((ck / "token_space.json").read_text())
    spec["modalities"]["a" * 300] = spec["modalities"].pop("audio")
    (ck / "token_space.json").write_text(json.dumps(spec))
    return ck, ck / "token_space.json", "modality name is 300 characters long"


def huge_base_llm_in_a_connector(d: Path):
    f = write_connector_checkpoint(d / "checkpoint_7.pt", step=7, llm_dim=16)
    obj = torch.load(f, weights_only=True)
    obj["base_llm"] = "L" * TEN_MB
    torch.save(obj, f)
    return f, f, f"base_llm is {TEN_MB} characters long; at most 256"


CASES = [huge_base_model, long_base_model, long_modality_name, huge_base_llm_in_a_connector]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = Path(os.path.realpath(tmp_path_factory.mktemp("bounded")))
    root = base / "tree"
    built = {c.__name__: c(root / c.__name__) for c in CASES}
    home = base / "home"
    return root, home, built, scan(home, root)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_a_field_past_its_limit_is_refused_saying_the_limit(case, tree) -> None:
    _, home, built, summary = tree
    target, named, says = built[case.__name__]
    before = state(home)
    proc = cli(["inspect", target], home=home, timeout=60)
    reason = refusal(proc, named, says)
    assert len(proc.stderr) < 4000  # the value itself is never echoed
    assert invalid_reason(summary, target) == reason
    assert state(home) == before


def test_the_registry_stays_small(tree) -> None:
    _, home, _, summary = tree
    assert summary["invalid"] == len(CASES)
    assert (home / "registry.db").stat().st_size < 1024 * 1024


def test_evalset_names_are_bounded(tmp_path) -> None:
    from registry.evalset import IGNORE_INDEX, Example, write_evalset
    from tests._infra.workspace import small_token_space

    es = tmp_path / "es"
    write_evalset(
        es, "short", [Example("a2t-0", "a2t", [1, 260, 2, 10], [IGNORE_INDEX] * 2 + [2, 10])], small_token_space()
    )
    edit_json(es / "manifest.json", name="n" * 5000)
    home = tmp_path / "home"
    refusal(cli(["evalset", "add", es], home=home, timeout=60), es / "manifest.json", "name is 5000 characters long")
    assert state(home)[0].get("evalsets", []) == []


@pytest.fixture
def local_base(workspace, tmp_path):
    """A checkpoint whose base_model is the local folder of the workspace's base, registered."""
    run = workspace.root / "outputs" / "local_base_run"
    ck = write_rows(
        run / "checkpoint_100", workspace.token_space, step=100, base_model=str(workspace.base_dir), hidden_size=64
    )
    home = tmp_path / "home"
    scan(home, run)
    return ck, home


def test_a_local_folder_as_base_model_is_refused_unless_allowed(workspace, local_base) -> None:
    ck, home = local_base
    before = state(home)
    reason = refusal(
        cli(["stats", ck, "--json"], home=home, env=models_env(workspace), timeout=120),
        str(workspace.base_dir),
        "is a local folder",
        "EVALBOARD_MODELS",
    )
    assert "*=" in reason
    assert state(home) == before
    allowed = {"EVALBOARD_MODELS": f"*={workspace.base_dir.parent}"}
    ok = cli(["stats", ck, "--json"], home=home, env=allowed, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads(ok.stdout)["base_text"]  # the allowed folder was read

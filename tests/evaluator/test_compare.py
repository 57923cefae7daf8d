"""`evalboard compare` end to end: two real evaluations logged to MLflow, the paired interval read
back from the MLflow artifacts after the local per-example files are gone, and the refusals."""

from __future__ import annotations

import json
import shutil

import pytest

from evaluator.service import EvalOptions, Evaluator
from registry.eval_result import EvalResult
from tests._infra.workspace import evalboard_cli

pytestmark = pytest.mark.slow

RUN = "stage3_token_lm_iter5"


def _cli(env, *args):
    return evalboard_cli(args, env=env.env())


def _evaluate(env, step: int, **options):
    ck = env.checkpoint(RUN, step)
    Evaluator(env.reg, env.settings).evaluate(ck, env.evalset, EvalOptions(device="cpu", **options))
    return ck


def test_the_interval_comes_back_from_mlflow_after_the_local_files_are_gone(eval_env):
    a, b = _evaluate(eval_env, 100), _evaluate(eval_env, 300)
    eval_env.reg.close()
    args = ("compare", a.path, b.path, "--evalset", eval_env.evalset.name, "--iters", "400", "--seed", "3", "--json")
    first = _cli(eval_env, *args)
    assert first.returncode == 0, first.stderr
    doc = json.loads(first.stdout)
    boot = doc["bootstrap"]
    assert boot["iters"] == 400 and boot["seed"] == 3 and boot["evalset_hash"] == eval_env.evalset.content_hash
    assert boot["subset"] == "all" and doc["no_interval"] is None
    for task, d in boot["tasks"].items():
        # the delta of the per-example sums is the delta of the results' own losses
        assert d["delta"] == pytest.approx(doc["b"]["losses"][task] - doc["a"]["losses"][task], abs=1e-5), task
        assert d["low"] <= d["delta"] <= d["high"]
        assert 1 / 401 <= d["p_value"] <= 1

    shutil.rmtree(eval_env.home / "results")
    shutil.rmtree(eval_env.home / "cache" / "per_example")
    again = _cli(eval_env, *args)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["bootstrap"] == boot
    assert len(list((eval_env.home / "cache" / "per_example").glob("*.parquet"))) == 2  # fetched from MLflow

    text = _cli(eval_env, *args[:-1])
    assert text.returncode == 0, text.stderr
    assert "paired bootstrap B=400 seed=3" in text.stdout and "95% interval" in text.stdout
    assert f"{boot['tasks']['all']['delta']:+.4f}" in text.stdout


def test_results_on_other_eval_set_contents_or_subsets_are_refused_with_both_hashes(eval_env):
    from evalboard.fixtures import make_evalset

    a = _evaluate(eval_env, 100)
    sub = _evaluate(eval_env, 200, max_examples=3)
    eval_env.reg.close()
    h = eval_env.evalset.content_hash
    name = eval_env.evalset.name
    proc = _cli(eval_env, "compare", a.path, sub.path, "--evalset", name)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error:") and proc.stderr.count(h) == 2 and "max_examples=3" in proc.stderr

    # the eval set's content replaced under the same name; B evaluated on the new content
    from registry.token_space import TokenSpace

    space = TokenSpace.load(eval_env.root / "outputs" / RUN / "token_space.json")
    new = make_evalset(eval_env.root / "evalsets" / "v2", name, space, seed=5)
    added = _cli(eval_env, "evalset", "add", str(new.path), "--replace", "--json")
    assert added.returncode == 0, added.stderr
    new_hash = json.loads(added.stdout)["content_hash"]
    assert new_hash != h
    from registry.store import Registry

    with Registry(settings=eval_env.settings) as reg:
        Evaluator(reg, eval_env.settings).evaluate(
            reg.get_checkpoint(id=eval_env.checkpoint(RUN, 300).id),
            reg.get_evalset(name=name),
            EvalOptions(device="cpu"),
        )
    proc = _cli(eval_env, "compare", a.path, eval_env.checkpoint(RUN, 300).path, "--evalset", name)
    assert proc.returncode == 2, proc.stderr
    assert h in proc.stderr and new_hash in proc.stderr and "\n" not in proc.stderr.rstrip("\n")


def test_an_imported_result_has_point_values_and_no_interval(eval_env):
    a = _evaluate(eval_env, 100)
    ck = eval_env.checkpoint(RUN, 200)
    es = eval_env.evalset
    path = eval_env.root / "outputs" / RUN / "eval_step200.json"
    EvalResult(
        step=200,
        losses={"all": 2.5, "a2t": 2.25, "i2t": 2.75},
        tokens={"all": 100, "a2t": 50, "i2t": 50},
        evalset={"name": es.name, "content_hash": es.content_hash},
    ).save(path)
    eval_env.reg.close()
    assert _cli(eval_env, "import-eval", str(path)).returncode == 0
    proc = _cli(eval_env, "compare", a.path, ck.path, "--evalset", es.name, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["bootstrap"] is None and doc["no_interval"] == "no interval (imported)"
    assert doc["b"]["losses"]["all"] == 2.5 and doc["b"]["source"] == "import"
    assert doc["delta"]["all"] == pytest.approx(2.5 - doc["a"]["losses"]["all"])
    text = _cli(eval_env, "compare", a.path, ck.path, "--evalset", es.name)
    assert "no interval (imported)" in text.stdout


def test_compare_names_what_is_missing(eval_env):
    a = _evaluate(eval_env, 100)
    eval_env.reg.close()
    other = eval_env.checkpoint(RUN, 300)
    proc = _cli(eval_env, "compare", a.path, other.path, "--evalset", eval_env.evalset.name)
    assert proc.returncode == 2 and "has no result on eval set" in proc.stderr and other.path in proc.stderr
    proc = _cli(eval_env, "compare", a.path, other.path, "--evalset", "nope")
    assert proc.returncode == 2 and "nope" in proc.stderr
    proc = _cli(eval_env, "compare", a.path, other.path, "--evalset", eval_env.evalset.name, "--iters", "0")
    assert proc.returncode == 2 and "--iters" in proc.stderr

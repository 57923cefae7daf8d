"""`audit`: each kind of finding, its severity and its sentence; and the CLI's exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evalboard.fixtures import TinyBaseSpec, build_tiny_base, make_evalset, make_token_space
from registry.audit import audit, summarize
from registry.scanner import scan
from registry.store import Registry
from tests._infra.workspace import TEXT_VOCAB, run_cli, small_token_space, write_rows

PADDED_BASE = "tiny/padded-qwen3"


@pytest.fixture(scope="module")
def padded_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny Qwen3 whose embedding has 16 padding rows past the text vocabulary."""
    return build_tiny_base(
        tmp_path_factory.mktemp("padded") / "base",
        TinyBaseSpec(
            text_vocab_size=TEXT_VOCAB,
            embedding_rows=TEXT_VOCAB + 16,
            hidden_size=16,
            num_heads=2,
            num_kv_heads=1,
            head_dim=8,
            intermediate_size=32,
        ),
    )


def _codes(findings, **where) -> list[tuple[str, str]]:
    return [(f.severity, f.code) for f in findings if all(getattr(f, k) == v for k, v in where.items())]


def test_a_consistent_tree_has_no_warnings_or_errors(tmp_path: Path, sqlite_registry: Registry) -> None:
    ts = small_token_space()
    run = tmp_path / "runs" / "clean"
    ts.save((run.mkdir(parents=True), run / "token_space.json")[1])
    for step in (100, 200):
        write_rows(run / f"checkpoint_{step}", ts, step=step)
    make_evalset(tmp_path / "runs" / "es", "clean-set", ts, n_per_task=2)
    scan(sqlite_registry, [tmp_path / "runs"])
    findings = audit(sqlite_registry)
    assert summarize(findings) == {"error": 0, "warning": 0, "info": 0}, [f.message for f in findings]


def test_base_model_differing_within_a_run(tmp_path: Path, sqlite_registry: Registry) -> None:
    run = tmp_path / "mixed"
    write_rows(run / "checkpoint_100", step=100, base_model="Qwen/Qwen3-8B-Base")
    write_rows(run / "checkpoint_200", step=200, base_model="Qwen/Qwen3-4B-Base")
    scan(sqlite_registry, [tmp_path])
    (f,) = [f for f in audit(sqlite_registry) if f.code == "base-model-differs"]
    assert f.severity == "error" and f.run == "mixed"
    assert (
        f.message == "run 'mixed' mixes base models: Qwen/Qwen3-4B-Base at steps 200; Qwen/Qwen3-8B-Base at steps 100"
    )


# Token-space rows are shared per ABI hash; codec/tokenizer versions are kept with each file that
# shipped them, so a version bump is still seen however the files were scanned.


def test_codec_version_differing_from_the_run_is_a_warning(tmp_path: Path, sqlite_registry: Registry) -> None:
    run = tmp_path / "run"
    run.mkdir()
    small_token_space().save(run / "token_space.json")
    write_rows(run / "checkpoint_100", small_token_space(image_codec=("vqgan_f16", "2.2")), step=100)
    scan(sqlite_registry, [tmp_path])
    findings = audit(sqlite_registry)
    assert summarize(findings)["error"] == 0  # same ABI: a version bump is not an error
    (f,) = [f for f in findings if f.code == "run-token-space-version"]
    assert f.severity == "warning"
    assert f.message == "image codec vqgan_f16@2.2 in run/checkpoint_100, vqgan_f16@2.1 in run 'run' token_space.json"


def test_codec_version_differing_from_an_eval_set_added_later_is_a_warning(
    tmp_path: Path, sqlite_registry: Registry
) -> None:
    from registry.scanner import register_evalset

    write_rows(tmp_path / "run" / "checkpoint_100", step=100)
    scan(sqlite_registry, [tmp_path / "run"])
    es = make_evalset(
        tmp_path / "es", "newer-codec", small_token_space(audio_codec=("encodec_24khz", "1.1")), n_per_task=2
    )
    register_evalset(sqlite_registry, es.path)
    findings = audit(sqlite_registry)
    assert summarize(findings)["error"] == 0
    (f,) = [f for f in findings if f.code == "version-mismatch"]
    assert (f.severity, f.evalset) == ("warning", "newer-codec")
    assert (
        f.message == "audio codec encodec_24khz@1.0 in run/checkpoint_100, encodec_24khz@1.1 in eval set 'newer-codec'"
    )


def test_codec_version_differing_from_an_eval_set_scanned_together_is_a_warning(
    tmp_path: Path, sqlite_registry: Registry
) -> None:
    write_rows(tmp_path / "run" / "checkpoint_100", step=100)
    make_evalset(tmp_path / "es", "newer-codec", small_token_space(audio_codec=("encodec_24khz", "1.1")), n_per_task=2)
    scan(sqlite_registry, [tmp_path])
    assert [f.code for f in audit(sqlite_registry) if f.evalset == "newer-codec"] == ["version-mismatch"]


def test_checkpoint_shipped_without_token_space(tmp_path: Path, sqlite_registry: Registry) -> None:
    run = tmp_path / "run"
    run.mkdir()
    small_token_space().save(run / "token_space.json")
    ck = write_rows(run / "checkpoint_100", step=100, ship_token_space=False)
    scan(sqlite_registry, [tmp_path])
    findings = audit(sqlite_registry)
    assert _codes(findings, checkpoint=str(ck)) == [("warning", "token-space-not-shipped")]
    (f,) = [f for f in findings if f.code == "token-space-not-shipped"]
    assert f.message == (
        "run/checkpoint_100 was shipped without token_space.json (compatibility rule 1: "
        "always ship it); using run 'run''s"
    )


def test_checkpoint_token_space_differing_from_its_run(tmp_path: Path, sqlite_registry: Registry) -> None:
    run = tmp_path / "run"
    run.mkdir()
    small_token_space().save(run / "token_space.json")
    write_rows(run / "checkpoint_100", make_token_space(TEXT_VOCAB, image=96), step=100)
    scan(sqlite_registry, [tmp_path])
    messages = [f.message for f in audit(sqlite_registry) if f.code == "run-token-space-mismatch"]
    assert (
        "image range 320–415 (96 rows) in run/checkpoint_100, 320–383 (64 rows) in run 'run' token_space.json"
        in messages
    )


def test_rows_not_covering_a_modality(tmp_path: Path, sqlite_registry: Registry) -> None:
    audio_only = make_token_space(TEXT_VOCAB, image=0)
    ck = write_rows(tmp_path / "run" / "checkpoint_100", audio_only, step=100, ship_token_space=False)
    small_token_space().save(ck / "token_space.json")  # the token space has an image range too
    scan(sqlite_registry, [tmp_path])
    (f,) = [f for f in audit(sqlite_registry) if f.code == "range-not-covered"]
    assert f.severity == "warning"
    assert f.message.startswith("image range 320–383 is not inside the trained rows 256–319 of run/checkpoint_100")


def test_text_vocab_smaller_than_the_base_embedding(
    tmp_path: Path, sqlite_registry: Registry, padded_base: Path
) -> None:
    write_rows(tmp_path / "run" / "checkpoint_100", step=100, base_model=PADDED_BASE)
    scan(sqlite_registry, [tmp_path])
    assert not [f for f in audit(sqlite_registry) if f.code == "base-padding-overwritten"]  # base unknown
    (f,) = [
        f
        for f in audit(sqlite_registry, models={PADDED_BASE: str(padded_base)})
        if f.code == "base-padding-overwritten"
    ]
    assert f.severity == "warning"
    assert f.message == (
        f"base {PADDED_BASE} has 272 embedding rows but text_vocab_size is 256: its padding rows "
        "256–271 are overwritten by new rows"
    )
    assert dict(f.detail) == {"base_rows": 272, "text_vocab_size": 256}


def test_an_unpadded_base_gives_no_padding_finding(tmp_path: Path, sqlite_registry: Registry, session_ws) -> None:
    write_rows(tmp_path / "run" / "checkpoint_100", step=100)
    scan(sqlite_registry, [tmp_path])
    findings = audit(sqlite_registry, models={session_ws.base_model: str(session_ws.base_dir)})
    assert not [f for f in findings if f.code == "base-padding-overwritten"]


def test_an_eval_set_in_an_unknown_token_space(tmp_path: Path, sqlite_registry: Registry) -> None:
    write_rows(tmp_path / "run" / "checkpoint_100", step=100)
    make_evalset(tmp_path / "es", "elsewhere", make_token_space(512), n_per_task=1)
    scan(sqlite_registry, [tmp_path])
    codes = _codes(audit(sqlite_registry), evalset="elsewhere")
    assert ("error", "token-space-mismatch") in codes


# --- through the CLI -------------------------------------------------------------------------


def _scanned_home(tmp_path: Path, tree: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    with Registry(f"sqlite:///{home / 'registry.db'}") as reg:  # the CLI's default database in `home`
        scan(reg, [tree])
    return home


def test_cli_fail_on_mismatch_exits_1_and_json_parses(session_ws, tmp_path: Path) -> None:
    home = _scanned_home(tmp_path, session_ws.root)
    proc = run_cli(["audit", "--json", "--fail-on-mismatch"], home=home)
    assert proc.returncode == 1, proc.stderr
    findings = json.loads(proc.stdout)
    assert {f["code"] for f in findings if f["severity"] == "error"} == {"token-space-mismatch", "invalid-checkpoint"}
    assert all(set(f) == {"severity", "code", "message", "run", "checkpoint", "evalset", "detail"} for f in findings)
    mismatch = next(f for f in findings if f["code"] == "token-space-mismatch")
    assert "320–415 (96 rows)" in mismatch["message"] and "320–383 (64 rows)" in mismatch["message"]

    plain = run_cli(["audit"], home=home)
    assert plain.returncode == 0  # without the flag, findings are reported, not fatal
    assert "token-space-mismatch: " in plain.stdout
    assert plain.stdout.rstrip().endswith("2 errors, 0 warnings, 0 info")


def test_cli_fail_on_mismatch_passes_a_clean_registry_and_reads_evalboard_models(
    tmp_path: Path, padded_base: Path
) -> None:
    write_rows(tmp_path / "tree" / "run" / "checkpoint_100", step=100, base_model=PADDED_BASE)
    home = _scanned_home(tmp_path, tmp_path / "tree")
    proc = run_cli(
        ["audit", "--json", "--fail-on-mismatch"], home=home, env={"EVALBOARD_MODELS": f"{PADDED_BASE}={padded_base}"}
    )
    assert proc.returncode == 0, proc.stderr
    findings = json.loads(proc.stdout)
    assert [(f["severity"], f["code"]) for f in findings] == [
        ("warning", "base-padding-overwritten"),
        ("info", "no-run-token-space"),
    ]
    errors_only = run_cli(["audit", "--json", "--severity", "error"], home=home)
    assert json.loads(errors_only.stdout) == []

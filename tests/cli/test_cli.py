"""The `evalboard` command line: help, inspect, scan, evalset add/list, runs.

`--help` and most happy paths run in-process through typer's CliRunner (fast); the commands whose
exit codes and output streams matter to scripts run as real processes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from evalboard.cli import app
from evalboard.fixtures import Workspace
from tests._infra.workspace import REPO_ROOT, cli_env, run_cli

B_RUN, WIDE_RUN, A_RUN = "stage3_token_lm_iter5", "stage3_token_lm_wide_image", "stage1_align_trial"
EVALSET = "synthetic-a2t-i2t"


def _is_group(cmd) -> bool:
    return hasattr(cmd, "commands")


def _commands(group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """Every command and sub-group of the app (typer vendors its own click, so duck-typed)."""
    out = [(prefix, group)] if prefix else []
    for name, cmd in sorted(group.commands.items()):
        if _is_group(cmd):
            out += _commands(cmd, (*prefix, name))
        else:
            out.append(((*prefix, name), cmd))
    return out


ROOT_COMMAND = typer.main.get_command(app)
COMMANDS = _commands(ROOT_COMMAND)


def test_the_commands_issue_2_promises_exist() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"scan", "inspect", "audit", "evalset add", "evalset list", "runs", "demo"} <= names


@pytest.mark.parametrize("path, command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_help_mentions_every_option(path: tuple[str, ...], command) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    for param in command.params:
        if param.param_type_name == "option":
            assert any(opt in result.output for opt in param.opts), (param.opts, result.output)
        else:
            assert param.name in result.output, (param.name, result.output)
    if not _is_group(command) and command.help:
        assert command.help.split()[0] in result.output


def test_the_module_and_the_console_script_both_run(tmp_path: Path) -> None:
    module = run_cli(["--help"], home=tmp_path / "home")
    assert module.returncode == 0 and "inspect" in module.stdout and "scan" in module.stdout
    script = REPO_ROOT / ".venv" / "bin" / "evalboard"
    if not script.exists():
        pytest.skip("no .venv/bin/evalboard (package not installed in .venv)")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=cli_env(tmp_path / "home"))
    assert proc.returncode == 0
    assert "Usage: evalboard [OPTIONS] COMMAND" in proc.stdout and "inspect" in proc.stdout


def _inspect_json(path: Path, home: Path) -> dict:
    result = CliRunner().invoke(app, ["inspect", str(path), "--json"], env={"EVALBOARD_HOME": str(home)})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_inspect_json_of_a_track_b_checkpoint(session_ws: Workspace, home: Path) -> None:
    ck = session_ws.checkpoints[B_RUN][1]
    summary = _inspect_json(ck, home)
    assert {
        k: summary[k]
        for k in (
            "kind",
            "track",
            "path",
            "step",
            "base_model",
            "row_start",
            "row_end",
            "rows",
            "hidden_size",
            "dtype",
            "tied",
            "embed_shape",
            "lm_head_shape",
        )
    } == {
        "kind": "checkpoint",
        "track": "B",
        "path": str(ck),
        "step": 200,
        "base_model": session_ws.base_model,
        "row_start": 256,
        "row_end": 384,
        "rows": 128,
        "hidden_size": 64,
        "dtype": "float32",
        "tied": False,
        "embed_shape": [128, 64],
        "lm_head_shape": [128, 64],
    }
    assert summary["token_space_hash"] == session_ws.token_space.abi_hash
    assert summary["modalities"] == {"audio": [256, 320], "image": [320, 384]}
    assert {f["name"] for f in summary["files"]} == {"trainable_rows.pt", "trainable_rows.json", "token_space.json"}
    assert all(len(f["sha256"]) == 64 for f in summary["files"])
    assert not home.exists()  # inspect registers nothing, not even an empty database


def test_inspect_json_of_a_token_space(session_ws: Workspace, home: Path) -> None:
    path = session_ws.runs[WIDE_RUN] / "token_space.json"
    summary = _inspect_json(path, home)
    assert summary["kind"] == "token_space"
    assert summary["abi_hash"] == session_ws.other_token_space.abi_hash
    assert len(summary["file_sha256"]) == 64 and summary["file_sha256"] != summary["abi_hash"]
    assert (summary["text_vocab_size"], summary["vocab_size_total"]) == (256, 416)
    assert summary["modalities"] == {"audio": [256, 320], "image": [320, 416]}
    assert summary["codec_versions"] == {"audio": "encodec_24khz@1.0", "image": "vqgan_f16@2.1"}
    assert (summary["pad_token_id"], summary["tokenizer"]) == (0, "2025.04")


def test_inspect_json_of_an_eval_set(session_ws: Workspace, home: Path) -> None:
    summary = _inspect_json(Path(session_ws.evalsets[EVALSET]), home)
    assert (summary["kind"], summary["name"], summary["n_examples"]) == ("evalset", EVALSET, 16)
    assert set(summary["tasks"]) == {"a2t", "i2t"} and summary["tasks"]["i2t"]["examples"] == 8
    assert summary["token_space_hash"] == session_ws.token_space.abi_hash
    assert len(summary["content_hash"]) == 64


def test_inspect_json_of_a_connector_checkpoint(session_ws: Workspace, home: Path) -> None:
    path = session_ws.checkpoints[A_RUN][2]
    summary = _inspect_json(path, home)
    assert {k: summary[k] for k in ("kind", "track", "step", "base_model", "vision_tower", "has_optimizer")} == {
        "kind": "checkpoint",
        "track": "A",
        "step": 3675,
        "base_model": session_ws.base_model,
        "vision_tower": "demo/vit-tiny",
        "has_optimizer": True,
    }
    assert set(summary["modules"]) == {"resampler", "projector"}
    assert summary["modules"]["projector"]["projector.0.weight"] == [64, 32]


def test_inspect_json_of_an_eval_result(session_ws: Workspace, home: Path) -> None:
    summary = _inspect_json(session_ws.runs[B_RUN] / "eval_step300.json", home)
    assert summary["kind"] == "eval_result" and summary["step"] == 300
    assert summary["loss"] == {"all": 2.7462, "a2t": 2.3606, "i2t": 3.3357}


def test_inspect_without_json_prints_one_field_per_line(session_ws: Workspace, home: Path) -> None:
    result = CliRunner().invoke(
        app, ["inspect", str(session_ws.checkpoints[B_RUN][0])], env={"EVALBOARD_HOME": str(home), "COLUMNS": "300"}
    )
    assert result.exit_code == 0
    fields = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert {k.strip() for k in fields} >= {"track", "step", "base_model", "row_start", "row_end", "token_space_hash"}
    assert {k.strip(): v for k, v in fields.items()}["step"] == "100"


def test_scan_json_summary_and_rescan(session_ws: Workspace, home: Path) -> None:
    first = run_cli(["scan", session_ws.root, "--json"], home=home)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    summary = json.loads(first.stdout)
    assert {"found", "new", "unchanged", "invalid"} <= set(summary)
    assert (summary["found"], summary["new"], summary["unchanged"], summary["invalid"]) == (10, 10, 0, 1)
    assert summary["invalid_items"][0]["path"] == str(session_ws.broken[0])

    second = run_cli(["scan", session_ws.root, "--json"], home=home)
    again = json.loads(second.stdout)
    assert (again["found"], again["new"], again["unchanged"], again["invalid"]) == (10, 0, 10, 1)

    runs = CliRunner().invoke(app, ["runs", "--json"], env={"EVALBOARD_HOME": str(home)})
    by_name = {r["name"]: r for r in json.loads(runs.stdout)}
    assert by_name[B_RUN]["checkpoints"] == 4 and by_name[B_RUN]["invalid"] == 1
    assert by_name[B_RUN]["steps"] == [100, 200, 300, 400]
    assert (by_name[A_RUN]["track"], by_name[A_RUN]["checkpoints"]) == ("A", 3)


def test_scan_without_json_reports_on_stderr(session_ws: Workspace, home: Path) -> None:
    proc = run_cli(["scan", session_ws.runs[B_RUN]], home=home)
    assert proc.returncode == 0 and proc.stdout == ""
    assert "found 4 checkpoints in 1 runs: 4 new, 0 updated, 0 unchanged, 1 invalid" in proc.stderr
    assert f"invalid {session_ws.broken[0] / 'trainable_rows.pt'}: is truncated" in proc.stderr


def test_evalset_add_then_list(session_ws: Workspace, home: Path) -> None:
    runner, env = CliRunner(), {"EVALBOARD_HOME": str(home)}
    path = session_ws.evalsets[EVALSET]
    added = runner.invoke(app, ["evalset", "add", str(path), "--json"], env=env)
    assert added.exit_code == 0, added.output
    record = json.loads(added.stdout)
    assert (record["name"], record["state"], record["n_examples"]) == (EVALSET, "new", 16)

    again = runner.invoke(app, ["evalset", "add", str(path), "--json"], env=env)
    assert json.loads(again.stdout)["state"] == "unchanged"

    listed = runner.invoke(app, ["evalset", "list", "--json"], env=env)
    assert listed.exit_code == 0
    (row,) = json.loads(listed.stdout)
    assert row == {
        "name": EVALSET,
        "n_examples": 16,
        "tasks": ["a2t", "i2t"],
        "content_hash": record["content_hash"],
        "token_space_hash": session_ws.token_space.abi_hash,
        "path": str(path),
    }


def test_evalset_add_under_a_taken_name_is_refused(session_ws: Workspace, home: Path, tmp_path: Path) -> None:
    from evalboard.fixtures import make_evalset

    other = make_evalset(tmp_path / "other", EVALSET, session_ws.token_space, n_per_task=2, seed=7)
    assert run_cli(["evalset", "add", session_ws.evalsets[EVALSET]], home=home).returncode == 0
    proc = run_cli(["evalset", "add", other.path], home=home)
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert f"eval set name '{EVALSET}' is already registered" in line and "Pick another name" in line
    renamed = run_cli(["evalset", "add", other.path, "--name", "synthetic-seed7"], home=home)
    assert renamed.returncode == 0, renamed.stderr
    assert "new: eval set 'synthetic-seed7'" in renamed.stderr


def test_user_strings_with_brackets_are_printed_literally(tmp_path):
    """Rich markup in a path or run name must not be interpreted (nor swallowed) on the console."""
    import subprocess
    import sys

    run = tmp_path / "[bold]run[/bold]"
    bad = run / "checkpoint_1"
    bad.mkdir(parents=True)
    (bad / "trainable_rows.pt").write_bytes(b"")
    env = {**__import__("os").environ, "EVALBOARD_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-m", "evalboard.cli", "scan", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "[bold]run[/bold]/checkpoint_1" in proc.stderr

"""No file chooses the code that runs: a connector builder named only by a checkpoint (a `.pt`'s
config, a LLaVA folder's config.json) is never imported unless the user trusts it, and no process
evalboard starts has the workspace on its import path.

Every hostile module here writes a marker file when it is imported or called; the tests assert the
marker never appears (and, as a control, that it does appear when the module is really imported).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.errors import InvalidInput
from registry.processes import child_env, python_module_command
from registry.settings import Settings, Workspace, WorkspaceConfig, write_workspace_config
from tests.evaluator._track_a import BASE_ID, EVALSET, RUN, TOWER_ID, write_llava, write_perceiver

REPO_ROOT = Path(__file__).resolve().parents[2]
HOSTILE_RUN = "shared_run"
HOSTILE_LLAVA_RUN = "shared_llava"
PAYLOAD = f"outputs.{HOSTILE_RUN}.payload:build"
PERCEIVER = "evaluator.connectors:perceiver_resampler"
TIMEOUT = 300


def _marker_module(marker: Path, body: str = "") -> str:
    return (
        "import pathlib\n"
        f"pathlib.Path({str(marker)!r}).open('a').write(__name__ + ' imported\\n')\n"
        "def build(state, meta):\n"
        f"    pathlib.Path({str(marker)!r}).open('a').write(__name__ + ' called\\n')\n"
        f"{body}"
    )


@dataclass
class TrustWs:
    root: Path
    marker: Path
    user_code: Path
    """A folder outside the workspace holding the user's own builder package (on PYTHONPATH)."""

    @property
    def pt(self) -> Path:
        return self.root / "outputs" / HOSTILE_RUN / "checkpoint_900.pt"

    @property
    def llava(self) -> Path:
        return self.root / "outputs" / HOSTILE_LLAVA_RUN / "checkpoint-950"

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("EVALBOARD_DB", "EVALBOARD_HOME", "MLFLOW_TRACKING_URI", "EVALBOARD_MODELS")
            and not k.startswith("EVALBOARD_TRUSTED")
            and k != "EVALBOARD_CONNECTOR_BUILDER"
        }
        env["EVALBOARD_WORKSPACE"] = str(self.root)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(self.user_code)])
        env.update(extra)
        return env

    def cli(self, *args: str, **extra: str) -> subprocess.CompletedProcess:
        """The real CLI, started as users start it (the console script: no cwd on its path), in the workspace."""
        return subprocess.run(
            [str(Path(sys.executable).with_name("evalboard")), *args],
            capture_output=True,
            text=True,
            env=self.env(**extra),
            cwd=self.root,
            timeout=TIMEOUT,
        )

    def settings(self) -> Settings:
        return Settings.from_env(self.env())

    def marker_text(self) -> str:
        return self.marker.read_text() if self.marker.exists() else ""


@pytest.fixture
def ws(track_a_ws, mlflow_template, tmp_path, monkeypatch) -> TrustWs:
    """The Track A workspace with a shared run whose checkpoints name hostile builders: a `payload.py`
    dropped next to them (importable as `outputs.shared_run.payload` from the workspace folder), and a
    `typer.py` planted in the workspace folder itself (imported by any CLI that has the folder on its
    path)."""
    root = Path(os.path.realpath(tmp_path / "ws"))
    shutil.copytree(track_a_ws, root)
    marker = tmp_path / "marker.txt"
    write_workspace_config(root, models={BASE_ID: "models/tiny-qwen3", TOWER_ID: "models/siglip-tiny"})
    shutil.copy(mlflow_template, root / ".evalboard" / "mlflow.db")
    run = root / "outputs" / HOSTILE_RUN
    run.mkdir(parents=True)
    (run / "payload.py").write_text(_marker_module(marker))
    (root / "typer.py").write_text(_marker_module(marker) + "raise ImportError('planted typer')\n")
    write_perceiver(run / "checkpoint_900.pt", 900, config={"connector_builder": PAYLOAD})
    llava = write_llava(root / "outputs" / HOSTILE_LLAVA_RUN / "checkpoint-950")
    cfg = json.loads((llava / "config.json").read_text())
    (llava / "config.json").write_text(json.dumps({**cfg, "connector_builder": PAYLOAD}))
    user_code = tmp_path / "user_code"
    (user_code / "team_builders").mkdir(parents=True)
    (user_code / "team_builders" / "__init__.py").write_text("")
    (user_code / "team_builders" / "perceiver.py").write_text(
        _marker_module(
            marker,
            "    from evaluator.connectors import perceiver_resampler\n    return perceiver_resampler(state, meta)\n",
        )
    )
    (user_code / "team_builders" / "exits_on_import.py").write_text("import sys\nsys.exit(7)\n")
    (user_code / "team_builders" / "interrupts.py").write_text(
        "def build(state, meta):\n    raise KeyboardInterrupt('from the builder')\n"
    )
    t = TrustWs(root, marker, user_code)
    for k in ("EVALBOARD_DB", "EVALBOARD_HOME", "MLFLOW_TRACKING_URI", "EVALBOARD_MODELS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("EVALBOARD_WORKSPACE", str(root))
    monkeypatch.setenv("PYTHONPATH", t.env()["PYTHONPATH"])
    from registry.scanner import scan
    from registry.store import Registry

    with Registry(settings=t.settings()) as reg:
        summary = scan(reg, [root / "outputs", root / "evalsets"])
        assert summary.invalid == 0, summary.invalid_items
    return t


def _write_checkpoint(ws: TrustWs, run: str, step: int, builder: str) -> Path:
    from registry.scanner import scan
    from registry.store import Registry

    path = write_perceiver(
        ws.root / "outputs" / run / f"checkpoint_{step}.pt", step, config={"connector_builder": builder}
    )
    with Registry(settings=ws.settings()) as reg:
        scan(reg, [path])
    return path


def _counts(ws: TrustWs) -> tuple[int, int]:
    from mlflow.tracking import MlflowClient

    from registry.store import Registry

    settings = ws.settings()
    client = MlflowClient(settings.mlflow_uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    with Registry(settings=settings) as reg:
        return len(reg.list_eval_results()), len(client.search_runs(exps)) if exps else 0


def _enqueue(ws: TrustWs, paths: list[Path], **options) -> list[int]:
    from registry.policy import enqueue_checkpoints
    from registry.store import Registry

    settings = ws.settings()
    with Registry(settings=settings) as reg:
        es = reg.get_evalset(name=EVALSET)
        ids = []
        for priority, path in zip(range(len(paths), 0, -1), paths):  # the first path runs first
            (d,) = enqueue_checkpoints(
                reg,
                [reg.get_checkpoint(path=str(path))],
                es,
                models=settings.models,
                max_attempts=1,
                options=options,
                priority=priority,
            )
            assert d.job is not None, d
            ids.append(d.job.id)
        return ids


def _jobs(ws: TrustWs, ids: list[int]):
    from registry.store import Registry

    with Registry(settings=ws.settings()) as reg:
        return [reg.get_job(id=i) for i in ids]


# -- the decision -------------------------------------------------------------------------------


def test_the_builder_is_the_users_choice_first_and_a_files_only_when_trusted(tmp_path):
    from evaluator.connectors import REFERENCE_BUILDERS, choose_builder

    where = tmp_path / "checkpoint_1.pt"

    def choose(settings=Settings(home=tmp_path), **kw):
        args = {"chosen": None, "run_name": "r", "hinted": None, "default": None, **kw}
        return choose_builder(settings=settings, where=where, **args)

    configured = Settings(home=tmp_path, connector_builders={"r": "team.a:build", "*": "team.b:build"})
    trusting = Settings(home=tmp_path, trusted_builders=("team.c:build", "team.d:*"))
    assert choose(chosen="mine.x:y", settings=configured, hinted="team.c:build").spec == "mine.x:y"
    assert choose(settings=configured, hinted=REFERENCE_BUILDERS[0]).spec == "team.a:build"
    assert choose(settings=configured, run_name="other", hinted="team.c:build").spec == "team.b:build"
    assert choose(hinted=REFERENCE_BUILDERS[1]).source == "checkpoint (reference builder)"
    assert choose(settings=trusting, hinted="team.c:build").source == "checkpoint (trusted)"
    assert choose(settings=trusting, hinted="team.d:anything").spec == "team.d:anything"
    assert choose(default=REFERENCE_BUILDERS[1]).source == "layout default"
    for hostile in ("os:system", "team.c:other", "team.dx:build", "outputs.run.payload:build"):
        with pytest.raises(InvalidInput) as e:
            choose(settings=trusting, hinted=hostile, default=REFERENCE_BUILDERS[1])
        message = str(e.value)
        assert str(where) in message and repr(hostile) in message and "[connector_builders] trusted" in message
        assert "\n" not in message
    with pytest.raises(InvalidInput, match="names no connector builder"):
        choose()


def test_trusted_builders_come_from_the_workspace_config_or_the_environment(tmp_path):
    ws = Workspace(tmp_path)
    cfg = WorkspaceConfig.parse(
        '[connector_builders]\n"*" = "team.a:build"\ntrusted = ["team.b:build", "team.c:*"]\n', ws
    )
    assert cfg.connector_builders == {"*": "team.a:build"}
    assert cfg.trusted_builders == ("team.b:build", "team.c:*")
    for bad in ('trusted = "team.b:build"', 'trusted = ["os.system"]', 'trusted = ["a b:c"]', "trusted = [1]"):
        with pytest.raises(InvalidInput, match="connector_builders|connector builder"):
            WorkspaceConfig.parse(f"[connector_builders]\n{bad}\n", ws)
    (tmp_path / ".evalboard").mkdir()
    (tmp_path / ".evalboard" / "config.toml").write_text('[connector_builders]\ntrusted = ["team.b:build"]\n')
    env = {"EVALBOARD_WORKSPACE": str(tmp_path)}
    assert Settings.from_env(env).trusts_builder("team.b:build")
    assert not Settings.from_env(env).trusts_builder("team.b:other")
    over = Settings.from_env({**env, "EVALBOARD_TRUSTED_BUILDERS": "team.x:*, team.y:go"})
    assert over.trusted_builders == ("team.x:*", "team.y:go") and over.trusts_builder("team.x:anything")
    with pytest.raises(InvalidInput, match="EVALBOARD_TRUSTED_BUILDERS"):
        Settings.from_env({**env, "EVALBOARD_TRUSTED_BUILDERS": "os.system"})


def test_a_checkpoint_naming_a_malformed_builder_is_invalid(tmp_path):
    from evalboard.fixtures import write_connector_checkpoint
    from registry.connector import ConnectorCheckpoint

    for name in ("os.system", "os:system; rm -rf /", "../evil:build", ":build"):
        path = write_connector_checkpoint(
            tmp_path / f"r{len(name)}" / "checkpoint_1.pt", step=1, config={"connector_builder": name}
        )
        with pytest.raises(InvalidInput, match="package.module:function"):
            ConnectorCheckpoint.load(path)


# -- nothing imports a file's builder ----------------------------------------------------------


def test_scan_inspect_stats_audit_enqueue_and_check_import_nothing_even_with_the_workspace_on_the_path(ws, monkeypatch):
    """In this process, with the workspace folder on sys.path (so the payload *would* import)."""
    from evalboard.inspecting import inspect_path
    from evaluator.service import EvalOptions, Evaluator
    from registry.audit import audit
    from registry.scanner import scan
    from registry.store import Registry

    monkeypatch.syspath_prepend(str(ws.root))
    settings = ws.settings()
    with Registry(settings=settings) as reg:
        scan(reg, [ws.root / "outputs"])
        es = reg.get_evalset(name=EVALSET)
        ev = Evaluator(reg, settings)
        for path in (ws.pt, ws.llava):
            inspect_path(path)
            ck = reg.get_checkpoint(path=str(path))
            ev.statistics(ck, with_base=False)
            with pytest.raises(InvalidInput, match="not trusted"):
                ev.check(ck, es, EvalOptions(device="cpu"))
        audit(reg, models=settings.models)
    _enqueue(ws, [ws.pt, ws.llava])
    assert ws.marker_text() == ""
    __import__(PAYLOAD.partition(":")[0])  # the control: the payload does import from here
    assert "payload imported" in ws.marker_text()


@pytest.mark.slow
def test_eval_refuses_a_builder_named_only_by_the_file(ws):
    before = _counts(ws)
    for path in (ws.pt, ws.llava):
        proc = ws.cli("eval", str(path), "--evalset", EVALSET)
        assert proc.returncode == 2, proc.stderr[-3000:]
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert str(path) in lines[0] and PAYLOAD in lines[0] and "trusted" in lines[0], lines[0]
    assert _counts(ws) == before
    assert ws.marker_text() == ""


def _wait_gone(pid: int, deadline_s: float = TIMEOUT) -> None:
    """Wait for a child started elsewhere in this process (reaped by us, or already by subprocess)."""
    try:
        os.waitpid(pid, 0)
        return
    except ChildProcessError:
        pass
    end = time.monotonic() + deadline_s
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < end, f"process {pid} still running"
        os.sched_yield()


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["cli", "queue-page"])
def test_workers_refuse_a_files_builder_and_never_import_from_the_workspace(ws, launcher):
    """`evalboard worker --once` in the workspace, and the worker the Queue page starts there (its
    cwd is the workspace, which holds a planted `typer.py` and the payload)."""
    ids = _enqueue(ws, [ws.pt, ws.llava])
    if launcher == "cli":
        proc = ws.cli("worker", "--once")
        assert proc.returncode == 0, proc.stderr[-3000:]
        log = proc.stderr
    else:
        from dashboard.data import start_local_worker

        started = start_local_worker(ws.settings())
        _wait_gone(started["pid"])
        log = Path(started["log"]).read_text()
    jobs = _jobs(ws, ids)
    assert [j.status for j in jobs] == ["failed", "failed"], log[-3000:]
    for job in jobs:
        assert job.last_error is not None and PAYLOAD in job.last_error and "trusted" in job.last_error
    assert ws.marker_text() == "", log[-3000:]


def test_worker_gpus_children_do_not_have_the_cwd_on_their_import_path(ws):
    """`worker --gpus`' children (one per device) start in the parent's folder: the planted
    `typer.py` there must not be imported. The children then fail or serve an empty queue."""
    code = "from evaluator.worker import supervise_gpus; raise SystemExit(supervise_gpus(['--once'], [0]))"
    proc = subprocess.run(
        [sys.executable, "-P", "-c", code] if sys.version_info >= (3, 11) else [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=ws.env(),
        cwd=ws.root,
        timeout=TIMEOUT,
    )
    # The child's CLI ran: it refused the missing GPU (a CPU machine) or served the empty queue.
    assert "cuda:0" in proc.stderr or proc.returncode == 0, proc.stderr[-3000:]
    assert ws.marker_text() == "", proc.stderr[-3000:]
    # The control: a child started the plain way does import the planted module.
    plain = subprocess.run(
        [sys.executable, "-m", "evalboard.cli", "--help"], capture_output=True, text=True, env=ws.env(), cwd=ws.root
    )
    assert plain.returncode != 0 and "typer imported" in ws.marker_text()


def test_child_commands_and_environments_are_safe_path(tmp_path):
    """`python -m site` prints sys.path: the folder a child starts in is not on it (it is, started
    plainly: the control)."""
    env = child_env({**os.environ, "PYTHONPATH": f"{REPO_ROOT}::relative"})
    safe = subprocess.run(python_module_command("site"), capture_output=True, text=True, cwd=tmp_path, env=env)
    plain = subprocess.run([sys.executable, "-m", "site"], capture_output=True, text=True, cwd=tmp_path)
    assert safe.returncode == plain.returncode == 0, safe.stderr + plain.stderr
    assert repr(str(tmp_path)) in plain.stdout
    assert repr(str(tmp_path)) not in safe.stdout and "''," not in safe.stdout, safe.stdout
    assert env["PYTHONSAFEPATH"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO_ROOT), os.path.abspath("relative")]


# -- what the user chose runs ------------------------------------------------------------------


@pytest.mark.slow
def test_a_trusted_builder_runs_and_the_users_choice_wins_over_the_files(ws):
    trusted = _write_checkpoint(ws, "team_run", 910, "team_builders.perceiver:build")
    refused = ws.cli("eval", str(trusted), "--evalset", EVALSET, "--json")
    assert refused.returncode == 2 and "not trusted" in refused.stderr, refused.stderr[-3000:]
    assert ws.marker_text() == ""

    ok = ws.cli(
        "eval", str(trusted), "--evalset", EVALSET, "--json", EVALBOARD_TRUSTED_BUILDERS="team_builders.perceiver:*"
    )
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "team_builders.perceiver imported" in ws.marker_text() and "called" in ws.marker_text()
    (result,) = json.loads(ok.stdout)
    assert result["losses"]["i2t"] > 0

    ws.marker.unlink()
    mine = ws.cli("eval", str(ws.pt), "--evalset", EVALSET, "--json", "--connector-builder", PERCEIVER)
    assert mine.returncode == 0, mine.stderr[-3000:]
    assert ws.marker_text() == ""


@pytest.mark.slow
def test_a_builder_that_exits_or_interrupts_fails_its_job_and_the_worker_takes_the_next(ws):
    exits = _write_checkpoint(ws, "team_exit", 920, "team_builders.exits_on_import:build")
    interrupts = _write_checkpoint(ws, "team_interrupt", 930, "team_builders.interrupts:build")
    good = ws.root / "outputs" / RUN / "checkpoint_100.pt"
    ids = _enqueue(ws, [exits, interrupts, good])
    proc = ws.cli(
        "worker", "--once", EVALBOARD_TRUSTED_BUILDERS="team_builders.exits_on_import:build,team_builders.interrupts:*"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _jobs(ws, ids)
    assert [j.status for j in jobs] == ["failed", "failed", "done"], proc.stderr[-3000:]
    assert "SystemExit" in (jobs[0].last_error or "")
    assert "KeyboardInterrupt" in (jobs[1].last_error or "")
